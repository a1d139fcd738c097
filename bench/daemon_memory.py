"""The daemon's resident memory: 10,000 endpoints over 20 networks, then 10,000 endpoint cycles.

Issue 11 item 4: the daemon holds 10,000 endpoints over 20 networks in at most 100 MB RSS, and
its memory stays flat over 10,000 endpoint cycles. One real daemon (``cnmkit daemon``, bridge
driver, embedded SQLite) runs in a private network namespace ``cnmmem-<pid>`` (it makes 20
bridges and their iptables rules there; the namespace, and everything in it, is deleted by name
at the end). Its RSS (``VmRSS`` of /proc/<pid>/status) is sampled:

    idle       after start, before any request (the baseline of the same run)
    networks   after 20 CreateNetwork (with RequestPool + gateway RequestAddress each)
    each 1000  while 10,000 endpoints are made: RequestAddress + CreateEndpoint, spread over the
               20 networks, by ``--clients`` concurrent clients
    each 1000  of 10,000 cycles over the 10,000 held: RequestAddress + CreateEndpoint of a new
               endpoint, DeleteEndpoint + ReleaseAddress of an old one (the count stays 10,000)

Kernel work: none per endpoint, by the protocol: the bridge driver's CreateEndpoint only picks a
MAC (kernel work waits for Join, which a container start sends; this benchmark sends none),
and DeleteEndpoint of an endpoint never joined finds no link to mark. So what is measured is the
daemon's own memory: protocol, manager, IPAM, store, not the kernel's.

    PYTHONPATH=. .venv/bin/python bench/daemon_memory.py [--endpoints 10000] [--cycles 10000]
                                                        [--networks 20] [--clients 8]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, machine_info, markdown_table, netns_add, netns_delete_prefix, write_results
from client.transport import PluginTransport


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Network:
    def __init__(self, index: int, pool_id: str, network_id: str) -> None:
        self.index, self.pool_id, self.network_id = index, pool_id, network_id


class Client:
    """dockerd's side: one kept-alive connection per socket."""

    def __init__(self, plugins: Path) -> None:
        self.ipam = PluginTransport(str(plugins / "cnmkit.sock"), 120)
        self.net = PluginTransport(str(plugins / "cnmkit-bridge.sock"), 120)

    def close(self) -> None:
        self.ipam.close()
        self.net.close()

    def network(self, index: int) -> Network:
        subnet = f"10.{100 + index}.0.0/16"
        pool = self.ipam.call("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault", "Pool": subnet,
                                                          "Options": {}})["PoolID"]
        gw = self.ipam.call("IpamDriver.RequestAddress", {
            "PoolID": pool, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}})
        nid = secrets.token_hex(32)
        self.net.call("NetworkDriver.CreateNetwork", {
            "NetworkID": nid, "Options": {"com.docker.network.generic": {"cnmkit.name": f"mem{index}"}},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": subnet, "Gateway": gw["Address"]}],
            "IPv6Data": []})
        return Network(index, pool, nid)

    def create(self, net: Network) -> tuple[Network, str, str]:
        addr = self.ipam.call("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": "", "Options": {}})
        eid = secrets.token_hex(32)
        self.net.call("NetworkDriver.CreateEndpoint", {
            "NetworkID": net.network_id, "EndpointID": eid,
            "Interface": {"Address": addr["Address"], "AddressIPv6": "", "MacAddress": ""}, "Options": {}})
        return net, eid, addr["Address"]

    def delete(self, ep: tuple[Network, str, str]) -> None:
        net, eid, addr = ep
        self.net.call("NetworkDriver.DeleteEndpoint", {"NetworkID": net.network_id, "EndpointID": eid})
        self.ipam.call("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": addr.split("/")[0]})


def parallel(clients: list[Client], n: int, work: Callable[[Client, int], None]) -> None:
    """``work(client, i)`` for i in range(n), spread over the clients' threads."""
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            for i in range(k, n, len(clients)):
                work(clients[k], i)
        except BaseException as exc:                    # reported below: the run is invalid
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]!r}")


def run(args: argparse.Namespace, netns: str, tmp: Path) -> int:
    plugins, state = tmp / "plugins", tmp / "state"
    log = open(tmp / "daemon.log", "ab")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "cli.main", "--plugin-dir", str(plugins),
         "--state-dir", str(state), "--log-level", "warning", "daemon", "--reconcile-interval", "0"],
        cwd=REPO, stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        while not (plugins / "cnmkit-bridge.sock").exists():
            if proc.poll() is not None:
                raise RuntimeError((tmp / "daemon.log").read_text()[-2000:])
            time.sleep(0.05)
        time.sleep(0.5)                                  # let start-up settle before the baseline
        info = machine_info()
        samples: list[tuple[str, int, float]] = [("idle", 0, rss_mb(proc.pid))]
        clients = [Client(plugins) for _ in range(args.clients)]
        nets = [clients[0].network(i) for i in range(args.networks)]
        samples.append(("networks", 0, rss_mb(proc.pid)))
        held: list[tuple[Network, str, str]] = []
        lock = threading.Lock()
        t0 = time.monotonic()
        step = 1000
        for done in range(0, args.endpoints, step):
            def make(c: Client, i: int) -> None:
                ep = c.create(nets[i % len(nets)])
                with lock:
                    held.append(ep)
            parallel(clients, min(step, args.endpoints - done), make)
            samples.append(("held", len(held), rss_mb(proc.pid)))
            print(f"  {len(held)} endpoints held: {samples[-1][2]:.1f} MB ({time.monotonic() - t0:.0f} s)",
                  flush=True)
        rng = random.Random(1)
        rng.shuffle(held)
        queue = list(held)
        for done in range(0, args.cycles, step):
            def cycle(c: Client, i: int) -> None:
                with lock:
                    old = queue.pop(0)
                c.delete(old)
                ep = c.create(old[0])
                with lock:
                    queue.append(ep)
            parallel(clients, min(step, args.cycles - done), cycle)
            samples.append(("cycles", done + min(step, args.cycles - done), rss_mb(proc.pid)))
            print(f"  {samples[-1][1]} cycles: {samples[-1][2]:.1f} MB ({time.monotonic() - t0:.0f} s)", flush=True)
        for c in clients:
            c.close()
        info["loadavg_end"] = list(os.getloadavg())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    idle = samples[0][2]
    held_mb = next(mb for what, n, mb in samples if what == "held" and n == args.endpoints)
    cycle_samples = [mb for what, _, mb in samples if what == "cycles"]
    rows = [[what, str(n), f"{mb:.1f}", f"{mb / idle:.2f}x"] for what, n, mb in samples]
    print()
    print(f"load {info['loadavg_start'][0]:.2f} -> {info['loadavg_end'][0]:.2f}; {args.clients} clients; "
          f"{args.networks} networks; git {info.get('git_head', '?')}")
    print(markdown_table(["phase", "endpoints / cycles", "RSS MB", "x idle (same run)"], rows))
    growth = cycle_samples[-1] - cycle_samples[0] if len(cycle_samples) > 1 else 0.0
    print(f"\n{args.endpoints} endpoints held: {held_mb:.1f} MB ({held_mb / idle:.2f}x idle {idle:.1f} MB); "
          f"over the cycles, first -> last sample: {cycle_samples[0]:.1f} -> {cycle_samples[-1]:.1f} MB "
          f"({growth:+.1f} MB over {args.cycles - min(1000, args.cycles)} cycles)")
    path = write_results("daemon_memory", {"machine": info, "args": vars(args),
                                           "samples": [{"phase": w, "n": n, "rss_mb": mb} for w, n, mb in samples]})
    print(f"results: {path}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoints", type=int, default=10_000)
    ap.add_argument("--cycles", type=int, default=10_000)
    ap.add_argument("--networks", type=int, default=20)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (a private network namespace for the daemon's bridges)", file=sys.stderr)
        return 2
    netns = f"cnmmem-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="cnmmem-"))
    netns_add([netns])
    try:
        return run(args, netns, tmp)
    finally:
        netns_delete_prefix(netns)
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(Exception):
            left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            print(f"cleanup: netns {netns} left: {netns in left}")


if __name__ == "__main__":
    sys.exit(main())
