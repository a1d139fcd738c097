"""A little cluster for overlay tests: host namespaces on an underlay, a real daemon in each.

    underlay ns: bridge ``ul`` ----- veth ----- host ns 1 (eth0 192.0.2.1/24, cnmkit daemon)
                 192.0.2.254/24 \\--- veth ----- host ns 2 (eth0 192.0.2.2/24, cnmkit daemon) ...

Daemons share one SQLite file store (no etcd needed) and are started with ``nsenter --net``, not
``ip netns exec``: the latter gives the process a mount namespace of its own, and the overlay
namespaces a daemon creates (``/run/netns/cnmkit-ov<VNI>-<host>``) must be visible to the test's
oracle and outlive the daemon, as they do on a real host. Containers are named namespaces
attached through ``client.engine.Engine`` (the runtime's own calls, with a direct Join) and set
up with ``runtime.sandbox.configure``. Everything is made under names with this process's id
and removed by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.engine import Attachment, Engine
from runtime.sandbox import configure
from tests.conftest import socket_answers

REPO = Path(__file__).resolve().parents[2]
SAFETY = 120.0                     # seconds before a hang becomes a failure; nothing is timed against it
UNDERLAY_NET = "192.0.2"
NETNS_DIR = "/run/netns"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=120)


def eventually(what: str, ok: Callable[[], bool]) -> None:
    """Wait for the agent to converge (a watch event away); a hang fails after SAFETY."""
    deadline = time.monotonic() + SAFETY
    while not ok():
        assert time.monotonic() < deadline, f"not converged within {SAFETY:.0f} s: {what}"
        time.sleep(0.02)


@dataclass
class VxHost:
    name: str                      # host id and namespace suffix
    netns: str
    address: str
    tmp: Path
    proc: subprocess.Popen[bytes] | None = None
    containers: list[str] = field(default_factory=list)

    @property
    def plugins(self) -> Path:
        return self.tmp / "plugins"

    @property
    def run_dir(self) -> Path:
        """The embedded runtime's run dir on this host (its container namespaces are pinned there)."""
        return self.tmp / "run"

    def cnmkit(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``cnmkit ARGS`` run inside this host's namespace against its daemon (runtime verbs too)."""
        env = dict(os.environ, PYTHONPATH=str(REPO))
        return subprocess.run(["nsenter", f"--net={NETNS_DIR}/{self.netns}", sys.executable, "-m", "cli.main",
                               "--plugin-dir", str(self.plugins), "--state-dir", str(self.tmp / "state"),
                               "--run-dir", str(self.run_dir), *args],
                              cwd=REPO, capture_output=True, text=True, timeout=120, env=env, check=False)

    def engine(self) -> Engine:
        return Engine(str(self.plugins))

    def start(self, store: str) -> None:
        (self.tmp / "state").mkdir(parents=True, exist_ok=True)
        log = open(self.tmp / "daemon.log", "ab")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={NETNS_DIR}/{self.netns}", sys.executable, "-m", "cli.main",
             "--plugin-dir", str(self.plugins), "--state-dir", str(self.tmp / "state"), "daemon",
             "--store", store, "--host-id", self.name, "--advertise", self.address, "--host-ttl", "2",
             "--reconcile-interval", "0", "--sandbox-dir", NETNS_DIR,
             "--sandbox-dir", str(self.run_dir / "netns")],
            cwd=REPO, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + SAFETY
        while not all(socket_answers(str(self.plugins / s)) for s in ("cnmkit.sock", "cnmkit-vxlan.sock")):
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)
            self.proc = None

    def log(self) -> str:
        return (self.tmp / "daemon.log").read_text()[-4000:]

    def overlay_ns(self, vni: int) -> str:
        return f"cnmkit-ov{vni}-{self.name}"

    def container(self, tag: str) -> str:
        name = f"{self.name}c{tag}"
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        self.containers.append(name)
        return name

    def attach(self, network: str, container: str, **kw: Any) -> Attachment:
        att = self.engine().attach(network, f"{NETNS_DIR}/{container}", direct=True, **kw)
        configure(f"{NETNS_DIR}/{container}", att.to_dict(), "eth0", True)
        return att

    def run(self, container: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", container, *cmd, check=False)


def fdb(netns: str) -> set[tuple[str, str]]:
    """(MAC, dst) of the remote entries on the overlay's vxlan0: ``bridge -j fdb`` as the oracle."""
    out = sh("bridge", "-n", netns, "-j", "fdb", "show", "dev", "vxlan0", check=False).stdout
    return {(e["mac"], e["dst"]) for e in json.loads(out or "[]") if e.get("dst")}


def neigh(netns: str) -> set[tuple[str, str]]:
    out = sh("ip", "-n", netns, "-j", "neigh", "show", "dev", "vxlan0", check=False).stdout
    return {(e["dst"], e.get("lladdr", "")) for e in json.loads(out or "[]")}


def ping(host: VxHost, container: str, address: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return host.run(container, "ping", "-c", "1", "-W", "2", *extra, address)


class Cluster:
    """``n`` hosts on one underlay and one store; ``close()`` removes every namespace by name."""

    def __init__(self, tmp: Path, n: int = 2, tag: str = "", store: Callable[[str], str] | None = None) -> None:
        """``store``: given the underlay namespace (192.0.2.254 there, reachable from every host),
        start a store and answer its URL (an etcd cluster); default: one SQLite file."""
        self.tag = tag or f"vx{os.getpid() % 100000}"
        self.underlay = f"{self.tag}ul"
        self.hosts: list[VxHost] = []
        (tmp / "shared").mkdir(parents=True, exist_ok=True)
        sh("ip", "netns", "add", self.underlay)
        sh("ip", "-n", self.underlay, "link", "set", "lo", "up")
        sh("ip", "-n", self.underlay, "link", "add", "ul", "type", "bridge")
        sh("ip", "-n", self.underlay, "addr", "add", f"{UNDERLAY_NET}.254/24", "dev", "ul")
        sh("ip", "-n", self.underlay, "link", "set", "ul", "up")
        self.store = store(self.underlay) if store else f"sqlite://{tmp}/shared/state.db"
        for i in range(1, n + 1):
            self.add_host(tmp, i)

    def add_host(self, tmp: Path, i: int) -> VxHost:
        name = f"{self.tag}h{i}"
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", self.underlay, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "-n", self.underlay, "link", "set", f"p{i}", "master", "ul", "up")
        address = f"{UNDERLAY_NET}.{i}"
        sh("ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        host = VxHost(name=name, netns=name, address=address, tmp=tmp / name)
        self.hosts.append(host)
        host.start(self.store)
        return host

    def close(self) -> None:
        for host in self.hosts:
            if host.proc is not None and host.run_dir.exists():
                with contextlib.suppress(Exception):     # runtime containers: stopped through the runtime
                    for name in host.cnmkit("ps", "-a", "-q").stdout.split():
                        host.cnmkit("rm", "-f", name)
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.stop(signal.SIGKILL)
        for host in self.hosts:
            for c in host.containers:
                sh("ip", "netns", "del", c, check=False)
            for entry in os.listdir(NETNS_DIR):
                if entry.startswith("cnmkit-ov") and entry.endswith(f"-{host.name}"):
                    sh("ip", "netns", "del", entry, check=False)
            sh("ip", "netns", "del", host.netns, check=False)
        sh("ip", "netns", "del", self.underlay, check=False)
