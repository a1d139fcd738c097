"""Bring N containers up on one network and tear them down; say where the time goes.

    sudo PYTHONPATH=. python bench/runtime_up.py [--counts 1,10,100] [--json out.json]

Everything happens in a throwaway "host" netns (``cnmb<pid>``) with its own daemon; the script
removes all of it at the end. Three columns per N:

* **cnmkit**: ``ContainerService.run(-d)`` in-process (no CLI start-up), phases timed by
  wrapping the service's steps: sandbox netns, attach (RequestAddress + CreateEndpoint + Join
  with the veth born in the sandbox + EndpointOperInfo, over the plugin socket), configure
  (rename, MAC, MTU, address, up, routes), /etc files + hosts refresh, init start (the forked
  supervisor and its tini init, runtime/supervisor.py); then ``rm -f``.
* **cni-bridge**: the reference CNI bridge plugin's ADD/DEL (/usr/lib/cni/bridge + host-local)
  on the same kind of netns: the network part only, as a container runtime would call it.
* **floor**: the same kernel work with no protocol, no IPAM and no processes: veth born in the
  netns, address, up, default route via drivers.kernel (perf-anchors §3 "pr-direct").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from client.engine import Engine  # noqa: E402
from drivers.kernel import Kernel  # noqa: E402
from runtime import batch, sandbox, supervisor  # noqa: E402
from runtime.containers import ContainerService  # noqa: E402

CNI_DIR = "/usr/lib/cni"


class Phases:
    """Accumulates wall time per named step of the service, by wrapping module functions."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.times[label].append(time.perf_counter() - t0)

        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, original))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()


@contextlib.contextmanager
def host_netns() -> Iterator[str]:
    name = f"cnmb{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def start_daemon(ns: str, tmp: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT)
    log = open(os.path.join(tmp, "daemon.log"), "ab")
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "cli.main",
                             "--plugin-dir", f"{tmp}/plugins", "--state-dir", f"{tmp}/state", "daemon",
                             "--sandbox-dir", f"{tmp}/run/netns"],
                            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    for _ in range(300):
        if os.path.exists(f"{tmp}/plugins/cnmkit-bridge.sock"):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("daemon did not start")


def bench_cnmkit(svc: ContainerService, n: int) -> dict[str, Any]:
    phases = Phases()
    phases.wrap(batch, "new_netns", "netns")
    phases.wrap(Engine, "attach", "attach (protocol)")          # the batch's per-thread connections too
    phases.wrap(batch, "configure_fast", "configure")
    phases.wrap(svc, "_hosts_join", "hosts (incremental join)")
    phases.wrap(supervisor, "spawn", "init start")
    phases.wrap(Engine, "detach", "detach (protocol)")
    phases.wrap(sandbox, "remove_netns", "netns remove")
    try:
        t0 = time.perf_counter()
        for i in range(n):
            svc.run(["sleep", "100000"], name=f"b{i}", networks=["bench"], detach=True)
        up = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(n):
            svc.rm(f"b{i}", force=True)
        down = time.perf_counter() - t0
    finally:
        phases.restore()
    return {"up_total_s": up, "down_total_s": down, "up_per_container_ms": up / n * 1000,
            "down_per_container_ms": down / n * 1000,
            "phases_ms_median": {k: statistics.median(v) * 1000 for k, v in phases.times.items()},
            "phases_ms_sum_per_container": {k: sum(v) * 1000 / n for k, v in phases.times.items()}}


def bench_cni(ns: str, tmp: str, n: int) -> dict[str, Any] | None:
    if not os.path.exists(f"{CNI_DIR}/bridge"):
        return None
    conf = json.dumps({"cniVersion": "0.4.0", "name": "cnibench", "type": "bridge", "bridge": "cnibr0",
                       "isGateway": True, "ipam": {"type": "host-local", "subnet": "10.81.0.0/16",
                                                   "dataDir": f"{tmp}/cni-ipam"}})
    paths = [f"{tmp}/cni-netns/{i}" for i in range(n)]
    for p in paths:
        sandbox.create_netns(p)

    def call(cmd: str, i: int) -> float:
        env = dict(os.environ, CNI_COMMAND=cmd, CNI_CONTAINERID=f"bench{i}", CNI_NETNS=paths[i],
                   CNI_IFNAME="eth0", CNI_PATH=CNI_DIR)
        t0 = time.perf_counter()
        subprocess.run(["nsenter", f"--net=/run/netns/{ns}", f"{CNI_DIR}/bridge"], input=conf, text=True,
                       env=env, capture_output=True, check=True)
        return time.perf_counter() - t0

    try:
        adds = [call("ADD", i) for i in range(n)]
        dels = [call("DEL", i) for i in range(n)]
    finally:
        for p in paths:
            sandbox.remove_netns(p)
        subprocess.run(["ip", "-n", ns, "link", "del", "cnibr0"], capture_output=True, check=False)
    return {"add_ms_median": statistics.median(adds) * 1000, "del_ms_median": statistics.median(dels) * 1000,
            "add_total_s": sum(adds), "del_total_s": sum(dels)}


def bench_floor(ns: str, tmp: str, n: int) -> dict[str, Any]:
    paths = [f"{tmp}/floor-netns/{i}" for i in range(n)]
    with Kernel.for_netns(f"/run/netns/{ns}") as host:
        host.ensure_bridge("flbr0", alias="bench:floor", mtu=1500)
        host.set_up("flbr0")
        t0 = time.perf_counter()
        for i, p in enumerate(paths):
            sandbox.create_netns(p)
            host.ensure_veth(f"flv{i}", "eth0", alias=f"bench:floor:{i}", mtu=1500, peer_mac=None,
                             master="flbr0", peer_netns_path=p)
            with Kernel.for_netns(p) as inside:
                inside.addr_add("eth0", f"10.82.{i // 250}.{i % 250 + 2}/16")
                inside.link_set("eth0", up=True)
                inside.route_add(gateway="10.82.0.1")
        up = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i, p in enumerate(paths):
            host.link_delete(f"flv{i}", alias=f"bench:floor:{i}")
            sandbox.remove_netns(p)
        down = time.perf_counter() - t0
        host.link_delete("flbr0", alias="bench:floor")
    return {"up_per_endpoint_ms": up / n * 1000, "down_per_endpoint_ms": down / n * 1000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="1,10,100")
    parser.add_argument("--json")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    tmp = tempfile.mkdtemp(prefix="cnmbench-")
    results: dict[str, Any] = {}
    daemon = None
    try:
        with host_netns() as ns:
            daemon = start_daemon(ns, tmp)
            svc = ContainerService(f"{tmp}/state", f"{tmp}/plugins", f"{tmp}/run")
            svc.engine.create_network("bench", subnets=["10.80.0.0/16"])
            for n in counts:
                results[str(n)] = {"cnmkit": bench_cnmkit(svc, n), "cni-bridge": bench_cni(ns, tmp, n),
                                   "floor": bench_floor(ns, tmp, n)}
                print(json.dumps({n: results[str(n)]}, indent=1), flush=True)
            svc.engine.remove_network("bench")
            svc.close()
            daemon.terminate()
            daemon.wait()
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
