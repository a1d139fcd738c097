"""Address allocations per second through the IPAM socket, on SQLite and on etcd (issue 7 item 8).

For each store (the embedded SQLite file; a real 3-member etcd cluster on loopback) and each
number of concurrent clients (1 and 16), one daemon (``cnmkit daemon --driver null``: no kernel
work, so no root needed) serves the IPAM socket and the clients send RequestAddress over it,
each on its own kept-alive connection, then ReleaseAddress for every address. The baseline,
in the same run and on the same store, is the same allocations made in-process through
``IpamService`` (no socket, no HTTP, no event loop, no thread hop), with the same number of
threads: the ratio is what the socket and the protocol cost.

    PYTHONPATH=. .venv/bin/python bench/ipam_throughput.py [--per-client 100] [--solo 1000]
                                                           [--stores sqlite,etcd] [--rounds 1]

"From three hosts" (three daemons sharing one store, one global pool) is bench/ipam_hosts.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import REPO, machine_info, markdown_table, write_results
from client.transport import PluginTransport
from ipam.service import IpamService
from store.url import open_store

POOL_PREFIX = 16


def _parallel(clients: int, work: Callable[[int], None]) -> float:
    """Run ``work(i)`` in ``clients`` threads started together; wall seconds from release to last end."""
    go = threading.Event()
    errors: list[BaseException] = []

    def run(i: int) -> None:
        go.wait()
        try:
            work(i)
        except BaseException as exc:                # reported below: the run is invalid
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]!r}")
    return took


class Daemon:
    """One ``--driver null`` daemon under ``tmp`` (its plugin dir, state dir and log); ``extra``:
    more ``daemon`` options (bench/ipam_hosts.py passes the host id)."""

    def __init__(self, tmp: Path, store_url: str, extra: Sequence[str] = ()) -> None:
        self.plugins, self.state = tmp / "plugins", tmp / "state"
        self.log = open(tmp / "daemon.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "--plugin-dir", str(self.plugins), "--state-dir", str(self.state),
             "--log-level", "warning", "daemon", "--driver", "null", "--store", store_url,
             "--reconcile-interval", "0", *extra], cwd=REPO, stdout=self.log, stderr=self.log,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 120
        while not (self.plugins / "cnmkit.sock").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start: {(tmp / 'daemon.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM by pid (the daemon deregisters its host); SIGKILL if it has not gone in 60 s."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def via_socket(sock: str, clients: int, per_client: int, subnet: str) -> tuple[float, float]:
    """(allocations/s, releases/s) over the socket."""
    setup = PluginTransport(sock, 60)
    pool_id = setup.call("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault", "Pool": subnet,
                                                     "Options": {}})["PoolID"]
    conns = [PluginTransport(sock, 60) for _ in range(clients)]
    got: list[list[str]] = [[] for _ in range(clients)]

    def alloc(i: int) -> None:
        for _ in range(per_client):
            got[i].append(conns[i].call("IpamDriver.RequestAddress",
                                        {"PoolID": pool_id, "Address": "", "Options": {}})["Address"])

    def release(i: int) -> None:
        for address in got[i]:
            conns[i].call("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": address.split("/")[0]})

    n = clients * per_client
    a = n / _parallel(clients, alloc)
    assert len({x for g in got for x in g}) == n, "an address was handed out twice"
    r = n / _parallel(clients, release)
    setup.call("IpamDriver.ReleasePool", {"PoolID": pool_id})
    for c in (*conns, setup):
        c.close()
    return a, r


def in_process(store_url: str, clients: int, per_client: int, subnet: str) -> tuple[float, float]:
    """The same allocations through IpamService on the same store, no socket."""
    store = open_store(store_url)
    try:
        ipam = IpamService(store)
        pool_id, _, _ = ipam.request_pool("LocalDefault", subnet, "", {}, False)
        got: list[list[str]] = [[] for _ in range(clients)]

        def alloc(i: int) -> None:
            for _ in range(per_client):
                got[i].append(ipam.request_address(pool_id, "", {})[0])

        def release(i: int) -> None:
            for address in got[i]:
                ipam.release_address(pool_id, address.split("/")[0])

        n = clients * per_client
        a = n / _parallel(clients, alloc)
        assert len({x for g in got for x in g}) == n, "an address was handed out twice"
        r = n / _parallel(clients, release)
        ipam.release_pool(pool_id)
        return a, r
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-client", type=int, default=100, help="allocations per client at 16 clients")
    parser.add_argument("--solo", type=int, default=1000, help="allocations of the single client")
    parser.add_argument("--stores", default="sqlite,etcd")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    info = machine_info()
    rows: list[dict[str, object]] = []
    subnet_no = iter(range(1, 250))
    for store in args.stores.split(","):
        tmp = Path(tempfile.mkdtemp(prefix="cnmkit-bench-ipam-"))
        cluster = None
        try:
            if store == "etcd":
                from tests.etcd_cluster import EtcdCluster

                cluster = EtcdCluster()
                cluster.start()
                url = cluster.url
            else:
                url = f"sqlite://{tmp / 'state' / 'state.db'}"
                (tmp / "state").mkdir()
            daemon = Daemon(tmp, url)
            try:
                for _ in range(args.rounds):
                    for clients, per in ((1, args.solo), (16, args.per_client)):
                        for variant in ("socket", "in-process"):
                            subnet = f"10.{next(subnet_no)}.0.0/{POOL_PREFIX}"
                            if variant == "socket":
                                a, r = via_socket(str(daemon.plugins / "cnmkit.sock"), clients, per, subnet)
                            else:
                                a, r = in_process(url, clients, per, subnet)
                            rows.append({"store": store, "clients": clients, "variant": variant,
                                         "n": clients * per, "alloc_per_s": a, "release_per_s": r})
                            print(f"{store:6} {clients:2} clients {variant:10}: {a:7.0f} alloc/s, {r:7.0f} release/s",
                                  flush=True)
            finally:
                daemon.stop()
        finally:
            if cluster is not None:
                cluster.stop()
            shutil.rmtree(tmp, ignore_errors=True)

    def best(store: str, clients: int, variant: str, key: str) -> float:
        return max(float(r[key]) for r in rows  # type: ignore[arg-type]
                   if r["store"] == store and r["clients"] == clients and r["variant"] == variant)

    table = []
    for store in args.stores.split(","):
        for clients in (1, 16):
            s_a, p_a = best(store, clients, "socket", "alloc_per_s"), best(store, clients, "in-process", "alloc_per_s")
            s_r, p_r = (best(store, clients, "socket", "release_per_s"),
                        best(store, clients, "in-process", "release_per_s"))
            table.append([store, str(clients), f"{s_a:.0f}", f"{p_a:.0f}", f"{s_a / p_a:.2f}",
                          f"{s_r:.0f}", f"{p_r:.0f}", f"{s_r / p_r:.2f}"])
    print()
    print(markdown_table(["store", "clients", "alloc/s socket", "alloc/s in-process", "ratio",
                          "release/s socket", "release/s in-process", "ratio"], table))
    info["loadavg_end"] = list(os.getloadavg())
    print(f"\nload average {info['loadavg_start']} -> {info['loadavg_end']}; git {info['git_head']}")
    print(f"results: {write_results('ipam_throughput', {'machine': info, 'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
