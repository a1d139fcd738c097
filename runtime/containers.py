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
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

from client.engine import NAMES_OPTION, Attachment, DaemonUnavailable, Engine, PluginError
from runtime import hosts, names, process, sandbox
from runtime.state import (
    STATUS_CREATED,
    STATUS_EXITED,
    STATUS_RUNNING,
    ContainerConfig,
    ContainerState,
    NetworkRequest,
    StateStore,
    new_id,
)

DEFAULT_RUN_DIR = "/run/cnmkit"
MULTI_HOST_DRIVER = "cnmkit-vxlan"       # networks whose endpoints on other hosts are peers too
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
        for req in requests:
            net = self._inspect_network(req.network)
            if net["Id"] in seen:
                raise ContainerError(f"network {req.network} given twice")
            seen.add(net["Id"])
        _check_command(command[0], environment["PATH"], rootfs)
        cid = new_id()
        name = name or f"c-{cid[:12]}"
        hostname = hostname or name
        environment.setdefault("HOSTNAME", hostname)
        config = ContainerConfig(id=cid, name=name, command=list(command), hostname=hostname,
                                 networks=requests, env=environment, rootfs=rootfs, detach=detach,
                                 created=time.time(), plugin_dir=self.plugin_dir, run_dir=self.run_dir)
        with self.store.locked():
            if self.store.name_taken(name):
                raise ContainerError(f"container name {name!r} is already in use")
            self.store.create(config)
        return config

    def run(self, command: list[str], *, name: str | None = None, networks: Sequence[str] = (),
            hostname: str | None = None, rootfs: str | None = None, env: Sequence[str] = (),
            detach: bool = False) -> tuple[str, subprocess.Popen]:
        """Create and start; returns (id, shim process). Nothing remains if this raises."""
        config = self.create(command, name=name, networks=networks, hostname=hostname, rootfs=rootfs,
                             env=env, detach=detach)
        with self.store.locked():
            try:
                shim = self._start_locked(config.id, detach=detach)
            except BaseException:
                self.store.delete(config.id)
                raise
        return config.id, shim

    def wait_foreground(self, shim: subprocess.Popen, pending: Sequence[int] = ()) -> int:
        """Wait for a foreground container, passing our signals to it; its exit code.

        ``pending`` holds signals that arrived during set-up (``process.defer_signals``): they are
        delivered once the forwarders are in place, so none is lost and none kills us first.
        """
        process.forward_signals(shim.pid)
        try:
            for sig in pending:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(shim.pid, sig)
            return shim.wait()
        finally:
            process.restore_signals()

    def _start_locked(self, cid: str, *, detach: bool) -> subprocess.Popen:
        """Sandbox, attachments, /etc files, shim; unwound completely if any step fails."""
        config = self.store.load_config(cid)
        state = ContainerState(status=STATUS_CREATED, netns=self._netns_path(cid))
        self.store.save_state(cid, state)
        try:
            sandbox.create_netns(state.netns)
            for index, req in enumerate(config.networks):
                self._attach_one(cid, state, req, f"eth{index}")
            self._write_etc(cid, config, state)
            self._refresh_hosts()
            shim, line = process.spawn_shim(self.state_dir, cid, detach=detach,
                                            log_path=self.store.log_path(cid))
            if not line.startswith("ok "):
                shim.wait()
                raise ContainerError(line[4:] if line.startswith("err ") else line)
        except BaseException:
            self._release_locked(cid, state)
            raise
        pid, init_pid, init_start = (int(x) for x in line.split()[1:4])
        state.status, state.pid, state.init_pid, state.init_start = STATUS_RUNNING, pid, init_pid, init_start
        state.shim_pid, state.started_at, state.exit_code = shim.pid, time.time(), None
        self.store.save_state(cid, state)               # hosts were refreshed before the shim started
        return shim

    def _attach_one(self, cid: str, state: ContainerState, req: NetworkRequest,
                    ifname: str) -> dict[str, Any]:
        try:
            config = self.store.load_config(cid)
            att = self.engine.attach(req.network, state.netns, ip=req.ip, ip6=req.ip6, direct=True,
                                     names=[n for n in (config.name, config.hostname, *req.aliases) if n])
        except PluginError as exc:
            raise ContainerError(f"network {req.network}: {exc}") from None
        record = att.to_dict() | {"ifname": ifname, "aliases": list(req.aliases), "default_route": False}
        state.attachments.append(record)
        self.store.save_state(cid, state)                  # recorded before configuring: rollback sees it
        has_default = any(a.get("default_route") for a in state.attachments)
        try:
            record["default_route"] = sandbox.configure(state.netns, record, ifname, not has_default)
        except Exception as exc:
            raise ContainerError(f"configuring {ifname} for network {req.network}: {exc}") from exc
        self.store.save_state(cid, state)
        return record

    def _inspect_network(self, ref: str) -> dict[str, Any]:
        try:
            return self.engine.inspect_network(ref)
        except PluginError as exc:
            raise ContainerError(f"network {ref}: {exc}" if ref not in str(exc) else str(exc)) from None

    # -- release --------------------------------------------------------------------------------

    def _release_locked(self, cid: str, state: ContainerState) -> None:
        """Detach every endpoint and remove the sandbox; keeps what could not be released recorded."""
        kept: list[dict[str, Any]] = []
        problems: list[str] = []
        for record in state.attachments:
            try:
                self.engine.detach(Attachment.from_dict(record))
            except DaemonUnavailable as exc:
                kept.append(record)
                problems.append(str(exc))
            except PluginError as exc:
                problems.append(f"network {record.get('network_name')}: {exc}")
        state.attachments = kept
        if state.netns:
            sandbox.remove_netns(state.netns)
            state.netns = ""
        if os.path.isdir(self.store.dir(cid)):
            self.store.save_state(cid, state)
        self._refresh_hosts()
        if kept:
            raise ContainerError(f"endpoints of {cid[:12]} not released: {problems[0]}")

    def on_shim_exit(self, cid: str, code: int) -> None:
        """Called by the shim when the container's init has ended."""
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
            process.wait_gone(state.shim_pid, None, 5.0)   # its shim is writing the exit code
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
        with self.store.locked():
            before = self.store.load_state(cid)
            try:
                self._start_locked(cid, detach=True)
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
        if state.status == STATUS_RUNNING:
            if not force:
                raise ContainerError(f"container {self.store.load_config(cid).name} is running: "
                                     "stop it first or use rm -f")
            self.stop(cid, timeout=0)
        else:
            self._end_strays(cid)
        with self.store.locked():
            state = self.store.load_state(cid)
            self._release_locked(cid, state)
            self.store.delete(cid)
            self._refresh_hosts()
        self._end_shim(cid, state.shim_pid)
        return cid

    @staticmethod
    def _end_strays(cid: str) -> None:
        """A start cut short (its CLI killed between the shim's "ok" and the record) leaves a shim
        and init nobody wrote down: end them before their network goes. Killing init, PID 1 of the
        container's PID namespace, ends every process in it."""
        for pid in process.container_pids(cid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            process.wait_gone(pid, None, 5.0)

    @staticmethod
    def _end_shim(cid: str, pid: int) -> None:
        """rm leaves no process behind: a shim still finishing its own exit path (slow under load)
        is given a moment, then killed; its container's record and network are already gone."""
        if pid and process.is_shim_of(pid, cid) and not process.wait_gone(pid, None, 5.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            process.wait_gone(pid, None, 5.0)

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
        with self.store.locked():                        # peers on other hosts may have come or gone
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

    def _write_etc(self, cid: str, config: ContainerConfig, state: ContainerState) -> None:
        hosts.write_in_place(self.store.path(cid, "hostname"), config.hostname + "\n")
        resolv = hosts.render_resolv(hosts.read_host_resolv())
        hosts.write_in_place(self.store.path(cid, "resolv.conf"), resolv)

    def _refresh_hosts(self) -> None:
        """Rewrite the hosts file of every container from the current records (caller holds the lock).

        Containers in the middle of starting are included (their record has attachments), so a
        new container knows its peers before its command starts and its peers learn of it.
        """
        members: dict[str, hosts.Member] = {}
        for cid in self.store.ids():
            with contextlib.suppress(OSError, ValueError):
                config, state = self.store.load_config(cid), self.store.load_state(cid)
                if state.attachments or state.status == STATUS_RUNNING:
                    members[cid] = hosts.Member(config.name, config.hostname, tuple(state.attachments))
        local = set(members)
        members.update(self._remote_members(members))
        for cid, text in hosts.render_all(members).items():
            if cid not in local:
                continue
            path = self.store.path(cid, "hosts")
            with contextlib.suppress(OSError):
                with open(path) as fh:
                    if fh.read() == text:
                        continue                          # unchanged: spare the write
            with contextlib.suppress(OSError):
                hosts.write_in_place(path, text)


    def _remote_members(self, members: dict[str, hosts.Member]) -> dict[str, hosts.Member]:
        """Containers of other hosts on this host's multi-host networks, from the shared store.

        Each endpoint record carries the names its runtime gave it (engine NAMES_OPTION); those of
        endpoints not attached here become peers in the hosts files. Without the daemon (or with a
        bad record) there are none: a hosts file is never worth failing a container operation.
        """
        ours = {att.get("endpoint_id") for m in members.values() for att in m.attachments}
        networks = {att["network_id"] for m in members.values() for att in m.attachments if att.get("network_id")}
        remote: dict[str, hosts.Member] = {}
        for network_id in sorted(networks):
            try:
                net = self.engine.inspect_network(network_id)
            except (PluginError, DaemonUnavailable, OSError):
                continue
            if net.get("Driver") != MULTI_HOST_DRIVER:
                continue
            for ep in net.get("EndpointList") or []:
                given = str((ep.get("Options") or {}).get(NAMES_OPTION, "")).split(",")
                if ep.get("EndpointID") in ours or not given[0]:
                    continue
                att = {"network_id": network_id, "address": ep.get("Address", ""),
                       "address_v6": ep.get("AddressIPv6", ""), "aliases": given[2:]}
                remote[f"remote:{ep.get('EndpointID')}"] = hosts.Member(
                    given[0], given[1] if len(given) > 1 else "", (att,))
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

