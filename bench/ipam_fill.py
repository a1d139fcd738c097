"""Evidence that an allocation costs the same whatever is already allocated.

Fills a /16 completely (65534 addresses) and compares the median cost of the first and the last
1000 allocations; then releases 1000 random addresses and re-allocates them (the free-set path);
then samples a /64, which a bitmap-based IPAM could not even represent. A ratio near 1 is the claim.

    python bench/ipam_fill.py [--store sqlite|memory] [--prefix 16]
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    ap.add_argument("--prefix", type=int, default=16, help="IPv4 prefix length to fill (default /16)")
    args = ap.parse_args()
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
