"""Store round trips of the endpoint lifecycle, and what the record caches must never get wrong.

The manager and IPAM keep the records they last read or wrote (drivers/record_cache.py, the
pool and address caches of ipam/service.py) so that dockerd's calls cost their writes only
(issue 11 item 1, issue 8 item 8). The counts below are the claim; the other tests are the
reasons a cache is allowed at all: every write made from a cached record compares its revision,
so a record another daemon or host changed or deleted is neither overwritten nor resurrected,
and no address is handed out twice. Two services or managers on one store stand for two daemons.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from netaddr import IPNetwork

from drivers.base import EndpointSpec, IPAMData, JoinRequest, NetworkSpec
from drivers.errors import NotFound
from drivers.manager import NetworkManager
from drivers.null import NullDriver
from ipam.service import ADDRS, IpamService
from store import records
from store.base import KV, Cmp, Op, Store, TxnResult
from store.memory import MemoryStore
from store.records import EndpointRecord
from store.sqlite import SQLiteStore

LOCAL, GLOBAL = "cnmkit-local", "cnmkit-global"
NID, EID = "a" * 64, "e" * 64


class Counting:
    """Counts the round trips a caller makes: gets, lists and write txns."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def get(self, key: str) -> KV | None:
        self.calls.append("get")
        return self.inner.get(key)

    def list(self, prefix: str, **kw: Any) -> tuple[builtins.list[KV], int]:
        self.calls.append("list")
        return self.inner.list(prefix, **kw)

    def txn(self, compares: Sequence[Cmp], ops: Sequence[Op]) -> TxnResult:
        self.calls.append("txn")
        return self.inner.txn(compares, ops)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def take(self) -> builtins.list[str]:
        out, self.calls = self.calls, []
        return out


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "state.db"))
    yield s
    s.close()


def managed(store: Store, fn: Callable[[NetworkManager], Any], host: str = "h1") -> Any:
    """Run ``fn(manager)`` (its coroutines awaited in order) on a fresh manager: a daemon's life."""
    async def go() -> Any:
        with ThreadPoolExecutor(max_workers=2) as pool:
            driver = NullDriver()
            return await fn(NetworkManager(store, {driver.name: driver}, pool, host_id=host))

    return asyncio.run(go())


def network(nid: str = NID) -> NetworkSpec:
    return NetworkSpec(network_id=nid, ipv4=(IPAMData(pool=IPNetwork("10.30.0.0/24"), address_space=LOCAL),))


def endpoint(eid: str = EID, nid: str = NID) -> EndpointSpec:
    return EndpointSpec(network_id=nid, endpoint_id=eid, address=IPNetwork("10.30.0.5/24"))


def join(eid: str = EID, nid: str = NID) -> JoinRequest:
    return JoinRequest(network_id=nid, endpoint_id=eid, sandbox_key="/var/run/docker/netns/x")


def test_the_lifecycle_costs_one_round_trip_per_write_and_none_for_reads(store: Store) -> None:
    counting = Counting(store)

    async def life(m: NetworkManager) -> dict[str, list[str]]:
        await m.create_network("cnmkit-null", network())
        counting.take()
        out = {}
        await m.create_endpoint(endpoint())
        out["CreateEndpoint"] = counting.take()
        await m.join(join())
        out["Join"] = counting.take()
        await m.endpoint_info(NID, EID)
        out["EndpointOperInfo"] = counting.take()
        await m.leave(NID, EID)
        out["Leave"] = counting.take()
        await m.delete_endpoint(NID, EID)
        out["DeleteEndpoint"] = counting.take()
        return out

    trips = managed(counting, life)  # type: ignore[arg-type]
    assert trips == {"CreateEndpoint": ["txn"], "Join": ["txn"], "EndpointOperInfo": [],
                     "Leave": ["txn"], "DeleteEndpoint": ["txn"]}
    assert store.get(records.endpoint_key(NID, EID)) is None


def test_a_restarted_daemon_reads_what_its_cache_lacks_and_a_retried_create_answers_the_same(
        store: Store) -> None:
    async def first(m: NetworkManager) -> str:
        await m.create_network("cnmkit-null", network())
        return (await m.create_endpoint(endpoint())).mac

    mac = managed(store, first)

    async def second(m: NetworkManager) -> tuple[str, dict[str, object]]:
        again = await m.create_endpoint(endpoint())     # dockerd retried after the restart
        await m.join(join())
        return again.mac, await m.endpoint_info(NID, EID)

    again, _ = managed(store, second)
    assert again == mac
    rec = EndpointRecord.decode(store.get(records.endpoint_key(NID, EID)).value)  # type: ignore[union-attr]
    assert rec.sandbox == join().sandbox_key and rec.mac == mac


def test_a_change_another_daemon_made_is_kept_by_join_and_leave(store: Store) -> None:
    """The cached revision is stale: Join's CAS fails, and the read-modify-CAS keeps their change."""
    key = records.endpoint_key(NID, EID)

    async def life(m: NetworkManager) -> None:
        await m.create_network("cnmkit-null", network())
        await m.create_endpoint(endpoint())
        kv = store.get(key)
        assert kv is not None
        theirs = replace(EndpointRecord.decode(kv.value), extra={"Theirs": 1})  # another daemon's write
        assert store.cas(key, theirs.encode(), kv.mod_rev).succeeded
        await m.join(join())
        assert records.decode(store.get(key).value)["Theirs"] == 1  # type: ignore[union-attr]
        assert EndpointRecord.decode(store.get(key).value).sandbox  # type: ignore[union-attr]
        await m.leave(NID, EID)
        await m.join(join())                              # the cache follows the store again
        assert EndpointRecord.decode(store.get(key).value).sandbox  # type: ignore[union-attr]

    managed(store, life)


def test_a_network_another_host_deleted_gets_no_endpoint_from_a_cached_record(store: Store) -> None:
    async def life(m: NetworkManager) -> None:
        await m.create_network("cnmkit-null", network())
        store.delete(records.network_key(NID))            # another host's `network rm`, unseen here
        with pytest.raises(NotFound, match="not found"):
            await m.create_endpoint(endpoint())

    managed(store, life)
    assert store.list(records.ENDPOINTS)[0] == []


def test_a_network_made_again_under_the_same_id_is_checked_again(store: Store) -> None:
    """Deleted and re-created elsewhere with another subnet: the create compares the network's
    revision, fails, re-reads and judges the address against the new subnet."""
    async def life(m: NetworkManager) -> None:
        await m.create_network("cnmkit-null", network())
        other = replace(network(), ipv4=(IPAMData(pool=IPNetwork("10.31.0.0/24"), address_space=LOCAL),))
        store.delete(records.network_key(NID))
        store.put(records.network_key(NID), records.NetworkRecord(driver="cnmkit-null", spec=other).encode())
        with pytest.raises(Exception, match="outside the subnets"):
            await m.create_endpoint(endpoint())

    managed(store, life)
    assert store.list(records.ENDPOINTS)[0] == []


# -- IPAM ---------------------------------------------------------------------------------------

def test_an_allocation_and_a_release_are_one_txn_each(store: Store) -> None:
    counting = Counting(store)
    ipam = IpamService(counting, host_id="h1")  # type: ignore[arg-type]
    pool_id, _, _ = ipam.request_pool(LOCAL, "10.32.0.0/24", "", None, False)
    ipam.request_addresses(pool_id, [None])                 # warms the pool's cache
    counting.take()
    (got,) = ipam.request_addresses(pool_id, [None])
    assert counting.take() == ["txn"]
    assert not isinstance(got, Exception) and got[0] == "10.32.0.2/24"
    ipam.release_address(pool_id, "10.32.0.2")
    assert counting.take() == ["txn"]
    assert store.get(f"{ADDRS}{LOCAL}@h1/10.32.0.0/24/10.32.0.2") is None


def test_a_given_address_is_one_txn_and_one_more_to_take_it_from_the_free_set(store: Store) -> None:
    counting = Counting(store)
    ipam = IpamService(counting, host_id="h1")  # type: ignore[arg-type]
    pool_id, _, _ = ipam.request_pool(LOCAL, "10.36.0.0/24", "", None, False)
    assert [r[0] for r in ipam.request_addresses(pool_id, [None] * 3)] == [  # type: ignore[index]
        "10.36.0.1/24", "10.36.0.2/24", "10.36.0.3/24"]
    ipam.release_address(pool_id, "10.36.0.2")          # below the cursor: into the free set
    counting.take()
    assert ipam.request_address(pool_id, "10.36.0.9", None)[0] == "10.36.0.9/24"
    assert counting.take() == ["txn"]
    assert ipam.request_address(pool_id, "10.36.0.2", None)[0] == "10.36.0.2/24"
    assert counting.take() == ["txn", "txn"]             # the first one learns the free entry
    assert store.list(f"ipam/free/{LOCAL}@h1/10.36.0.0/24/")[0] == []
    assert [r[0] for r in ipam.request_addresses(pool_id, [None])] == ["10.36.0.4/24"]  # type: ignore[index]


def test_a_static_ahead_of_the_cursor_is_stepped_over_not_overwritten(store: Store) -> None:
    """Another daemon takes the next address statically: the unread create fails, the walk finds it."""
    mine, theirs = IpamService(store, host_id="h1"), IpamService(store, host_id="h1")
    pool_id, _, _ = mine.request_pool(LOCAL, "10.33.0.0/24", "", None, False)
    assert mine.request_address(pool_id, "", None)[0] == "10.33.0.1/24"
    assert theirs.request_address(pool_id, "10.33.0.2", None)[0] == "10.33.0.2/24"
    assert [r[0] for r in mine.request_addresses(pool_id, [None, None])] == ["10.33.0.3/24", "10.33.0.4/24"]  # type: ignore[index]
    with pytest.raises(Exception, match="already allocated"):
        theirs.request_address(pool_id, "10.33.0.3", None)
    static = store.get(f"{ADDRS}{LOCAL}@h1/10.33.0.0/24/10.33.0.2")
    assert static is not None and records.decode(static.value)["kind"] == "aux"


def test_two_hosts_on_a_shared_pool_never_get_one_address_twice(store: Store) -> None:
    """Each host's cached pool is stale after the other's allocation: the pool compare catches it."""
    h1, h2 = IpamService(store, host_id="h1"), IpamService(store, host_id="h2")
    pool_id, _, _ = h1.request_pool(GLOBAL, "10.34.0.0/24", "", None, False)
    h2.request_pool(GLOBAL, "10.34.0.0/24", "", None, False)
    got = []
    for i in range(20):
        svc = (h1, h2)[i % 2]
        (res,) = svc.request_addresses(pool_id, [None])
        assert not isinstance(res, Exception)
        got.append(res[0])
    assert len(set(got)) == 20
    h1.release_address(pool_id, got[0].split("/")[0])
    h2.release_address(pool_id, got[0].split("/")[0])  # h1's address: h2 lets it be
    assert store.get(f"{ADDRS}{GLOBAL}/10.34.0.0/24/{got[2].split('/')[0]}") is not None


def test_a_shared_pool_is_read_afresh_not_raced_with_a_stale_copy(store: Store) -> None:
    """Another host's allocation moved the shared pool: one read and one txn, no failed txn."""
    counting = Counting(store)
    h1, h2 = IpamService(counting, host_id="h1"), IpamService(store, host_id="h2")  # type: ignore[arg-type]
    pool_id, _, _ = h1.request_pool(GLOBAL, "10.37.0.0/24", "", None, False)
    h2.request_pool(GLOBAL, "10.37.0.0/24", "", None, False)
    h1.request_addresses(pool_id, [None])
    h2.request_addresses(pool_id, [None])
    counting.take()
    assert [r[0] for r in h1.request_addresses(pool_id, [None])] == ["10.37.0.3/24"]  # type: ignore[index]
    assert counting.take() == ["get", "txn"]
    h2.request_address(pool_id, "10.37.0.9", None)
    assert h1.request_address(pool_id, "10.37.0.10", None)[0] == "10.37.0.10/24"
    assert counting.take() == ["get", "txn"]


def test_a_release_from_a_stale_cache_frees_nothing_that_another_host_holds_now(store: Store) -> None:
    """h1 allocated X (its cache holds X's revision); another daemon of h1 released X and h2 took
    it: h1's release compares the old revision, fails, reads, and finds X is h2's."""
    h1, h1_other, h2 = (IpamService(store, host_id=h) for h in ("h1", "h1", "h2"))
    pool_id, _, _ = h1.request_pool(GLOBAL, "10.35.0.0/24", "", None, False)
    h2.request_pool(GLOBAL, "10.35.0.0/24", "", None, False)
    (res,) = h1.request_addresses(pool_id, [None])
    assert not isinstance(res, Exception)
    x = res[0].split("/")[0]
    h1_other.release_address(pool_id, x)
    assert h2.request_address(pool_id, x, None)[0] == res[0]
    h1.release_address(pool_id, x)
    held = store.get(f"{ADDRS}{GLOBAL}/10.35.0.0/24/{x}")
    assert held is not None and records.decode(held.value)["host"] == "h2"
