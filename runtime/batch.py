"""Starting and removing many containers at once: the runtime's path for labs and for ``run``.

``start_many(nodes, links)`` brings a set of nodes up as real containers (own network, UTS,
mount and PID namespaces each) and ``stop_many(refs)`` takes them down leaving nothing; a single
``cnmkit run`` is a batch of one through the same ``start_locked``. ``start_nodes`` is the seam
the lab deployer calls (lab/deploy.py): the same batch, with its progress callback and
``BatchError``. Where the time went before,
and what is done instead (issue 10 item 5):

- a Python shim per container (120-160 ms each): one supervisor per batch, forked from the
  caller, forks every init, which execs tini (runtime/supervisor.py);
- the hosts files of every container rewritten after each container (73 ms per container at
  100): refreshed once per batch, so a lab pays O(n) once, not O(n) per node;
- one attachment after another: the network part of the nodes (sandbox netns, RequestAddress,
  CreateEndpoint, Join, EndpointOperInfo over the plugin protocol, then the configuration inside
  the netns) runs on a few threads, each with its own plugin connection, so the daemon's kernel
  work overlaps the client's; so do the releases on the way down;
- records: names are checked against one listing per batch, not one per node.

Everything runs under the state lock, and a batch is all or nothing: if any node fails, every
node of the batch is unwound (endpoints, addresses, namespaces, processes, records).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from client.engine import DaemonUnavailable, Engine, PluginError
from runtime import hosts, ns, process, sandbox, supervisor
from runtime.containers import ContainerError
from runtime.process import InitSpec
from runtime.state import STATUS_CREATED, STATUS_RUNNING, ContainerConfig, ContainerState

if TYPE_CHECKING:
    from runtime.containers import ContainerService

T = TypeVar("T")
MAX_IFNAME = 15


@dataclass(frozen=True)
class NodeStart:
    """One node of a batch, as ``cnmkit run -d`` takes it. ``networks`` are ``NET[,ip=..][,alias=..]``
    and become eth0, eth1, ... in order."""

    name: str
    command: list[str]
    hostname: str | None = None
    networks: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    rootfs: str | None = None


@dataclass(frozen=True)
class Link:
    """A point-to-point veth pair between two nodes of the batch (a lab's ``endpoints: [a:e1, b:e1]``);
    addresses (CIDR) are optional."""

    a: str
    a_ifname: str
    b: str
    b_ifname: str
    mtu: int | None = None
    a_address: str | None = None
    b_address: str | None = None


@dataclass(frozen=True)
class Started:
    """A started node: what a lab needs to find and reach it."""

    name: str
    id: str
    netns: str
    init_pid: int = 0
    pid: int = 0


class NodeFailed(ContainerError):
    """A failure that belongs to one node of the batch (its message starts with the node's name)."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"{node}: {message}")
        self.node = node


class BatchError(ContainerError):
    """``start_nodes`` failed: the batch was unwound whole, so ``started`` is empty and nothing of
    any node remains; ``failed`` names the node at fault ("" when the fault was no one node's)."""

    def __init__(self, message: str, started: list[Started], failed: str) -> None:
        super().__init__(message)
        self.started = started
        self.failed = failed


class _Engines:
    """One plugin connection per worker thread (a kept-alive HTTP connection is not shareable)."""

    def __init__(self, plugin_dir: str) -> None:
        self.plugin_dir = plugin_dir
        self.pool_ids: dict[tuple[str, str], str] = {}        # shared: one PoolList per batch
        self._local = threading.local()
        self._all: list[Engine] = []
        self._lock = threading.Lock()

    def get(self) -> Engine:
        engine = getattr(self._local, "engine", None)
        if engine is None:
            engine = self._local.engine = Engine(plugin_dir=self.plugin_dir)
            engine.pool_ids = self.pool_ids
            with self._lock:
                self._all.append(engine)
        return engine

    def close(self) -> None:
        for engine in self._all:
            engine.close()


def _parallel(fn: Callable[[T], None], items: Iterable[T], workers: int) -> list[BaseException]:
    """Run ``fn`` on every item on ``workers`` threads; every item runs, the errors are returned.

    The pool is shut down (its threads ended) before this returns: the supervisor is forked next,
    and a fork must not copy a thread holding a lock.
    """
    errors: list[BaseException] = []
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for item in items:
            try:
                fn(item)
            except Exception as exc:
                errors.append(exc)
        return errors
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cnmkit-batch") as pool:
        for future in [pool.submit(fn, item) for item in items]:
            failure = future.exception()
            if failure is not None:
                errors.append(failure)
    return errors


# -- sandboxes --------------------------------------------------------------------------------

def own_mount(directory: str) -> None:
    """Make ``directory`` (the runtime's netns dir) a mount of its own, if it is not one yet.

    Every container's init must hide the netns bind mounts of all the others in its copy of the
    mount table; with the directory a mount of its own that is one ``umount`` of it
    (process._setup_mounts), where otherwise it is one per other container: O(n) per node.
    ``release_own_mount`` takes it away again once the last sandbox is gone.
    """
    os.makedirs(directory, mode=0o755, exist_ok=True)
    directory = os.path.realpath(directory)
    if directory not in ns.mount_points_under(directory):
        ns.mount(directory, directory, None, ns.MS_BIND)


def release_own_mount(directory: str) -> None:
    """Unmount ``own_mount``'s mount when no sandbox is left in it (the caller holds the lock)."""
    directory = os.path.realpath(directory)
    with contextlib.suppress(OSError):
        if os.listdir(directory):
            return
        if ns.mount_points_under(directory) == [directory]:
            ns.umount2(directory, ns.MNT_DETACH)


_SIOCGIFFLAGS, _SIOCSIFFLAGS, _SIOCSIFADDR, _SIOCSIFNETMASK, _IFF_UP = 0x8913, 0x8914, 0x8916, 0x891C, 0x1


def new_netns(path: str) -> None:
    """``sandbox.create_netns`` without its helper thread and netlink socket: the calling (worker)
    thread unshares into a fresh netns, pins it at ``path``, brings ``lo`` up with one ioctl and
    goes home. 1-2 ms instead of a thread start plus a pyroute2 socket."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        ns.unshare(ns.CLONE_NEWNET)
        try:
            ns.mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", path, None, ns.MS_BIND)
            sandbox._announce_addresses()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                got = fcntl.ioctl(sock, _SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0))
                flags = struct.unpack("16sH", got[:18])[1]
                fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))
        finally:
            ns.setns(home, ns.CLONE_NEWNET)
    except BaseException as exc:
        sandbox.remove_netns(path)
        raise ContainerError(f"cannot create network namespace {path}: {exc}") from exc
    finally:
        os.close(home)


_SIOCSIFNAME, _SIOCSIFHWADDR, _SIOCSIFMTU, _SIOCADDRT = 0x8923, 0x8924, 0x8922, 0x890B
_RTF_UP, _RTF_GATEWAY, _ARPHRD_ETHER = 0x1, 0x2, 1


def _sockaddr_in(address: str) -> bytes:
    return struct.pack("=HH4s8x", socket.AF_INET, 0, ipaddress.IPv4Address(address).packed)


def configure_fast(path: str, att: dict[str, Any], ifname: str, install_default: bool) -> bool:
    """``sandbox.configure`` for the common IPv4 endpoint, with ioctls from this thread inside
    the netns: rename, MAC, MTU, address, up, default route. No netlink socket per node (a
    pyroute2 handle plus its six requests cost several times the kernel work). Anything else
    (IPv6, static routes) goes through ``sandbox.configure``.
    """
    if att.get("address_v6") or att.get("gateway_v6") or att.get("static_routes") or not att.get("address"):
        return sandbox.configure(path, att, ifname, install_default)
    iface = ipaddress.IPv4Interface(att["address"])
    with ns.entered(path), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        src, dst = att["src_name"].encode(), ifname.encode()
        fcntl.ioctl(sock, _SIOCSIFNAME, struct.pack("16s16s8x", src, dst))
        if att.get("mac"):
            mac = bytes.fromhex(att["mac"].replace(":", ""))
            fcntl.ioctl(sock, _SIOCSIFHWADDR, struct.pack("16sH6s8x8x", dst, _ARPHRD_ETHER, mac))
        if int(att.get("mtu") or 0):
            fcntl.ioctl(sock, _SIOCSIFMTU, struct.pack("16si20x", dst, int(att["mtu"])))
        fcntl.ioctl(sock, _SIOCSIFADDR, struct.pack("16s", dst) + _sockaddr_in(str(iface.ip)) + bytes(8))
        fcntl.ioctl(sock, _SIOCSIFNETMASK, struct.pack("16s", dst) + _sockaddr_in(str(iface.netmask)) + bytes(8))
        got = fcntl.ioctl(sock, _SIOCGIFFLAGS, struct.pack("16sH22x", dst, 0))
        flags = struct.unpack("16sH", got[:18])[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", dst, flags | _IFF_UP))
        if install_default and att.get("gateway"):
            # struct rtentry (linux/route.h), native layout: pad1, dst, gateway, genmask, flags,
            # pad2, pad3, pad4, metric, dev, mtu, window, irtt.
            route = struct.pack("@L16s16s16sHhLPhPLLH", 0, _sockaddr_in("0.0.0.0"), _sockaddr_in(att["gateway"]),
                                _sockaddr_in("0.0.0.0"), _RTF_UP | _RTF_GATEWAY, 0, 0, 0, 0, 0, 0, 0, 0)
            fcntl.ioctl(sock, _SIOCADDRT, route + bytes(8))
            return True
    return False


# -- up ---------------------------------------------------------------------------------------

def start_nodes(svc: ContainerService, nodes: Sequence[NodeStart],
                progress: Callable[[Started], None] | None = None, *, links: Sequence[Link] = (),
                workers: int = 8) -> list[Started]:
    """The lab deployer's call: ``start_many``, then ``progress`` for every node, in order."""
    try:
        started = start_many(svc, nodes, links, workers=workers)
    except NodeFailed as exc:
        raise BatchError(str(exc), [], exc.node) from None
    except (ContainerError, PluginError, DaemonUnavailable) as exc:
        raise BatchError(str(exc), [], "") from None
    if progress is not None:
        for node in started:
            progress(node)
    return started


def start_many(svc: ContainerService, specs: Sequence[NodeStart], links: Sequence[Link] = (), *,
               workers: int = 8) -> list[Started]:
    """Create and start every node (detached), then return them in the order given.

    Nothing remains if this raises: a bad spec is refused before anything is taken, and a
    failure half-way unwinds the whole batch.
    """
    if not specs:
        return []
    network_ids: dict[str, str] = {}
    configs: list[ContainerConfig] = []
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ContainerError(f"node {spec.name!r} given twice")
        seen.add(spec.name)
        try:
            configs.append(svc.prepare(spec.command, name=spec.name, networks=spec.networks,
                                       hostname=spec.hostname, rootfs=spec.rootfs, env=spec.env, detach=True,
                                       network_ids=network_ids))
        except ContainerError as exc:
            raise NodeFailed(spec.name, str(exc)) from None
    _check_links(links, {c.name: c for c in configs})
    by_name = {c.name: c.id for c in configs}
    with svc.store.locked():
        taken = {svc.store._name_of(cid) for cid in svc.store.ids()}
        clash = next((c.name for c in configs if c.name in taken), None)
        if clash is not None:
            raise NodeFailed(clash, f"container name {clash!r} is already in use")
        # Each record is made with the state start_locked would write first (one file write less
        # per node; each is a new inode, which a loaded ext4 makes slowly).
        states = {c.id: ContainerState(status=STATUS_CREATED, netns=svc._netns_path(c.id)) for c in configs}
        for config in configs:
            svc.store.create(config, states[config.id])
        try:
            start_locked(svc, [c.id for c in configs], foreground=False, links=links, by_name=by_name,
                         workers=workers, records=({c.id: c for c in configs}, states))
        except BaseException:
            for config in configs:
                svc.store.delete(config.id)
            raise
        out = []
        for config in configs:
            state = svc.store.load_state(config.id)
            out.append(Started(config.name, config.id, state.netns, state.init_pid, state.pid))
    return out


def _check_links(links: Sequence[Link], configs: dict[str, ContainerConfig]) -> None:
    used: set[tuple[str, str]] = set()
    for link in links:
        for node, ifname in ((link.a, link.a_ifname), (link.b, link.b_ifname)):
            where = f"link {link.a}:{link.a_ifname} -- {link.b}:{link.b_ifname}"
            if node not in configs:
                raise ContainerError(f"{where}: no node {node!r} in this batch")
            if not ifname or len(ifname) > MAX_IFNAME or "/" in ifname or ifname in (".", "..") or \
                    any(c.isspace() for c in ifname):
                raise ContainerError(f"{where}: bad interface name {ifname!r} (1 to {MAX_IFNAME} characters, "
                                     "no '/' or spaces)")
            taken_by_networks = {f"eth{i}" for i in range(len(configs[node].networks))} | {"lo"}
            if ifname in taken_by_networks or (node, ifname) in used:
                raise ContainerError(f"{where}: interface {ifname} of {node} is already taken")
            used.add((node, ifname))


def start_locked(svc: ContainerService, cids: Sequence[str], *, foreground: bool,
                 links: Sequence[Link] = (), by_name: dict[str, str] | None = None,
                 workers: int = 8, records: tuple[dict[str, ContainerConfig], dict[str, ContainerState]] | None = None,
                 ) -> tuple[supervisor.Supervisor, list[supervisor.Started]]:
    """Network, /etc files and processes for records already written; the caller holds the lock.

    ``records``: the configs and the "created" states (with their netns paths) the caller has
    just written, so they are neither read back nor written again. Unwound completely (every
    node of the batch) if any step fails.
    """
    if records is not None:
        configs, states = records
    else:
        configs = {cid: svc.store.load_config(cid) for cid in cids}
        states = {cid: ContainerState(status=STATUS_CREATED, netns=svc._netns_path(cid)) for cid in cids}
        for cid in cids:
            svc.store.save_state(cid, states[cid])
    engines = _Engines(svc.plugin_dir)
    try:
        own_mount(os.path.join(svc.run_dir, "netns"))
        nets = {req.network: svc._inspect_network(req.network)
                for cid in cids for req in configs[cid].networks}        # once per network, not per node

        def network(cid: str) -> None:
            state = states[cid]
            try:
                new_netns(state.netns)
                for index, req in enumerate(configs[cid].networks):
                    svc._attach_one(cid, state, req, f"eth{index}", engine=engines.get(), net=nets[req.network],
                                    configure=configure_fast)
            except (ContainerError, PluginError, DaemonUnavailable) as exc:
                if len(cids) == 1:
                    raise                                    # a plain run: its message as it was
                raise NodeFailed(configs[cid].name, str(exc)) from None

        errors = _parallel(network, cids, workers)
        if not errors and links:
            errors = _make_links(links, {name: states[cid].netns for name, cid in (by_name or {}).items()},
                                 workers)
        if errors:
            raise errors[0]
        resolv = hosts.render_resolv(hosts.read_host_resolv())
        for cid in cids:
            hosts.write_in_place(svc.store.path(cid, "hostname"), configs[cid].hostname + "\n")
            hosts.write_in_place(svc.store.path(cid, "resolv.conf"), resolv)
        # Once for the batch, before any init starts: the nodes know each other and their peers
        # learn of them (their files rendered, one block appended to each peer's).
        svc._hosts_join({cid: (configs[cid], states[cid]) for cid in cids})
        launches = [supervisor.Launch(cid, _init_spec(svc, configs[cid], states[cid]),
                                      None if foreground else svc.store.log_path(cid)) for cid in cids]
        sup, started = supervisor.spawn(launches, svc.on_exit_callback(),
                                        supervisor_log=None if foreground else
                                        os.path.join(svc.store.root, ".supervisor.log"))
        failed = next((s for s in started if s.error), None)
        if failed is not None:
            _kill_inits(started)
            raise NodeFailed(configs[failed.cid].name, failed.error) if len(cids) > 1 else \
                ContainerError(failed.error)
    except BaseException:
        _parallel(lambda cid: _quiet_release(svc, cid, states[cid], engines.get()), cids, workers)
        release_own_mount(os.path.join(svc.run_dir, "netns"))
        svc._hosts_leave(cids)
        engines.close()
        raise
    engines.close()
    now = time.time()
    for item in started:
        state = states[item.cid]
        state.status, state.pid, state.init_pid, state.init_start = (STATUS_RUNNING, item.pid, item.init_pid,
                                                                      item.init_start)
        state.shim_pid, state.shim_start, state.started_at, state.exit_code = sup.pid, sup.start, now, None
        svc.store.save_state(item.cid, state)    # hosts were refreshed before the inits started
    return sup, started


def _init_spec(svc: ContainerService, config: ContainerConfig, state: ContainerState) -> InitSpec:
    return InitSpec(
        command=config.command, env=config.env, hostname=config.hostname, netns=state.netns,
        rootfs=config.rootfs,
        etc_files={"/etc/hosts": svc.store.path(config.id, "hosts"),
                   "/etc/resolv.conf": svc.store.path(config.id, "resolv.conf"),
                   "/etc/hostname": svc.store.path(config.id, "hostname")},
        hide_mounts=(os.path.join(config.run_dir, "netns"), "/run/netns", "/var/run/netns"))


def _make_links(links: Sequence[Link], netns: dict[str, str], workers: int) -> list[BaseException]:
    """Create every veth pair in one batch of requests (ends born in their namespaces;
    drivers/rtbatch.py), then bring up and address the ends of each node from inside it with
    ioctls: no netlink socket per namespace (a pyroute2 handle costs more than the link itself)."""
    from drivers import rtbatch

    with rtbatch.LinkBatch() as nl:
        made = rtbatch.make_veths(nl, [rtbatch.Veth(link.a_ifname, link.b_ifname, netns[link.a], netns[link.b],
                                                    link.mtu) for link in links])
    errors: list[BaseException] = [error for error in made if error is not None]
    if errors:
        return errors
    ends: dict[str, list[tuple[str, Sequence[str]]]] = {}
    for link in links:
        ends.setdefault(link.a, []).append((link.a_ifname, [link.a_address] if link.a_address else []))
        ends.setdefault(link.b, []).append((link.b_ifname, [link.b_address] if link.b_address else []))
    return _parallel(lambda node: configure_ends(netns[node], ends[node]), list(ends), workers)


def configure_ends(path: str | None, ends: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Inside the netns at ``path`` (this thread only, and back; None: where this thread is):
    address (CIDRs) and up each interface, with ioctls: no netlink socket per namespace."""
    with ns.entered(path) if path else contextlib.nullcontext():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for ifname, addresses in ends:
                for address in addresses:
                    _ioctl_address(sock, ifname, address)
                got = fcntl.ioctl(sock, _SIOCGIFFLAGS, struct.pack("16sH14x", ifname.encode(), 0))
                flags = struct.unpack("16sH", got[:18])[1]
                fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", ifname.encode(), flags | _IFF_UP))


def _ioctl_address(sock: socket.socket, ifname: str, cidr: str) -> None:
    """Add ``cidr`` to ``ifname`` (in the calling thread's netns) the way ifconfig does."""
    iface = ipaddress.ip_interface(cidr)
    if iface.version == 4:
        name = ifname.encode()
        fcntl.ioctl(sock, _SIOCSIFADDR, struct.pack("16sH2s4s8x", name, socket.AF_INET, b"\0\0",
                                                    iface.ip.packed))
        fcntl.ioctl(sock, _SIOCSIFNETMASK, struct.pack("16sH2s4s8x", name, socket.AF_INET, b"\0\0",
                                                       iface.network.netmask.packed))
        return
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock6:
        fcntl.ioctl(sock6, _SIOCSIFADDR, struct.pack("16sIi", iface.ip.packed, iface.network.prefixlen,
                                                     socket.if_nametoindex(ifname)))


def _kill_inits(started: Sequence[supervisor.Started]) -> None:
    for item in started:
        if item.init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(item.init_pid, signal.SIGKILL)
    for item in started:
        if item.init_pid:
            process.wait_gone(item.init_pid, item.init_start, 10.0)


def _quiet_release(svc: ContainerService, cid: str, state: ContainerState, engine: Engine) -> None:
    with contextlib.suppress(ContainerError):
        svc._release_locked(cid, state, refresh=False, engine=engine)


# -- down -------------------------------------------------------------------------------------

def stop_many(svc: ContainerService, refs: Sequence[str], timeout: float = 10.0, *,
              workers: int = 8) -> list[str]:
    """Stop (SIGTERM, then SIGKILL after ``timeout``) and remove every container named; their ids.

    All under the lock: the supervisors, which release a container's network when its init ends
    on its own, wait meanwhile and then find the records gone, so each release happens once, here,
    in parallel, and the hosts files of the survivors are rewritten once.
    """
    known = set(svc.store.ids())                        # one listing for the batch, not one per ref
    by_name: dict[str, str] = {}
    if any(ref not in known for ref in refs):
        by_name = {name: cid for cid in known if (name := svc.store._name_of(cid))}
    cids = list(dict.fromkeys(ref if ref in known else by_name.get(ref) or svc.resolve(ref) for ref in refs))
    supervisors: set[tuple[int, int]] = set()
    problems: list[str] = []
    engines = _Engines(svc.plugin_dir)
    try:
        with svc.store.locked():
            states = {cid: svc.store.load_state(cid) for cid in cids}
            live = [s for s in states.values() if s.status == STATUS_RUNNING
                    and process.alive(s.init_pid, s.init_start)]
            for s in live:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(s.init_pid, signal.SIGTERM)      # tini forwards it to the command
            deadline = time.monotonic() + timeout
            for s in live:
                if not process.wait_gone(s.init_pid, s.init_start, max(0.0, deadline - time.monotonic())):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(s.init_pid, signal.SIGKILL)
            for s in live:
                process.wait_gone(s.init_pid, s.init_start, 10.0)
            for cid, s in states.items():
                if s.shim_pid:
                    supervisors.add((s.shim_pid, s.shim_start))
                if s.status == STATUS_CREATED:               # a start cut short: its init unrecorded
                    supervisors |= svc._end_strays(cid)

            # Sandboxes first: with its netns gone the kernel removes each container's veth
            # (both ends) itself, all of them in one batched teardown, where the driver's
            # DeleteEndpoint would wait for an RCU grace period per veth (~20 ms each, perf-anchors
            # §3); it then finds the link gone, which it accepts.
            for s in states.values():
                if s.netns:
                    sandbox.remove_netns(s.netns)
                    s.netns = ""
            drivers: dict[str, str] = {}
            for network_id in {a["network_id"] for s in states.values() for a in s.attachments}:
                with contextlib.suppress(ContainerError):
                    drivers[network_id] = str(svc._inspect_network(network_id)["Driver"])

            def release(cid: str) -> None:
                try:
                    svc._release_locked(cid, states[cid], refresh=False, engine=engines.get(), drivers=drivers)
                except ContainerError as exc:
                    problems.append(str(exc))
                    return
                svc.store.delete(cid)

            _parallel(release, cids, workers)
            release_own_mount(os.path.join(svc.run_dir, "netns"))
            svc._hosts_leave(cids)
    finally:
        engines.close()
    for pid, start in supervisors:
        svc._end_supervisor(pid, start)
    if problems:
        raise ContainerError(problems[0])
    return cids

