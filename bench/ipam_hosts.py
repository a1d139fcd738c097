"""Address allocations per second from three hosts on one store vs from one (issue 7 item 8).

Three real daemons (``cnmkit daemon --driver null --host-id hN``: separate processes with their
own plugin dir, state dir and host id; the null driver and IPAM touch no kernel object, so no
netns and no root are needed) share one store: one SQLite file, or a real 3-member etcd cluster
on loopback. Each round requests ONE pool in the global address space
(the name ``GetDefaultAddressSpaces`` gives as ``GlobalDefaultAddressSpace``, as dockerd
uses it: one pool record, a reference per host) on every daemon taking part,
and 16 clients, each on its own kept-alive connection, send RequestAddress:

- ``3 hosts``: the 16 clients spread over the three daemons (client i -> daemon i % 3);
- ``1 host`` (the baseline, same run, same store, same kind of pool): all 16 on one daemon.

Then every client releases its addresses through the daemon it got them from, and each daemon
releases its reference. Correctness, checked after every run, not assumed: no address handed out
twice across hosts; the count matches; and read back from the store itself (not through a daemon)
the pool holds exactly those addresses, each recorded for the host that handed it out; after the
releases it holds none.

    PYTHONPATH=. .venv/bin/python bench/ipam_hosts.py [--per-client 50] [--clients 16]
                                                      [--stores sqlite,etcd] [--rounds 2]

The 1-host and 3-host runs alternate within each round (order flipped every round), so a change
of machine load hits both; the table reports the median over rounds and the ratio 3 hosts / 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import machine_info, markdown_table, write_results
from bench.ipam_throughput import Daemon, _parallel
from client.transport import PluginTransport
from store.url import open_store

POOL_PREFIX = 16
HOSTS = ("h1", "h2", "h3")
ADDRS = "ipam/addrs/"


def store_addresses(url: str, pool_id: str) -> dict[str, str]:
    """Address -> host of every address record of ``pool_id``, read from the store directly."""
    store = open_store(url)
    try:
        prefix, out, after = f"{ADDRS}{pool_id}/", {}, None
        while True:
            kvs, _ = store.list(prefix, limit=1000, start_after=after)
            for kv in kvs:
                out[kv.key[len(prefix):]] = str(json.loads(kv.value).get("host", ""))
            if len(kvs) < 1000:
                return out
            after = kvs[-1].key
    finally:
        store.close()


def run(url: str, daemons: list[Daemon], clients: int, per_client: int, subnet: str) -> dict[str, float]:
    """One measured run over ``daemons``; raises if any correctness check fails."""
    socks = [str(d.plugins / "cnmkit.sock") for d in daemons]
    setups = [PluginTransport(s, 60) for s in socks]
    # As dockerd does: the space's name is what GetDefaultAddressSpaces gives for the global one.
    space = setups[0].call("IpamDriver.GetDefaultAddressSpaces", {})["GlobalDefaultAddressSpace"]
    ids = {t.call("IpamDriver.RequestPool", {"AddressSpace": space, "Pool": subnet,
                                             "Options": {}})["PoolID"] for t in setups}
    assert len(ids) == 1, f"the hosts got different pools for one global subnet: {ids}"
    pool_id = ids.pop()
    host_of = [HOSTS[i % len(daemons)] for i in range(clients)]
    conns = [PluginTransport(socks[i % len(daemons)], 60) for i in range(clients)]
    got: list[list[str]] = [[] for _ in range(clients)]

    def alloc(i: int) -> None:
        for _ in range(per_client):
            got[i].append(conns[i].call("IpamDriver.RequestAddress",
                                        {"PoolID": pool_id, "Address": "", "Options": {}})["Address"])

    def release(i: int) -> None:
        for address in got[i]:
            conns[i].call("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": address.split("/")[0]})

    n = clients * per_client
    took = _parallel(clients, alloc)
    handed = [a.split("/")[0] for g in got for a in g]
    assert len(handed) == n, f"{len(handed)} addresses handed out, {n} asked for"
    assert len(set(handed)) == n, f"{n - len(set(handed))} address(es) handed out twice"
    expected = {a.split("/")[0]: host_of[i] for i, g in enumerate(got) for a in g}
    in_store = store_addresses(url, pool_id)
    assert in_store == expected, (f"store holds {len(in_store)} addresses, clients got {n}; "
                                  f"{sum(1 for a, h in in_store.items() if expected.get(a) != h)} differ")
    release_took = _parallel(clients, release)
    for t in setups:
        t.call("IpamDriver.ReleasePool", {"PoolID": pool_id})
    left = store_addresses(url, pool_id)
    assert not left, f"{len(left)} addresses left in the store after every release"
    for c in (*conns, *setups):
        c.close()
    return {"alloc_per_s": n / took, "release_per_s": n / release_took, "n": n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-client", type=int, default=50)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--stores", default="sqlite,etcd")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    info = machine_info()
    rows: list[dict[str, object]] = []
    subnet_no = iter(range(1, 250))
    for store in args.stores.split(","):
        tmp = Path(tempfile.mkdtemp(prefix="cnmkit-bench-hosts-"))
        cluster = None
        daemons: list[Daemon] = []
        try:
            if store == "etcd":
                from tests.etcd_cluster import EtcdCluster

                cluster = EtcdCluster()
                cluster.start()
                url = cluster.url
            else:
                (tmp / "shared").mkdir()
                url = f"sqlite://{tmp / 'shared' / 'state.db'}"
            for name in HOSTS:
                (tmp / name).mkdir()
                daemons.append(Daemon(tmp / name, url, ["--host-id", name, "--advertise", "127.0.0.1",
                                                        "--no-cleanup"]))
            for rnd in range(args.rounds):
                order = (1, 3) if rnd % 2 == 0 else (3, 1)
                for hosts in order:
                    subnet = f"10.{next(subnet_no)}.0.0/{POOL_PREFIX}"
                    r = run(url, daemons[:hosts], args.clients, args.per_client, subnet)
                    rows.append({"store": store, "hosts": hosts, "round": rnd, "clients": args.clients, **r})
                    print(f"{store:6} round {rnd} {hosts} host(s), {args.clients} clients: "
                          f"{r['alloc_per_s']:7.0f} alloc/s, {r['release_per_s']:7.0f} release/s "
                          f"({r['n']:.0f} addresses, each once, store agrees)", flush=True)
        finally:
            for d in daemons:
                d.stop()
            if cluster is not None:
                cluster.stop()
            shutil.rmtree(tmp, ignore_errors=True)

    def med(store: str, hosts: int, key: str) -> float:
        return statistics.median(float(r[key]) for r in rows  # type: ignore[arg-type]
                                 if r["store"] == store and r["hosts"] == hosts)

    table = []
    for store in args.stores.split(","):
        one_a, three_a = med(store, 1, "alloc_per_s"), med(store, 3, "alloc_per_s")
        one_r, three_r = med(store, 1, "release_per_s"), med(store, 3, "release_per_s")
        table.append([store, str(args.clients), f"{one_a:.0f}", f"{three_a:.0f}", f"{three_a / one_a:.2f}",
                      f"{one_r:.0f}", f"{three_r:.0f}", f"{three_r / one_r:.2f}"])
    print()
    print(markdown_table(["store", "clients", "alloc/s 1 host", "alloc/s 3 hosts", "3 / 1",
                          "release/s 1 host", "release/s 3 hosts", "3 / 1"], table))
    info["loadavg_end"] = list(os.getloadavg())
    print(f"\nmedian of {args.rounds} round(s); load average {info['loadavg_start']} -> {info['loadavg_end']}; "
          f"git {info['git_head']}")
    print(f"results: {write_results('ipam_hosts', {'machine': info, 'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
