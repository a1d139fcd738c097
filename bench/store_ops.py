"""CAS writes and gets per second: SQLite (the single-host baseline) vs a 3-member etcd cluster.

Both run in the same process and the same run, against the synchronous ``Store`` contract the
daemon uses, so the ratio is what moving a host from the embedded store to etcd costs per op.
One CAS op = get + cas (read-modify-write, like an IPAM allocation); one get = one linearizable
read. Starts its own etcd cluster on loopback ports (tests/etcd_cluster.py) and removes it.

    PYTHONPATH=$PWD .venv/bin/python bench/store_ops.py [--ops 500] [--threads 1,8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from store.base import Store
from store.etcd import EtcdStore
from store.sqlite import SQLiteStore
from tests.etcd_cluster import EtcdCluster


def _run(store: Store, threads: int, ops: int, op: str) -> float:
    """ops/s over ``threads`` threads doing ``ops`` each on their own key."""

    def work(t: int) -> None:
        key = f"bench/{op}/{t}"
        if op == "get":
            store.put(key, b"x" * 100)
            for _ in range(ops):
                store.get(key)
            return
        for i in range(ops):
            while True:
                kv = store.get(key)
                if store.cas(key, str(i).encode() * 20, kv.mod_rev if kv else 0).succeeded:
                    break

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return threads * ops / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=500, help="ops per thread")
    parser.add_argument("--threads", default="1,8", help="comma-separated thread counts")
    args = parser.parse_args()
    cluster = EtcdCluster()
    tmp = tempfile.mkdtemp(prefix="cnmkit-bench-")
    try:
        cluster.start()
        stores: dict[str, Store] = {"sqlite": SQLiteStore(os.path.join(tmp, "kv.db")),
                                    "etcd3": EtcdStore(cluster.endpoints)}
        print(f"{'op':<5} {'threads':>7} {'sqlite ops/s':>13} {'etcd(3) ops/s':>14} {'etcd/sqlite':>12}")
        for op in ("cas", "get"):
            for threads in (int(t) for t in args.threads.split(",")):
                rates = {name: _run(s, threads, args.ops, op) for name, s in stores.items()}
                print(f"{op:<5} {threads:>7} {rates['sqlite']:>13.0f} {rates['etcd3']:>14.0f} "
                      f"{rates['etcd3'] / rates['sqlite']:>12.2f}")
        for s in stores.values():
            s.close()
    finally:
        cluster.stop()
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
