"""The embedded runtime's verbs: run, exec, ps, logs, stop, start, restart, rm, inspect, stats,
network connect/disconnect.

The runtime is a plugin client exactly like dockerd: every attachment goes through
``client.engine.Engine`` (RequestAddress, CreateEndpoint, Join, EndpointOperInfo; Leave,
DeleteEndpoint, ReleaseAddress), so every runtime test also proves the protocol.

Consistency rules:
- every change to the set of containers or their networks runs under ``StateStore.locked()``;
- a multi-step operation records what it has made as it goes and unwinds it on failure, so bad
  input leaves nothing behind (no record, namespace, endpoint or address);
- what ``ps`` shows is checked against the kernel (the init's pid and start time); a container
  whose supervisor vanished is marked exited and its network released by the next CLI call.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from client.engine import Attachment, DaemonUnavailable, Engine, PluginError
from runtime import hosts, hostsfiles, names, process, sandbox
from runtime.hostsfiles import MULTI_HOST_DRIVER
from runtime.state import (
    STATUS_EXITED,
    STATUS_RUNNING,
    ContainerConfig,
    ContainerState,
    NetworkRequest,
    StateStore,
    new_id,
)

if TYPE_CHECKING:
    from runtime.batch import Link, NodeStart, Started
    from runtime.supervisor import Supervisor

DEFAULT_RUN_DIR = "/run/cnmkit"
EXIT_UNKNOWN = -1


class ContainerError(Exception):
    """A user-facing failure: the message is the one line the CLI prints."""


class ContainerService:
    def __init__(self, state_dir: str, plugin_dir: str, run_dir: str | None = None) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.plugin_dir = plugin_dir
        self.run_dir = os.path.abspath(run_dir or os.environ.get("CNMKIT_RUN_DIR") or DEFAULT_RUN_DIR)
        self.store = StateStore(self.state_dir)
        self._engine: Engine | None = None
        self._multi_host_cache: dict[str, bool] = {}   # network id -> on a multi-host driver

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(plugin_dir=self.plugin_dir)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    # -- lookups --------------------------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        cid = self.store.find(ref)
        if cid is None:
            raise ContainerError(f"no such container: {ref}")
        return cid

    def _netns_path(self, cid: str) -> str:
        return os.path.join(self.run_dir, "netns", cid)

    # -- run ------------------------------------------------------------------------------------

    def create(self, command: list[str], *, name: str | None = None, networks: Sequence[str] = (),
               hostname: str | None = None, rootfs: str | None = None, env: Sequence[str] = (),
               detach: bool = False) -> ContainerConfig:
        """Validate everything that can be validated up front, then write the record (locked)."""
        config = self.prepare(command, name=name, networks=networks, hostname=hostname, rootfs=rootfs,
                              env=env, detach=detach)
        with self.store.locked():
            if self.store.name_taken(config.name):
                raise ContainerError(f"container name {config.name!r} is already in use")
            self.store.create(config)
        return config

    def prepare(self, command: list[str], *, name: str | None = None, networks: Sequence[str] = (),
                hostname: str | None = None, rootfs: str | None = None, env: Sequence[str] = (),
                detach: bool = False, network_ids: dict[str, str] | None = None) -> ContainerConfig:
        """The record ``create`` would write, checked; nothing is written or taken.

        ``network_ids`` caches network name -> id across the nodes of a batch, so a lab of 200
        nodes on one network asks the daemon about it once, not 200 times.
        """
        if not command:
            raise ContainerError("run: no command given (use: cnmkit run [OPTIONS] -- CMD [ARG...])")
        try:
            if name is not None:
                names.check_container_name(name)
            if hostname is not None:
                names.check_hostname(hostname)
            requests = [NetworkRequest.parse(n) for n in networks]
            for req in requests:
                for alias in req.aliases:
                    names.check_alias(alias, "--network alias")
        except ValueError as exc:
            raise ContainerError(str(exc)) from None
        if rootfs is not None:
            if not os.path.isdir(rootfs):
                raise ContainerError(f"rootfs {rootfs}: no such directory")
            rootfs = os.path.realpath(rootfs)
        environment = {"PATH": process.DEFAULT_PATH, "HOME": "/root"}
        for item in env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ContainerError(f"bad -e {item!r}: expected KEY=VALUE")
            environment[key] = value
        seen: set[str] = set()
        known = {} if network_ids is None else network_ids
        for req in requests:
            if req.network not in known:
                known[req.network] = self._inspect_network(req.network)["Id"]
            if known[req.network] in seen:
                raise ContainerError(f"network {req.network} given twice")
            seen.add(known[req.network])
        _check_command(command[0], environment["PATH"], rootfs)
        cid = new_id()
        name = name or f"c-{cid[:12]}"
        hostname = hostname or name
        environment.setdefault("HOSTNAME", hostname)
        return ContainerConfig(id=cid, name=name, command=list(command), hostname=hostname,
                               networks=requests, env=environment, rootfs=rootfs, detach=detach,
                               created=time.time(), plugin_dir=self.plugin_dir, run_dir=self.run_dir)

    def run(self, command: list[str], *, name: str | None = None, networks: Sequence[str] = (),
            hostname: str | None = None, rootfs: str | None = None, env: Sequence[str] = (),
            detach: bool = False) -> tuple[str, Supervisor]:
        """Create and start (a batch of one); returns (id, supervisor). Nothing remains if this raises."""
        from runtime import batch

        config = self.create(command, name=name, networks=networks, hostname=hostname, rootfs=rootfs,
                             env=env, detach=detach)
        with self.store.locked():
            try:
                sup, _ = batch.start_locked(self, [config.id], foreground=not detach)
            except BaseException:
                self.store.delete(config.id)
                raise
        return config.id, sup

    def start_many(self, specs: Sequence[NodeStart], links: Sequence[Link] = (), *,
                   workers: int = 8) -> list[Started]:
        """Start a set of detached containers at once (a lab); see ``runtime.batch``."""
        from runtime import batch

        return batch.start_many(self, specs, links, workers=workers)

    def stop_many(self, refs: Sequence[str], timeout: float = 10.0, *, workers: int = 8) -> list[str]:
        """Stop and remove a set of containers at once, leaving nothing; see ``runtime.batch``."""
        from runtime import batch

        return batch.stop_many(self, refs, timeout, workers=workers)

    def wait_foreground(self, cid: str, sup: Supervisor, pending: Sequence[int] = ()) -> int:
        """Wait for a foreground container, passing our signals to its init; its exit code.

        ``pending`` holds signals that arrived during set-up (``process.defer_signals``): they are
        delivered once the forwarders are in place, so none is lost and none kills us first.
        """
        init_pid = self.store.load_state(cid).init_pid
        process.forward_signals(init_pid)
        try:
            for sig in pending:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(init_pid, sig)
            return sup.wait()
        finally:
            process.restore_signals()

    def on_exit_callback(self) -> Any:
        """What a supervisor runs after reaping an init: the record's end, by a service of its own
        (the caller's engine connection is the caller's, never shared with a forked child), built
        on the first exit (by name: the supervisor may be a fresh interpreter)."""
        from runtime.supervisor import ExitHook

        return ExitHook("runtime.containers", "exit_handler", (self.state_dir, self.plugin_dir, self.run_dir))

    def _attach_one(self, cid: str, state: ContainerState, req: NetworkRequest, ifname: str,
                    engine: Engine | None = None, net: dict[str, Any] | None = None,
                    configure: Any = None) -> dict[str, Any]:
        try:
            config = self.store.load_config(cid)
            att = (engine or self.engine).attach(req.network, state.netns, ip=req.ip, ip6=req.ip6, direct=True,
                                                 net=net, names=[n for n in (config.name, config.hostname,
                                                                             *req.aliases) if n])
        except PluginError as exc:
            raise ContainerError(f"network {req.network}: {exc}") from None
        record = att.to_dict() | {"ifname": ifname, "aliases": list(req.aliases), "default_route": False}
        state.attachments.append(record)
        self.store.save_state(cid, state)                  # recorded before configuring: rollback sees it
        has_default = any(a.get("default_route") for a in state.attachments)
        try:
            record["default_route"] = (configure or sandbox.configure)(state.netns, record, ifname, not has_default)
        except Exception as exc:
            raise ContainerError(f"configuring {ifname} for network {req.network}: {exc}") from exc
        self.store.save_state(cid, state)
        return record

    def _inspect_network(self, ref: str) -> dict[str, Any]:
        try:
            return self.engine.inspect_network(ref, endpoints=False)  # its id, name, driver, pools
        except PluginError as exc:
            raise ContainerError(f"network {ref}: {exc}" if ref not in str(exc) else str(exc)) from None

    # -- release --------------------------------------------------------------------------------

    def _release_locked(self, cid: str, state: ContainerState, *, refresh: bool = True,
                        engine: Engine | None = None, drivers: dict[str, str] | None = None) -> None:
        """Detach every endpoint and remove the sandbox; keeps what could not be released recorded.

        A batch passes ``refresh=False`` and refreshes the hosts files once for all its members.
        """
        kept: list[dict[str, Any]] = []
        problems: list[str] = []
        for record in state.attachments:
            try:
                (engine or self.engine).detach(Attachment.from_dict(record),
                                               (drivers or {}).get(record.get("network_id", "")))
            except DaemonUnavailable as exc:
                kept.append(record)
                problems.append(str(exc))
            except PluginError as exc:
                problems.append(f"network {record.get('network_name')}: {exc}")
        state.attachments = kept
        if state.netns:
            sandbox.remove_netns(state.netns)
            state.netns = ""
            if refresh:                                  # a batch does this once, after all
                from runtime.batch import release_own_mount

                release_own_mount(os.path.dirname(self._netns_path(cid)))
        if os.path.isdir(self.store.dir(cid)):
            self.store.save_state(cid, state)
        if refresh:
            self._hosts_leave([cid])
        if kept:
            raise ContainerError(f"endpoints of {cid[:12]} not released: {problems[0]}")

    def on_shim_exit(self, cid: str, code: int) -> None:
        """Called by the batch's supervisor when the container's init has ended."""
        with self.store.locked():
            if not os.path.isdir(self.store.dir(cid)):
                return
            state = self.store.load_state(cid)
            if state.status != STATUS_RUNNING or state.shim_pid != os.getpid():
                return                               # a failed start: the CLI is rolling it back
            state.status, state.exit_code, state.finished_at = STATUS_EXITED, code, time.time()
            self.store.save_state(cid, state)
            self._release_locked(cid, state)

    def _settle(self, cid: str) -> ContainerState:
        """Make the record tell the truth about a container whose processes are gone."""
        state = self.store.load_state(cid)
        if state.status == STATUS_RUNNING and not process.alive(state.init_pid, state.init_start):
            state = self._await_supervisor_record(cid, state)   # it is writing the exit code
            with self.store.locked():
                state = self.store.load_state(cid)
                if state.status == STATUS_RUNNING and not process.alive(state.init_pid, state.init_start):
                    state.status, state.exit_code = STATUS_EXITED, EXIT_UNKNOWN
                    state.finished_at, state.error = time.time(), "supervisor vanished; exit code unknown"
                    self.store.save_state(cid, state)
                if state.status != STATUS_RUNNING and (state.attachments or state.netns):
                    with contextlib.suppress(ContainerError):
                        self._release_locked(cid, state)
        return state

    def _await_supervisor_record(self, cid: str, state: ContainerState, timeout: float = 5.0) -> ContainerState:
        """Give a live supervisor the moment it needs to record an init's end (it reaps, then
        takes the lock): the exit code is its to write. Returns the record as it then stands."""
        deadline = time.monotonic() + timeout
        while (state.status == STATUS_RUNNING and process.alive(state.shim_pid, state.shim_start or None)
               and time.monotonic() < deadline):
            time.sleep(0.01)
            state = self.store.load_state(cid)
        return state

    # -- stop / start / rm ----------------------------------------------------------------------

    def stop(self, ref: str, timeout: float = 10.0) -> str:
        cid = self.resolve(ref)
        state = self.store.load_state(cid)
        if state.status == STATUS_RUNNING and process.alive(state.init_pid, state.init_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.init_pid, signal.SIGTERM)     # init forwards it to the command
            if not process.wait_gone(state.init_pid, state.init_start, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state.init_pid, signal.SIGKILL)
                process.wait_gone(state.init_pid, state.init_start, 10.0)
        state = self._settle(cid)
        if state.attachments or state.netns:
            with self.store.locked():
                self._release_locked(cid, self.store.load_state(cid))
        return cid

    def start(self, ref: str) -> str:
        cid = self.resolve(ref)
        state = self._settle(cid)
        if state.status == STATUS_RUNNING:
            raise ContainerError(f"container {self.store.load_config(cid).name} is already running")
        for req in self.store.load_config(cid).networks:
            self._inspect_network(req.network)
        from runtime import batch

        with self.store.locked():
            before = self.store.load_state(cid)
            try:
                batch.start_locked(self, [cid], foreground=False)
            except BaseException:
                after = self.store.load_state(cid)
                after.status, after.exit_code = STATUS_EXITED, before.exit_code
                self.store.save_state(cid, after)
                raise
        return cid

    def restart(self, ref: str, timeout: float = 10.0) -> str:
        self.stop(ref, timeout)
        return self.start(ref)

    def rm(self, ref: str, force: bool = False) -> str:
        cid = self.resolve(ref)
        state = self._settle(cid)
        supervisors = {(state.shim_pid, state.shim_start)} if state.shim_pid else set()
        if state.status == STATUS_RUNNING:
            if not force:
                raise ContainerError(f"container {self.store.load_config(cid).name} is running: "
                                     "stop it first or use rm -f")
            self.stop(cid, timeout=0)
        else:
            supervisors |= self._end_strays(cid)
        with self.store.locked():
            state = self.store.load_state(cid)
            self._release_locked(cid, state)
            self.store.delete(cid)
            self._hosts_leave([cid])
        for pid, start in supervisors:
            self._end_supervisor(pid, start)
        return cid

    @staticmethod
    def _end_strays(cid: str) -> set[tuple[int, int]]:
        """A start cut short (its CLI killed between the supervisor's report and the record) leaves
        an init nobody wrote down: end it before its network goes. Killing init, PID 1 of the
        container's PID namespace, ends every process in it. Returns its supervisor (its parent)."""
        supervisors = set()
        for pid in process.container_pids(cid):
            parent = process.parent_pid(pid)
            if parent > 1:
                supervisors.add((parent, process.start_time(parent) or 0))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            process.wait_gone(pid, None, 5.0)
        return supervisors

    @staticmethod
    def _end_supervisor(pid: int, start: int) -> None:
        """rm leaves no process behind: a supervisor with no container left ends by itself once
        it has finished its exit path (slow under load); it is given a moment, then killed. One
        that still has other containers of its batch to watch is left alone."""
        if not pid or not process.alive(pid, start or None) or process.children(pid):
            return
        if not process.wait_gone(pid, start or None, 5.0) and not process.children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            process.wait_gone(pid, start or None, 5.0)

    # -- network connect / disconnect -----------------------------------------------------------

    def connect(self, network: str, ref: str, *, ip: str | None = None, aliases: Sequence[str] = ()
                ) -> dict[str, Any]:
        try:
            for alias in aliases:
                names.check_alias(alias)
        except ValueError as exc:
            raise ContainerError(str(exc)) from None
        cid = self.resolve(ref)
        self._require_running(cid)
        net = self._inspect_network(network)
        with self.store.locked():
            config, state = self.store.load_config(cid), self.store.load_state(cid)
            if any(a["network_id"] == net["Id"] for a in state.attachments):
                raise ContainerError(f"container {config.name} is already connected to {net['Name']}")
            used = {int(a["ifname"][3:]) for a in state.attachments if a["ifname"][3:].isdigit()}
            ifname = f"eth{next(i for i in range(len(used) + 1) if i not in used)}"
            req = NetworkRequest(network=net["Name"] or net["Id"], ip=ip, aliases=list(aliases))
            try:
                record = self._attach_one(cid, state, req, ifname)
            except BaseException:
                self._undo_attach(cid, state, net["Id"])
                raise
            config.networks.append(req)
            self.store.save_config(config)
            self._refresh_hosts()
            return record

    def disconnect(self, network: str, ref: str) -> None:
        cid = self.resolve(ref)
        self._require_running(cid)
        with self.store.locked():
            config, state = self.store.load_config(cid), self.store.load_state(cid)
            record = next((a for a in state.attachments if network in (a["network_name"], a["network_id"])
                           or a["network_id"].startswith(network)), None)
            if record is None:
                raise ContainerError(f"container {config.name} is not connected to network {network}")
            try:
                self.engine.detach(Attachment.from_dict(record))
            except (PluginError, DaemonUnavailable) as exc:
                raise ContainerError(f"disconnect from {network}: {exc}") from None
            state.attachments.remove(record)
            config.networks = [r for r in config.networks
                               if r.network not in (record["network_name"], record["network_id"])]
            if record.get("default_route"):
                for other in state.attachments:
                    with contextlib.suppress(Exception):
                        if sandbox.install_default(state.netns, other):
                            other["default_route"] = True
                            break
            self.store.save_state(cid, state)
            self.store.save_config(config)
            self._refresh_hosts()

    def _undo_attach(self, cid: str, state: ContainerState, network_id: str) -> None:
        for record in [a for a in state.attachments if a["network_id"] == network_id]:
            with contextlib.suppress(PluginError, DaemonUnavailable):
                self.engine.detach(Attachment.from_dict(record))
            state.attachments.remove(record)
        self.store.save_state(cid, state)

    def _require_running(self, cid: str) -> None:
        if self._settle(cid).status != STATUS_RUNNING:
            raise ContainerError(f"container {self.store.load_config(cid).name} is not running")

    # -- read verbs -----------------------------------------------------------------------------

    def ps(self, all_: bool = False) -> list[dict[str, Any]]:
        rows = []
        for cid in self.store.ids():
            state = self._settle(cid)
            if not all_ and state.status != STATUS_RUNNING:
                continue
            config = self.store.load_config(cid)
            rows.append({"Id": cid, "Name": config.name, "Command": config.command, "Status": state.status,
                         "ExitCode": state.exit_code, "Pid": state.pid,
                         "Networks": {a["network_name"]: a["address"] for a in state.attachments}})
        return rows

    def inspect(self, ref: str) -> dict[str, Any]:
        cid = self.resolve(ref)
        state = self._settle(cid)
        config = self.store.load_config(cid)
        return {"Id": cid, "Name": config.name, "Config": asdict(config), "State": asdict(state),
                "LogPath": self.store.log_path(cid),
                "HostsPath": self.store.path(cid, "hosts"),
                "NetworkSettings": {"SandboxKey": state.netns,
                                    "Networks": {a["network_name"]: a for a in state.attachments}}}

    def logs(self, ref: str, follow: bool = False) -> Iterator[bytes]:
        cid = self.resolve(ref)
        with open(self.store.log_path(cid), "rb") as fh:
            while True:
                chunk = fh.read(65536)
                if chunk:
                    yield chunk
                    continue
                if not follow or self._settle(cid).status != STATUS_RUNNING:
                    rest = fh.read()
                    if rest:
                        yield rest
                    return
                time.sleep(0.1)

    def exec(self, ref: str, command: list[str], env: Sequence[str] = ()) -> int:
        if not command:
            raise ContainerError("exec: no command given (use: cnmkit exec NAME -- CMD [ARG...])")
        cid = self.resolve(ref)
        state = self._settle(cid)
        if state.status != STATUS_RUNNING:
            raise ContainerError(f"container {self.store.load_config(cid).name} is not running")
        if self._on_multi_host(state):
            with self.store.locked():                    # peers on other hosts may have come or gone
                self._refresh_hosts()
        environment = dict(self.store.load_config(cid).env)
        for item in env:
            key, sep, value = item.partition("=")
            if not sep:
                raise ContainerError(f"bad -e {item!r}: expected KEY=VALUE")
            environment[key] = value
        return process.exec_in(state.init_pid, command, environment)

    def stats(self, ref: str | None = None) -> list[dict[str, Any]]:
        cids = [self.resolve(ref)] if ref else self.store.ids()
        out = []
        for cid in cids:
            state = self._settle(cid)
            if state.status != STATUS_RUNNING:
                if ref:
                    raise ContainerError(f"container {self.store.load_config(cid).name} is not running")
                continue
            cpu, mem, pids = _namespace_usage(state.init_pid)
            try:
                ifaces = sandbox.interface_stats(state.netns) if state.netns else {}
            except Exception:
                ifaces = {}
            out.append({"Id": cid, "Name": self.store.load_config(cid).name, "CPUSeconds": cpu,
                        "MemoryBytes": mem, "Pids": pids, "Interfaces": ifaces})
        return out

    # -- /etc files -----------------------------------------------------------------------------

    def _refresh_hosts(self) -> None:
        """Rewrite the hosts file of every container from the current records (caller holds the lock).

        Containers in the middle of starting are included (their record has attachments), so a
        new container knows its peers before its command starts and its peers learn of it.
        """
        local = hostsfiles.local_members(self.store)
        hostsfiles.rewrite(self.store, local, self._remote_members(local))
        hosts.Index(self._hosts_index_path(), local).save()      # other hosts' peers are re-read each time

    def _hosts_index_path(self) -> str:
        return os.path.join(self.store.root, ".hosts-index.json")

    def _hosts_index(self) -> hosts.Index | None:
        return hosts.Index.load(self._hosts_index_path(), lambda cid: os.path.isdir(self.store.dir(cid)))

    def _hosts_join(self, records: dict[str, tuple[ContainerConfig, ContainerState]]) -> None:
        """Containers join name resolution: their files in full, their lines appended to their
        peers' (hosts.Index); a full refresh when there is no index yet."""
        index = self._hosts_index()
        if index is None or any(self._on_multi_host(st) for _, st in records.values()):
            self._refresh_hosts()                    # an overlay's peers on other hosts come from the store
            return
        index.add({cid: hostsfiles.member(c, s) for cid, (c, s) in records.items()},
                  lambda cid: self.store.path(cid, "hosts"))

    def _hosts_leave(self, cids: Sequence[str]) -> None:
        """Containers leave name resolution: their lines go from their peers' files."""
        index = self._hosts_index()
        if index is None:
            self._refresh_hosts()
            return
        index.remove(cids, lambda cid: self.store.path(cid, "hosts"))

    def _on_multi_host(self, state: ContainerState) -> bool:
        """Whether the container is on a multi-host network: only then do peers on other hosts
        (read from the store through the daemon) belong in its hosts file."""
        for att in state.attachments:
            network_id = att.get("network_id")
            if not network_id:
                continue
            if network_id not in self._multi_host_cache:
                try:
                    driver = self.engine.inspect_network(network_id, endpoints=False).get("Driver")
                except (PluginError, DaemonUnavailable, OSError):
                    continue
                self._multi_host_cache[network_id] = driver == MULTI_HOST_DRIVER
            if self._multi_host_cache[network_id]:
                return True
        return False

    def _remote_members(self, members: dict[str, hosts.Member]) -> dict[str, hosts.Member]:
        """Containers of other hosts on this host's multi-host networks, from the shared store.

        Each endpoint record carries the names its runtime gave it, or that the daemon learnt from
        dockerd (engine NAMES_OPTION, agent/dockernames.py); those of
        endpoints not attached here become peers in the hosts files. Without the daemon (or with a
        bad record) there are none: a hosts file is never worth failing a container operation.
        """
        ours = hostsfiles.our_endpoints(members)
        networks = {att["network_id"] for m in members.values() for att in m.attachments if att.get("network_id")}
        remote: dict[str, hosts.Member] = {}
        for network_id in sorted(networks):
            try:
                net = self.engine.inspect_network(network_id, overlay=True)
            except (PluginError, DaemonUnavailable, OSError):
                continue
            if net.get("Driver") == MULTI_HOST_DRIVER:
                # The overlay's: dockerd's containers on other hosts are under their own engines' network ids.
                eps = net.get("OverlayEndpointList", net.get("EndpointList")) or []
                remote.update(hostsfiles.remote_members(network_id, eps, ours))
        return remote


def _check_command(command: str, path: str, rootfs: str | None) -> None:
    """Refuse a command that cannot be found, before any network resource is taken."""
    root = rootfs or "/"
    candidates = [command] if "/" in command else [os.path.join(d, command) for d in path.split(":") if d]
    for cand in candidates:
        full = os.path.join(root, cand.lstrip("/"))
        if os.path.lexists(full) and (rootfs or os.access(full, os.X_OK)):
            return
    where = f" in rootfs {rootfs}" if rootfs else ""
    raise ContainerError(f"command not found{where}: {command}")


def _namespace_usage(init_pid: int) -> tuple[float, int, int]:
    """CPU seconds, resident memory and process count of everything in the container's PID ns."""
    try:
        target = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    except OSError:
        return 0.0, 0, 0
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, mem, count = 0.0, 0, 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/pid").st_ino != target:
                continue
            with open(f"/proc/{entry}/stat") as fh:
                data = fh.read()
            fields = data[data.rindex(")") + 2:].split()
            cpu += (int(fields[11]) + int(fields[12])) / ticks
            with open(f"/proc/{entry}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        mem += int(line.split()[1]) * 1024
            count += 1
        except (OSError, ValueError, IndexError):
            continue
    return cpu, mem, count



def exit_handler(state_dir: str, plugin_dir: str, run_dir: str) -> Any:
    """``ContainerService.on_exit_callback``'s callback: one service for the supervisor's life."""
    return ContainerService(state_dir, plugin_dir, run_dir).on_shim_exit
