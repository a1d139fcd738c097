"""A multi-host lab in network namespaces: an underlay, N hosts, a shared store, a daemon per host.

The one harness of both overlay test files: tests/overlay/ (a 3-member etcd, runtime containers
and a dockerd through the CLI) and tests/kernel/test_vxlan_overlay.py (a SQLite file as the
store, "containers" as named namespaces attached through ``client.engine.Engine`` as the
runtime attaches them, without a process start per operation).

Why namespaces and not VMs: every piece the overlay depends on is per network namespace (links,
FDB, neighbour tables, iptables, UDP port 4789), so a namespace per host is a faithful host for
the networking, costs milliseconds, and cannot touch the machine's own interfaces. The shape:

    underlay ns  ul0 (bridge, 192.0.2.254/24; the etcd members listen here)
       |-- veth -- host h1 ns  eth0 192.0.2.1/24  cnmkit daemon --advertise 192.0.2.1
       |-- veth -- host h2 ns  eth0 192.0.2.2/24  cnmkit daemon --advertise 192.0.2.2
       ...

192.0.2.0/24 is TEST-NET-1 (RFC 5737): no real network uses it, so nothing here can collide with
the machine's routes. Every host runs ``cnmkit daemon`` (its own plugin, state and run dirs, a
short --host-ttl, no periodic reconcile) on the shared store, and the embedded runtime's CLI in
that host's namespace.

Everything is made under names that carry this process's id and removed by name in ``close()``,
which also kills exactly the processes started here (by pid) and runs even when setup failed
half-way. Processes enter a host with ``nsenter --net`` (not ``ip netns exec``, which gives each
command a private mount namespace: the runtime's pinned container namespaces and the overlay
namespaces a daemon makes, ``/run/netns/cnmkit-ov<VNI>-<host>``, must be visible to the daemon,
to the next CLI call and to the test's oracle, and outlive the daemon, as on a real host).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.engine import Attachment, Engine
from runtime.sandbox import configure
from tests.etcd_cluster import EtcdCluster

ROOT = Path(__file__).resolve().parents[2]
UNDERLAY_NET = "192.0.2"                # TEST-NET-1: .254 is the underlay bridge, .1..N the hosts
UNDERLAY_MTU = 1500
START_LIMIT = 60.0                      # seconds a daemon may take to serve; a bound on a hang only
DRIVERS = ("bridge", "vxlan")           # what every host's daemon serves
OVERLAY_NS_PREFIX = "cnmkit-ov"         # drivers/overlay_ns.py: cnmkit-ov<VNI>-<host id>, one per overlay and host
NETNS_DIR = "/run/netns"
SAFETY = 120.0                          # seconds before a hang becomes a failure; nothing is timed against it


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=120)


def _socket_answers(path: Path) -> bool:
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class OverlayHost:
    """One host: a namespace on the underlay, its daemon, and the CLI/runtime run inside it."""

    name: str
    netns: str
    address: str
    tmp: Path
    store_url: str
    ttl: int = 2
    daemon: subprocess.Popen | None = None
    containers: list[str] = field(default_factory=list)     # named "container" namespaces (``container``)
    plugin_dir: Path = field(init=False)
    state_dir: Path = field(init=False)
    run_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.plugin_dir, self.state_dir, self.run_dir = self.tmp / "plugins", self.tmp / "state", self.tmp / "run"

    @property
    def docker_socket(self) -> str:
        """Where this host's dockerd (tests/overlay/dockerd.py), when one runs, serves its API."""
        return str(self.tmp / "docker.sock")

    @property
    def host_id(self) -> str:
        """The id in the store: the host's netns name, unique to this test process (the overlay
        namespaces the driver makes carry it, so two runs on one machine never share one)."""
        return self.netns

    # -- processes --------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT), "CNMKIT_RUN_DIR": str(self.run_dir)}

    def enter(self, *cmd: str) -> list[str]:
        """``cmd`` run in this host's network namespace (and the machine's mount namespace)."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]

    def argv(self, *args: str) -> list[str]:
        return self.enter(sys.executable, "-m", "cli.main", "--plugin-dir", str(self.plugin_dir),
                          "--state-dir", str(self.state_dir), *args)

    def daemon_args(self) -> list[str]:
        args = ["daemon", "--store", self.store_url, "--host-id", self.host_id, "--advertise", self.address,
                "--host-ttl", str(self.ttl), "--reconcile-interval", "0",
                "--sandbox-dir", str(self.run_dir / "netns"), "--sandbox-dir", "/run/netns",
                "--docker-socket", str(self.docker_socket)]
        for driver in DRIVERS:
            args += ["--driver", driver]
        return args

    def start_daemon(self) -> None:
        assert self.daemon is None or self.daemon.poll() is not None
        log = open(self.tmp / "daemon.log", "ab")
        self.daemon = subprocess.Popen(self.argv(*self.daemon_args()), env=self.env(), stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=log, start_new_session=True, cwd=str(ROOT))
        log.close()
        deadline = time.monotonic() + START_LIMIT
        socks = [self.plugin_dir / "cnmkit.sock"] + [self.plugin_dir / f"cnmkit-{d}.sock" for d in DRIVERS]
        while not all(_socket_answers(s) for s in socks):
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"daemon of {self.name} did not serve:\n{self.log()}")
            time.sleep(0.05)

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        """Stop the daemon this harness started (by its pid); SIGKILL is a host dying."""
        if self.daemon is None:
            return
        if self.daemon.poll() is None:
            self.daemon.send_signal(sig)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.daemon = None

    def log(self) -> str:
        path = self.tmp / "daemon.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def engine(self) -> Engine:
        """The plugin client the runtime uses, on this host's sockets."""
        return Engine(str(self.plugin_dir))

    def overlay_ns(self, vni: int) -> str:
        """The name of this host's namespace of overlay ``vni`` (drivers/overlay_ns.py)."""
        return f"{OVERLAY_NS_PREFIX}{vni}-{self.host_id}"

    # -- "containers" as bare named namespaces ----------------------------------------------------

    def container(self, tag: str) -> str:
        """A bare "container" namespace on this host (removed by name at the lab's close)."""
        name = f"{self.netns}c{tag}"[:40]
        run("ip", "netns", "add", name)
        self.containers.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def attach(self, network: str, container: str, **kw: Any) -> Attachment:
        """Attach a ``container`` namespace as the runtime does (a direct Join), and configure it."""
        att = self.engine().attach(network, f"{NETNS_DIR}/{container}", direct=True, **kw)
        configure(f"{NETNS_DIR}/{container}", att.to_dict(), "eth0", True)
        return att

    def run(self, container: str, *cmd: str) -> subprocess.CompletedProcess:
        """``cmd`` inside a ``container`` namespace (not a runtime container: see ``exec``)."""
        return run("ip", "netns", "exec", container, *cmd, check=False)

    # -- the operator's view ----------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env(), timeout=120,
                              cwd=str(ROOT))
        if check and proc.returncode != 0:
            raise AssertionError(f"[{self.name}] cnmkit {' '.join(args)} -> {proc.returncode}\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.cli("--format", "json", *args).stdout)

    def host_ids(self) -> list[str]:
        """The hosts this one lists as live, by lab name (h1, h2...)."""
        return sorted(h["HostID"].removeprefix(self.netns.removesuffix(self.name)) for h in self.json("host", "ls"))

    def exec(self, container: str, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
        return self.cli("exec", container, "--", *cmd, check=check)

    def ping(self, container: str, target: str, *extra: str) -> bool:
        return self.exec(container, "ping", "-c", "1", "-W", "1", *extra, target).returncode == 0

    def address_of(self, container: str, network: str) -> str:
        rows = {r["Name"]: r for r in self.json("ps", "-a")}
        return str(rows[container]["Networks"][network]).split("/")[0]

    def ip_json(self, *args: str, netns: str | None = None) -> list[dict]:
        """iproute2's JSON (the independent oracle) for this host, or a namespace named by path."""
        cmd = self.enter("ip", "-j", "-d", *args) if netns is None else \
            ["nsenter", f"--net={netns}", "ip", "-j", "-d", *args]
        return json.loads(run(*cmd).stdout or "[]")

    def bridge_json(self, *args: str) -> list[dict]:
        return json.loads(run(*self.enter("bridge", "-j", *args)).stdout or "[]")

    def container_names(self) -> list[str]:
        """Ids of every container this host's runtime has state for (``rm -f`` takes ids)."""
        root = self.state_dir / "containers"
        if not root.is_dir():
            return []
        return [p.name for p in root.iterdir() if not p.name.startswith(".")]

    def container_pids(self) -> list[int]:
        pids: list[int] = []
        root = self.state_dir / "containers"
        if root.is_dir():
            for state in root.glob("*/state.json"):
                data = json.loads(state.read_text())
                pids += [int(data.get(k, 0) or 0) for k in ("shim_pid", "init_pid", "pid")]
        return [p for p in pids if p > 0]


class Lab:
    """The underlay, the hosts, the etcd cluster; ``close()`` removes all of it by name and pid."""

    def __init__(self, hosts: int = 3, *, ttl: int = 2, tag: str = "", store: str = "etcd") -> None:
        """``store``: "etcd" (a 3-member cluster in the underlay namespace) or "sqlite" (one file)."""
        assert store in ("etcd", "sqlite"), store
        self.tag = f"cno{os.getpid() % 100000}{tag}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"cnmkit-{self.tag}-"))
        self.underlay = f"{self.tag}u"
        self.store = store
        self.store_url = f"sqlite://{self.tmp}/state.db"
        self.etcd: EtcdCluster | None = None
        self.hosts: list[OverlayHost] = []
        self.count, self.ttl = hosts, ttl
        self.namespaces: list[str] = []
        self.extra_pids: list[int] = []         # other processes a test started here (iperf3 servers...)

    @property
    def etcd_address(self) -> str:
        return f"{UNDERLAY_NET}.254"

    def _netns(self, name: str) -> str:
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def start(self) -> Lab:
        """Build everything; on any failure what was made so far is removed before re-raising."""
        try:
            self._build_underlay()
            if self.store == "etcd":
                self.etcd = EtcdCluster(netns=self.underlay, host=self.etcd_address)
                self.etcd.start()
                self.store_url = self.etcd.url
            for i in range(1, self.count + 1):
                self.add_host(i)
            for host in self.hosts:
                host.start_daemon()
        except BaseException:
            self.close()
            raise
        return self

    def _build_underlay(self) -> None:
        ns = self._netns(self.underlay)
        run("ip", "-n", ns, "link", "add", "ul0", "type", "bridge")
        run("ip", "-n", ns, "link", "set", "ul0", "mtu", str(UNDERLAY_MTU), "up")
        run("ip", "-n", ns, "addr", "add", f"{self.etcd_address}/24", "dev", "ul0")

    def add_host(self, i: int) -> OverlayHost:
        """Host ``h<i>``: a namespace whose eth0 is a veth to the underlay bridge (no daemon yet)."""
        name = f"h{i}"
        ns = self._netns(f"{self.tag}{name}")
        port = f"{self.tag}p{i}"[:15]
        run("ip", "-n", self.underlay, "link", "add", port, "mtu", str(UNDERLAY_MTU), "type", "veth",
            "peer", "name", "eth0", "mtu", str(UNDERLAY_MTU), "netns", ns)
        run("ip", "-n", self.underlay, "link", "set", port, "master", "ul0", "up")
        address = f"{UNDERLAY_NET}.{i}"
        run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "route", "add", "default", "via", self.etcd_address)
        tmp = self.tmp / name
        tmp.mkdir()
        host = OverlayHost(name, ns, address, tmp, self.store_url, ttl=self.ttl)
        self.hosts.append(host)
        return host

    def container_netns(self, host: OverlayHost, tag: str) -> str:
        """A bare "container" namespace (removed by name at close), for attaching through the
        engine directly as the runtime does, without the CLI's process start per operation."""
        return host.container(tag)

    def host(self, name: str) -> OverlayHost:
        return next(h for h in self.hosts if h.name == name)

    def wait_hosts(self, expected: list[str], on: OverlayHost | None = None, limit: float = 60.0) -> None:
        """Until ``on`` (default every host) lists exactly ``expected``; bounded, never a timing claim."""
        deadline = time.monotonic() + limit
        for host in [on] if on else self.hosts:
            while host.host_ids() != sorted(expected):
                assert time.monotonic() < deadline, f"{host.name} lists {host.host_ids()}, not {expected}"
                time.sleep(0.1)

    def remove_containers(self) -> list[str]:
        """``rm -f`` every runtime container on every host; the pids still alive after it."""
        survivors: list[str] = []
        for host in self.hosts:
            pids = host.container_pids()
            names = host.container_names()
            if names and host.daemon is not None:
                host.cli("rm", "-f", *names, check=False)
            for pid in pids:
                if alive(pid):
                    survivors.append(f"{host.name}: pid {pid}")
                    os.kill(pid, signal.SIGKILL)
        return survivors

    def close(self) -> None:
        """Remove everything by name and stop what was started here by pid, whatever state it is in."""
        problems: list[str] = []
        try:
            problems += self.remove_containers()
        except Exception as exc:  # keep tearing down: the namespaces must go whatever happened
            problems.append(f"removing containers: {exc}")
        for pid in self.extra_pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        for host in self.hosts:
            host.stop_daemon(signal.SIGKILL)
        if self.etcd is not None:
            self.etcd.stop()
        for host in self.hosts:
            for point in sorted(_mounts_under(str(host.tmp)), key=len, reverse=True):
                problems.append(f"mount left: {point}")
                run("umount", "-l", point, check=False)
        for host in self.hosts:                 # the overlays' namespaces outlive a killed daemon
            for ns in host.containers:
                run("ip", "netns", "del", ns, check=False)
            if os.path.isdir(NETNS_DIR):
                for entry in os.listdir(NETNS_DIR):
                    if entry.startswith(OVERLAY_NS_PREFIX) and entry.endswith(f"-{host.host_id}"):
                        run("ip", "netns", "del", entry, check=False)
        for ns in reversed(self.namespaces):
            run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)
        assert not problems, problems


def _mounts_under(prefix: str) -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def eventually(what: str, ok: Callable[[], bool], limit: float = SAFETY) -> None:
    """Until ``ok()`` (the agent converges asynchronously); ``limit`` only turns a hang into a failure."""
    deadline = time.monotonic() + limit
    while not ok():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def ping_in(host: OverlayHost, container: str, address: str, *extra: str) -> subprocess.CompletedProcess:
    """One ping from a bare ``container`` namespace of ``host`` (2 s for the answer)."""
    return host.run(container, "ping", "-c", "1", "-W", "2", *extra, address)
