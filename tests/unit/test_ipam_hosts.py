"""IPAM shared by several hosts on one store (issue 7, item 4), on memory and SQLite.

Two ``IpamService`` objects with different host ids stand for two daemons: the store is the only
thing they share, as two processes on one SQLite file or two hosts on etcd would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipam.errors import AddressInUse, PoolExhausted, PoolNotFound, PoolOverlap
from ipam.service import IpamService
from store import records
from store.base import Cmp, Store
from store.memory import MemoryStore
from store.sqlite import SQLiteStore

LOCAL, GLOBAL = "cnmkit-local", "cnmkit-global"
GW = {"RequestAddressType": "com.docker.network.gateway"}


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "state.db"))
    yield s
    s.close()


@pytest.fixture
def hosts(store: Store) -> tuple[IpamService, IpamService]:
    return IpamService(store, host_id="h1"), IpamService(store, host_id="h2")


def ips(ipam: IpamService, pool_id: str, n: int) -> list[str]:
    return [ipam.request_address(pool_id, "", None)[0] for _ in range(n)]


def test_global_pool_is_one_pool_with_a_reference_per_host(hosts: tuple[IpamService, IpamService],
                                                           store: Store) -> None:
    h1, h2 = hosts
    pid = h1.request_pool(GLOBAL, "10.70.0.0/24", "", None, False)[0]
    assert h2.request_pool(GLOBAL, "10.70.0.0/24", "", None, False)[0] == pid  # was PoolOverlap
    with pytest.raises(PoolOverlap):
        h2.request_pool(GLOBAL, "10.70.0.0/24", "", None, False)  # a second network of h2 on it
    with pytest.raises(PoolOverlap):
        IpamService(store, host_id="h3").request_pool(GLOBAL, "10.70.0.0/24", "10.70.0.0/25", None, False)
    with pytest.raises(PoolOverlap):
        IpamService(store, host_id="h3").request_pool(GLOBAL, "10.70.0.0/25", "", None, False)
    assert h1.list_pools()[0]["hosts"] == ["h1", "h2"]
    # Both allocate from the one pool: no address twice.
    a1, a2 = ips(h1, pid, 3), ips(h2, pid, 3)
    assert len(set(a1 + a2)) == 6
    # The gateway is shared, not refused as in use; asked twice by one host it is in use.
    assert h1.request_address(pid, "10.70.0.254", GW)[0] == "10.70.0.254/24"
    assert h2.request_address(pid, "10.70.0.254", GW)[0] == "10.70.0.254/24"
    with pytest.raises(AddressInUse):
        h2.request_address(pid, "10.70.0.254", GW)
    # Another host's release of one of h1's addresses does nothing; neither does its pool release.
    h2.release_address(pid, a1[0].split("/")[0])
    with pytest.raises(AddressInUse):
        h1.request_address(pid, a1[0].split("/")[0], None)
    h2.release_address(pid, "10.70.0.254")  # h2 lets go of the shared gateway, h1 keeps it
    h2.release_pool(pid)
    assert h1.pool_usage(pid)["allocated"] == 4  # h1's three and the gateway
    assert h1.list_pools()[0]["hosts"] == ["h1"]
    for addr in a2:  # h2's addresses went with its reference, and are reusable
        assert h1.request_address(pid, addr.split("/")[0], None)[0] == addr
    h1.release_pool(pid)  # the last reference: the pool and everything in it go
    with pytest.raises(PoolNotFound):
        h1.pool_usage(pid)
    assert store.list("ipam/addrs/")[0] == []


def test_local_pools_are_per_host_and_avoid_global_ones(hosts: tuple[IpamService, IpamService]) -> None:
    h1, h2 = hosts
    p1 = h1.request_pool(LOCAL, "10.71.0.0/24", "", None, False)[0]
    p2 = h2.request_pool(LOCAL, "10.71.0.0/24", "", None, False)[0]
    assert p1 == p2 == "cnmkit-local/10.71.0.0/24"  # the PoolID Docker sees; two pools in the store
    assert ips(h1, p1, 1) == ips(h2, p2, 1) == ["10.71.0.1/24"]
    assert [p["pool_id"] for p in h1.list_pools()] == [p1]
    h1.request_pool(GLOBAL, "10.72.0.0/24", "", None, False)
    with pytest.raises(PoolOverlap):
        h2.request_pool(LOCAL, "10.72.0.128/25", "", None, False)
    # Predefined pools: a global one avoids every host's local pools.
    auto = h1.request_pool(GLOBAL, "", "", None, False)[1]
    assert auto not in ("10.71.0.0/24", "10.72.0.0/24")
    h1.release_pool(p1)
    assert ips(h2, p2, 1) == ["10.71.0.2/24"], "h1's release left h2's own pool alone"


def test_reclaim_only_while_the_host_is_absent(hosts: tuple[IpamService, IpamService], store: Store) -> None:
    h1, h2 = hosts
    pid = h1.request_pool(GLOBAL, "10.73.0.0/28", "", None, False)[0]
    h2.request_pool(GLOBAL, "10.73.0.0/28", "", None, False)
    local = h2.request_pool(LOCAL, "10.74.0.0/24", "", None, False)[0]
    mine, theirs = ips(h1, pid, 2), ips(h2, pid, 2)
    ips(h2, local, 1)
    assert h1.hosts_holding() == {"h1", "h2"}
    alive = store.put(records.host_key("h2"), b"{}")
    assert h1.reclaim_host("h2", [Cmp(records.host_key("h2"), 0)]) == []  # h2 is back (its record exists): nothing
    assert h1.pool_usage(pid)["allocated"] == 4
    store.delete(records.host_key("h2"), expect_mod_rev=alive)
    assert sorted(h1.reclaim_host("h2", [Cmp(records.host_key("h2"), 0)])) == [pid, local]
    assert h1.pool_usage(pid)["allocated"] == 2
    assert h1.list_pools()[0]["hosts"] == ["h1"]
    assert [h1.request_address(pid, a.split("/")[0], None)[0] for a in theirs] == theirs
    assert h1.hosts_holding() == {"h1"}
    assert store.list("ipam/pools/cnmkit-local@h2/")[0] == []
    assert mine


def test_two_hosts_exhaust_a_small_global_pool_exactly(hosts: tuple[IpamService, IpamService]) -> None:
    h1, h2 = hosts
    pid = h1.request_pool(GLOBAL, "10.75.0.0/28", "", None, False)[0]
    h2.request_pool(GLOBAL, "10.75.0.0/28", "", None, False)
    got: list[str] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def client(ipam: IpamService) -> None:
        while True:
            try:
                addr = ipam.request_address(pid, "", None)[0]
            except PoolExhausted:
                return
            except BaseException as exc:  # reported below
                failures.append(exc)
                return
            with lock:
                got.append(addr)

    threads = [threading.Thread(target=client, args=(h1 if i % 2 else h2,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(got) == len(set(got)) == 14


def test_local_pools_from_before_host_ids_are_still_found(store: Store) -> None:
    legacy = IpamService(store)  # a store written by a daemon without a host id
    pid = legacy.request_pool(LOCAL, "10.76.0.0/24", "", None, False)[0]
    held = ips(legacy, pid, 1)
    upgraded = IpamService(store, host_id="h1")
    assert [p["pool_id"] for p in upgraded.list_pools()] == [pid]
    assert ips(upgraded, pid, 1) == ["10.76.0.2/24"]
    with pytest.raises(AddressInUse):
        upgraded.request_address(pid, held[0].split("/")[0], None)
    with pytest.raises(PoolOverlap):
        upgraded.request_pool(LOCAL, "10.76.0.0/24", "", None, False)
    upgraded.release_address(pid, held[0].split("/")[0])
    upgraded.release_pool(pid)
    assert store.list("ipam/")[0] == [] or all(not kv.key.startswith(("ipam/pools/", "ipam/addrs/"))
                                               for kv in store.list("ipam/")[0])
