"""Evidence that an allocation costs the same whatever is already allocated.

Fills a /16 completely (65534 addresses) and compares the median cost of the first and the last
1000 allocations; then releases 1000 random addresses and re-allocates them (the free-set path);
then samples a /64, which a bitmap-based IPAM could not even represent. A ratio near 1 is the claim.

    python bench/ipam_fill.py [--store sqlite|memory] [--prefix 16]
    python bench/ipam_fill.py --socket [--prefix 16] [--clients 16]

``--socket`` (issue 11 item 3) asks the same question through the IPAM socket of a real daemon
(``--driver null``, SQLite): a pool is filled up to its last 1000 addresses by ``--clients``
concurrent clients, then its last 1000 allocations are timed interleaved one by one with the
first 1000 of a fresh pool of the same size (same load for both). Every address answered is
checked to be unique and the full pool to be exhausted at the end.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipam.errors import PoolExhausted
from ipam.service import IpamService
from store.base import Store
from store.memory import MemoryStore
from store.sqlite import SQLiteStore

SPACE = "cnmkit-local"
WINDOW = 1000


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """Per-call milliseconds of ``n`` calls."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def med(samples: list[float]) -> float:
    return statistics.median(samples)


def fill(ipam: IpamService, prefix: int) -> tuple[str, list[float]]:
    pool_id, _, _ = ipam.request_pool(SPACE, f"10.0.0.0/{prefix}", "", None, False)
    costs = timed(lambda: ipam.request_address(pool_id, "", None), 2 ** (32 - prefix) - 2)
    try:
        ipam.request_address(pool_id, "", None)
    except PoolExhausted:
        pass
    else:
        raise SystemExit("pool did not report exhaustion after being filled")
    return pool_id, costs


def churn(ipam: IpamService, pool_id: str, prefix: int) -> tuple[float, float]:
    """Release WINDOW random addresses of the full pool, then re-allocate them from the free set."""
    rng = random.Random(1)
    offsets = rng.sample(range(1, 2 ** (32 - prefix) - 1), WINDOW)
    addrs = [f"10.{(o >> 16) & 255}.{(o >> 8) & 255}.{o & 255}" for o in offsets]
    it = iter(addrs)
    release = timed(lambda: ipam.release_address(pool_id, next(it)), WINDOW)
    realloc = timed(lambda: ipam.request_address(pool_id, "", None), WINDOW)
    return med(release), med(realloc)


def v6_sample(ipam: IpamService) -> tuple[float, float]:
    pool_id, _, _ = ipam.request_pool(SPACE, "fd00:b:e:c::/64", "", None, True)
    ipam.request_address(pool_id, "fd00:b:e:c:ffff:ffff:ffff:fffe", None)  # a static at the far end
    first = timed(lambda: ipam.request_address(pool_id, "", None), WINDOW)
    more = timed(lambda: ipam.request_address(pool_id, "", None), WINDOW)
    return med(first), med(more)


def socket_fill(prefix: int, clients: int) -> int:
    """The first and the last WINDOW allocations of a pool, through a daemon's IPAM socket, interleaved.

    Two pools of the same size on one daemon: ``full`` is first filled up to its last WINDOW
    addresses by ``clients`` concurrent clients; then one client alternates, one allocation from
    the fresh pool (its first WINDOW) and one from ``full`` (its last WINDOW), each timed. Both
    windows thus see the same machine load, which on a shared machine drifts more than the
    effect measured.
    """
    import threading

    from bench.ipam_throughput import Daemon
    from client.transport import PluginError, PluginTransport

    with tempfile.TemporaryDirectory(prefix="cnmkit-bench-") as tmp:
        daemon = Daemon(Path(tmp), f"sqlite://{tmp}/state/state.db")
        sock = str(daemon.plugins / "cnmkit.sock")
        try:
            one = PluginTransport(sock, 60)

            def pool(cidr: str) -> str:
                return str(one.call("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault", "Pool": cidr,
                                                               "Options": {}})["PoolID"])

            full, fresh = pool(f"10.0.0.0/{prefix}"), pool(f"10.128.0.0/{prefix}")
            got: dict[str, list[str]] = {full: [], fresh: []}

            def alloc(pool_id: str, transport: PluginTransport = one) -> None:
                got[pool_id].append(transport.call("IpamDriver.RequestAddress",
                                                   {"PoolID": pool_id, "Address": "", "Options": {}})["Address"])

            total = 2 ** (32 - prefix) - 2
            middle = total - WINDOW
            conns = [PluginTransport(sock, 60) for _ in range(clients)]
            errors: list[BaseException] = []

            def worker(i: int) -> None:
                try:
                    for _ in range(middle // clients + (1 if i < middle % clients else 0)):
                        alloc(full, conns[i])
                except BaseException as exc:          # reported below: the run is invalid
                    errors.append(exc)

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
            t_mid = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            mid_rate = middle / (time.perf_counter() - t_mid)
            if errors:
                raise SystemExit(f"{len(errors)} client(s) failed: {errors[0]!r}")
            first: list[float] = []
            last: list[float] = []
            for _ in range(WINDOW):
                first += timed(lambda: alloc(fresh), 1)
                last += timed(lambda: alloc(full), 1)
            try:
                alloc(full)
            except PluginError as exc:
                exhausted = str(exc)
            else:
                raise SystemExit("pool did not report exhaustion after being filled")
            for c in conns:
                c.close()
            one.close()
        finally:
            daemon.stop()
        dupes = sum(len(v) - len(set(v)) for v in got.values())
        print(f"socket, SQLite: pool 10.0.0.0/{prefix} filled ({len(got[full])} allocations; {middle} of them by "
              f"{clients} clients at {mid_rate:.0f}/s), duplicates: {dupes}; then: {exhausted}")
        p90 = int(WINDOW * 0.9)
        print(f"first {WINDOW} (fresh pool): median {med(first):.3f} ms/alloc (p90 {sorted(first)[p90]:.3f})")
        print(f"last  {WINDOW} (full pool):  median {med(last):.3f} ms/alloc (p90 {sorted(last)[p90]:.3f})")
        print(f"ratio last/first: {med(last) / med(first):.2f} (interleaved, same run)")
        return 1 if dupes or len(got[full]) != total else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    ap.add_argument("--prefix", type=int, default=16, help="IPv4 prefix length to fill (default /16)")
    ap.add_argument("--socket", action="store_true", help="through a daemon's IPAM socket (SQLite)")
    ap.add_argument("--clients", type=int, default=16, help="--socket: concurrent clients for the middle")
    args = ap.parse_args()
    if args.socket:
        return socket_fill(args.prefix, args.clients)
    with tempfile.TemporaryDirectory(prefix="cnmkit-bench-") as tmp:
        store: Store = SQLiteStore(str(Path(tmp) / "state.db")) if args.store == "sqlite" else MemoryStore()
        ipam = IpamService(store)
        t0 = time.perf_counter()
        pool_id, costs = fill(ipam, args.prefix)
        total = time.perf_counter() - t0
        first, last = med(costs[:WINDOW]), med(costs[-WINDOW:])
        print(f"store={args.store} pool=10.0.0.0/{args.prefix} allocations={len(costs)} "
              f"total={total:.1f}s (incl. exhaustion check)")
        print(f"first {WINDOW}: median {first:.3f} ms/alloc")
        print(f"last  {WINDOW}: median {last:.3f} ms/alloc")
        print(f"ratio last/first: {last / first:.2f}")
        rel, realloc = churn(ipam, pool_id, args.prefix)
        print(f"full pool: release median {rel:.3f} ms, re-allocation from the free set "
              f"median {realloc:.3f} ms (ratio to first: {realloc / first:.2f})")
        v6_first, v6_more = v6_sample(ipam)
        print(f"/64: first {WINDOW} median {v6_first:.3f} ms/alloc, "
              f"next {WINDOW} median {v6_more:.3f} ms/alloc")
        print(f"usage: {ipam.pool_usage(pool_id)['allocated']} allocated in {pool_id}")
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
