"""IpamService over real store backends (memory and SQLite): protocol behaviour and concurrency."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from netaddr import IPAddress, IPNetwork

from ipam.errors import (
    AddressInUse,
    AddressOutOfPool,
    InvalidRequest,
    PoolExhausted,
    PoolNotFound,
    PoolOverlap,
)
from ipam.service import IpamService
from store.base import Cmp, Indeterminate, Op, Store, TxnResult
from store.memory import MemoryStore
from store.sqlite import SQLiteStore

LOCAL = "cnmkit-local"
GW = {"RequestAddressType": "com.docker.network.gateway"}


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "state.db"))
    yield s
    s.close()


@pytest.fixture
def ipam(store: Store) -> IpamService:
    return IpamService(store)


def pool(ipam: IpamService, cidr: str, sub: str = "", v6: bool = False, space: str = LOCAL) -> str:
    pool_id, got, data = ipam.request_pool(space, cidr, sub, None, v6)
    assert (got, data) == (cidr, {})
    return pool_id


def alloc(ipam: IpamService, pool_id: str, address: str = "", options: dict[str, str] | None = None) -> str:
    return ipam.request_address(pool_id, address, options)[0]


# -- discovery ------------------------------------------------------------------------------------

def test_capabilities_and_address_spaces(ipam: IpamService) -> None:
    assert ipam.capabilities() == {"RequiresMACAddress": False, "RequiresRequestReplay": False}
    assert ipam.default_address_spaces() == {"LocalDefaultAddressSpace": "cnmkit-local",
                                             "GlobalDefaultAddressSpace": "cnmkit-global"}


# -- RequestPool ----------------------------------------------------------------------------------

def test_request_pool_returns_readable_id_and_cidr(ipam: IpamService) -> None:
    assert ipam.request_pool(LOCAL, "10.20.0.0/24", "", {"k": "v"}, False) == (
        "cnmkit-local/10.20.0.0/24", "10.20.0.0/24", {})
    assert ipam.list_pools() == [{"pool_id": "cnmkit-local/10.20.0.0/24", "address_space": LOCAL,
                                  "pool": "10.20.0.0/24", "sub_pool": "", "v6": False, "options": {"k": "v"}}]


@pytest.mark.parametrize(("args", "field", "message"), [
    ((LOCAL, "abc", "", None, False), "Pool", "Pool: 'abc' is not a valid CIDR"),
    ((LOCAL, "10.0.0.1/24", "", None, False), "Pool",
     "Pool: '10.0.0.1/24' has host bits set (did you mean 10.0.0.0/24?)"),
    ((LOCAL, "10.0.0.0/24", "", None, True), "V6", "V6: is true but Pool 10.0.0.0/24 is IPv4"),
    ((LOCAL, "10.0.0.0/24", "10.0.1.0/25", None, False), "SubPool",
     "SubPool: 10.0.1.0/25 is not inside Pool 10.0.0.0/24"),
    ((LOCAL, "10.0.0.0/24", "zz", None, False), "SubPool", "SubPool: 'zz' is not a valid CIDR"),
    ((LOCAL, "", "10.0.0.0/25", None, False), "SubPool", "SubPool: '10.0.0.0/25' given without a Pool"),
    (("", "10.0.0.0/24", "", None, False), "AddressSpace", "AddressSpace: '' is not a valid address space"),
    (("a/b", "10.0.0.0/24", "", None, False), "AddressSpace",
     "AddressSpace: 'a/b' is not a valid address space"),
    ((LOCAL, "10.0.0.0/24", "", {"k": 1}, False), "Options", "Options: {'k': 1} is not a map of strings"),
    ((LOCAL, "10.0.0.0/24", "", None, "yes"), "V6", "V6: 'yes' is not a boolean"),
])
def test_request_pool_invalid_fields(ipam: IpamService, args: tuple, field: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        ipam.request_pool(*args)
    assert exc.value.field == field
    assert str(exc.value).startswith(message)
    assert ipam.list_pools() == []


def test_overlap_names_existing_pool_and_id(ipam: IpamService) -> None:
    pool(ipam, "10.20.0.0/24")
    with pytest.raises(PoolOverlap) as exc:
        ipam.request_pool(LOCAL, "10.20.0.0/16", "", None, False)
    assert str(exc.value) == ("pool 10.20.0.0/16 overlaps existing pool 10.20.0.0/24 "
                              "(PoolID 'cnmkit-local/10.20.0.0/24')")
    with pytest.raises(PoolOverlap, match=r"overlaps existing pool 10\.20\.0\.0/24"):
        ipam.request_pool(LOCAL, "10.20.0.0/24", "", None, False)  # the same pool twice
    # Another address space is another routing domain: the same CIDR is allowed there.
    assert pool(ipam, "10.20.0.0/24", space="cnmkit-global") == "cnmkit-global/10.20.0.0/24"


def test_predefined_pools_skip_held_and_avoided(store: Store) -> None:
    routes = [IPNetwork("0.0.0.0/0"), IPNetwork("10.200.1.0/24"), IPNetwork("fd63:6e6d:6b00::/64")]
    ipam = IpamService(store, avoid=lambda: routes)
    pool(ipam, "10.200.2.0/24")
    first = ipam.request_pool(LOCAL, "", "", None, False)
    assert first == ("cnmkit-local/10.200.0.0/24", "10.200.0.0/24", {})
    # Docker re-asks while keeping the rejected pool: it must get a different one.
    assert ipam.request_pool(LOCAL, "", "", None, False)[1] == "10.200.3.0/24"
    assert ipam.request_pool(LOCAL, "", "", None, True)[1] == "fd63:6e6d:6b00:1::/64"
    ipam.release_pool(first[0])
    assert ipam.request_pool(LOCAL, "", "", None, False)[1] == "10.200.0.0/24"


def test_release_pool_then_same_cidr_again_starts_fresh(ipam: IpamService, store: Store) -> None:
    pid = pool(ipam, "10.30.0.0/24")
    assert [alloc(ipam, pid) for _ in range(3)] == ["10.30.0.1/24", "10.30.0.2/24", "10.30.0.3/24"]
    ipam.release_address(pid, "10.30.0.2")
    ipam.release_pool(pid)
    ipam.release_pool(pid)  # idempotent
    assert store.list("ipam/addrs/")[0] == [] and store.list("ipam/free/")[0] == []
    with pytest.raises(PoolNotFound, match=r"^pool 'cnmkit-local/10\.30\.0\.0/24' not found$"):
        alloc(ipam, pid)
    assert pool(ipam, "10.30.0.0/24") == pid
    assert alloc(ipam, pid) == "10.30.0.1/24"
    assert ipam.pool_usage(pid)["allocated"] == 1


def test_leftovers_of_interrupted_release_are_purged_before_reuse(ipam: IpamService, store: Store) -> None:
    pid = pool(ipam, "10.31.0.0/24")
    for _ in range(70):  # more than one purge batch
        alloc(ipam, pid)
    ipam.release_address(pid, "10.31.0.5")
    store.delete(f"ipam/pools/{pid}")  # a daemon that died between the two steps of release_pool
    assert pool(ipam, "10.31.0.0/24") == pid
    assert alloc(ipam, pid, "10.31.0.7") == "10.31.0.7/24"
    assert alloc(ipam, pid) == "10.31.0.1/24"
    assert ipam.pool_usage(pid)["allocated"] == 2


# -- RequestAddress -------------------------------------------------------------------------------

def test_gateway_request_dynamic_and_explicit(ipam: IpamService, store: Store) -> None:
    pid = pool(ipam, "10.77.0.0/24", "10.77.0.128/25")
    assert ipam.request_address(pid, "", GW) == ("10.77.0.128/24", {})
    pid2 = pool(ipam, "10.78.0.0/24")
    assert alloc(ipam, pid2, "10.78.0.254", GW) == "10.78.0.254/24"
    assert alloc(ipam, pid2) == "10.78.0.1/24"
    assert ipam.pool_usage(pid2)["by_kind"] == {"gateway": 1, "endpoint": 1}


def test_sub_pool_allocation_stays_in_range_while_aux_outside_is_granted(ipam: IpamService) -> None:
    pid = pool(ipam, "10.77.0.0/24", "10.77.0.240/28")
    assert alloc(ipam, pid, "10.77.0.9") == "10.77.0.9/24"  # aux, outside the range
    got = [alloc(ipam, pid) for _ in range(15)]
    assert got == [f"10.77.0.{i}/24" for i in range(240, 255)]
    with pytest.raises(PoolExhausted) as exc:
        alloc(ipam, pid)
    assert str(exc.value) == "pool 10.77.0.0/24 (PoolID 'cnmkit-local/10.77.0.0/24'): no free address left"
    usage = ipam.pool_usage(pid)
    assert usage["by_kind"] == {"aux": 1, "endpoint": 15}
    assert (usage["capacity"], usage["range_capacity"]) == (254, 15)
    ipam.release_address(pid, "10.77.0.9")  # an out-of-range release must not feed the free set
    with pytest.raises(PoolExhausted):
        alloc(ipam, pid)


def test_address_errors_name_address_and_pool(ipam: IpamService) -> None:
    pid = pool(ipam, "10.40.0.0/24")
    alloc(ipam, pid, "10.40.0.9")
    with pytest.raises(AddressInUse) as exc:
        alloc(ipam, pid, "10.40.0.9")
    assert str(exc.value) == "address 10.40.0.9 is already allocated in pool 'cnmkit-local/10.40.0.0/24'"
    with pytest.raises(AddressOutOfPool, match=r"^address 10\.41\.0\.9 is not inside pool 10\.40\.0\.0/24$"):
        alloc(ipam, pid, "10.41.0.9")
    with pytest.raises(AddressOutOfPool, match=r"^address fd00::1 is not inside pool 10\.40\.0\.0/24$"):
        alloc(ipam, pid, "fd00::1")
    with pytest.raises(AddressOutOfPool, match=r"^address 10\.40\.0\.255 is the broadcast address of pool"):
        alloc(ipam, pid, "10.40.0.255")
    with pytest.raises(InvalidRequest, match=r"^Address: '10\.0\.0\.300' is not a valid IP address$"):
        alloc(ipam, pid, "10.0.0.300")
    with pytest.raises(InvalidRequest, match=r"^PoolID: 'nope' is not a PoolID of this driver$"):
        alloc(ipam, "nope")
    with pytest.raises(InvalidRequest, match=r"^Options: "):
        alloc(ipam, pid, "", {"RequestAddressType": None})  # type: ignore[dict-item]
    with pytest.raises(PoolNotFound, match=r"^pool 'cnmkit-local/10\.99\.0\.0/24' not found$"):
        alloc(ipam, "cnmkit-local/10.99.0.0/24")
    assert ipam.pool_usage(pid)["allocated"] == 1


def test_mac_is_recorded_with_the_endpoint(ipam: IpamService, store: Store) -> None:
    pid = pool(ipam, "10.42.0.0/24")
    mac = {"com.docker.network.endpoint.macaddress": "02:42:fd:04:34:68"}
    assert alloc(ipam, pid, "10.42.0.8", mac) == "10.42.0.8/24"
    kv = store.get(f"ipam/addrs/{pid}/10.42.0.8")
    assert kv is not None and b'"mac":"02:42:fd:04:34:68"' in kv.value and b'"kind":"endpoint"' in kv.value


def test_fill_a_22_completely_then_exhausted(ipam: IpamService) -> None:
    pid = pool(ipam, "10.50.0.0/22")
    got = [alloc(ipam, pid) for _ in range(1022)]
    assert len(set(got)) == 1022
    assert got[0] == "10.50.0.1/22" and got[-1] == "10.50.3.254/22"
    assert all(IPAddress(a.split("/")[0]) in IPNetwork("10.50.0.0/22") for a in got)
    with pytest.raises(PoolExhausted, match=r"10\.50\.0\.0/22.*no free address left"):
        alloc(ipam, pid)
    assert ipam.pool_usage(pid)["allocated"] == 1022


def test_released_addresses_are_reused_after_the_cursor_ends(ipam: IpamService) -> None:
    pid = pool(ipam, "10.60.0.0/29")  # .1 .. .6
    assert [alloc(ipam, pid) for _ in range(3)] == ["10.60.0.1/29", "10.60.0.2/29", "10.60.0.3/29"]
    ipam.release_address(pid, "10.60.0.2")
    # Fresh addresses first (a just-released IP is not handed to the next container at once).
    assert [alloc(ipam, pid) for _ in range(3)] == ["10.60.0.4/29", "10.60.0.5/29", "10.60.0.6/29"]
    assert alloc(ipam, pid) == "10.60.0.2/29"
    ipam.release_address(pid, "10.60.0.5")
    ipam.release_address(pid, "10.60.0.1")
    assert [alloc(ipam, pid) for _ in range(2)] == ["10.60.0.1/29", "10.60.0.5/29"]  # lowest first
    with pytest.raises(PoolExhausted):
        alloc(ipam, pid)


def test_static_ahead_of_cursor_is_skipped_and_behind_leaves_free_set(ipam: IpamService, store: Store
                                                                      ) -> None:
    pid = pool(ipam, "10.61.0.0/29")
    assert alloc(ipam, pid, "10.61.0.2") == "10.61.0.2/29"
    assert alloc(ipam, pid, "10.61.0.3") == "10.61.0.3/29"
    assert [alloc(ipam, pid) for _ in range(2)] == ["10.61.0.1/29", "10.61.0.4/29"]
    ipam.release_address(pid, "10.61.0.1")  # behind the cursor: joins the free set
    assert alloc(ipam, pid, "10.61.0.1") == "10.61.0.1/29"  # static takes it back out
    assert store.list("ipam/free/")[0] == []
    assert [alloc(ipam, pid) for _ in range(2)] == ["10.61.0.5/29", "10.61.0.6/29"]
    with pytest.raises(PoolExhausted):
        alloc(ipam, pid)
    assert ipam.pool_usage(pid)["allocated"] == 6


def test_long_run_of_statics_is_stepped_over_in_bounded_txns(ipam: IpamService, store: Store) -> None:
    pid = pool(ipam, "10.63.0.0/24")
    for i in range(1, 101):  # more than MAX_SKIP statics ahead of the cursor
        alloc(ipam, pid, f"10.63.0.{i}")
    assert alloc(ipam, pid) == "10.63.0.101/24"
    ipam.release_address(pid, "10.63.0.50")  # now behind the cursor: reusable once the range is walked
    assert len([alloc(ipam, pid) for _ in range(153)]) == 153
    assert alloc(ipam, pid) == "10.63.0.50/24"
    with pytest.raises(PoolExhausted):
        alloc(ipam, pid)


def test_release_unknown_is_success_but_garbage_is_rejected(ipam: IpamService) -> None:
    pid = pool(ipam, "10.62.0.0/24")
    ipam.release_address(pid, "10.62.0.1")  # never requested (a gateway from pool Data)
    ipam.release_address(pid, "10.99.0.1")  # not even in the pool
    ipam.release_address("cnmkit-local/10.99.0.0/24", "10.99.0.1")  # unknown pool
    with pytest.raises(InvalidRequest, match=r"^Address: 'x' is not a valid IP address$"):
        ipam.release_address(pid, "x")
    assert alloc(ipam, pid) == "10.62.0.1/24"


def test_ipv6_64_works_and_120_fills(ipam: IpamService) -> None:
    big = pool(ipam, "fd00:1::/64", v6=True)
    assert alloc(ipam, big) == "fd00:1::1/64"
    assert alloc(ipam, big, "fd00:1::ffff:ffff:ffff:fffe") == "fd00:1::ffff:ffff:ffff:fffe/64"
    assert alloc(ipam, big) == "fd00:1::2/64"
    assert ipam.pool_usage(big)["capacity"] == 2**64 - 1
    small = pool(ipam, "fd00:2::/120", v6=True)
    got = [alloc(ipam, small) for _ in range(255)]
    assert got[0] == "fd00:2::1/120" and got[-1] == "fd00:2::ff/120" and len(set(got)) == 255
    with pytest.raises(PoolExhausted, match=r"fd00:2::/120"):
        alloc(ipam, small)
    ipam.release_address(small, "fd00:2::80")
    assert alloc(ipam, small) == "fd00:2::80/120"


# -- concurrency ----------------------------------------------------------------------------------

def _race(workers: Sequence[Callable[[], list[str]]]) -> list[str]:
    results: list[list[str]] = [[] for _ in workers]
    errors: list[BaseException] = []
    start = threading.Barrier(len(workers))

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = workers[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return [a for r in results for a in r]


def _churn(ipam: IpamService, pid: str, n: int) -> Callable[[], list[str]]:
    """Allocate n addresses, releasing every third one right away (exercises the free set too)."""
    def work() -> list[str]:
        kept = []
        for i in range(n):
            addr = alloc(ipam, pid)
            if i % 3 == 2:
                ipam.release_address(pid, addr.split("/")[0])
            else:
                kept.append(addr)
        return kept
    return work


def test_eight_threads_get_no_duplicate(ipam: IpamService) -> None:
    pid = pool(ipam, "10.70.0.0/26")  # 62 addresses: the cursor ends and the free set is used
    got = _race([_churn(ipam, pid, 9) for _ in range(8)])
    assert len(got) == 48 and len(set(got)) == 48
    assert ipam.pool_usage(pid)["allocated"] == 48


def test_two_hosts_on_one_sqlite_file_get_no_duplicate(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    host_a, host_b = SQLiteStore(path), SQLiteStore(path)
    try:
        a, b = IpamService(host_a), IpamService(host_b)
        pid = pool(a, "10.71.0.0/26")
        with pytest.raises(PoolOverlap):
            b.request_pool(LOCAL, "10.71.0.0/24", "", None, False)  # b sees a's pool
        got = _race([_churn(a, pid, 9), _churn(b, pid, 9)] * 3)
        assert len(got) == 36 and len(set(got)) == 36
        assert b.pool_usage(pid)["allocated"] == 36
    finally:
        host_a.close()
        host_b.close()


def test_concurrent_overlapping_pools_only_one_wins(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    stores = [SQLiteStore(path) for _ in range(4)]
    try:
        outcomes: list[str] = []

        def make(svc: IpamService, cidr: str) -> Callable[[], list[str]]:
            def work() -> list[str]:
                try:
                    return [svc.request_pool(LOCAL, cidr, "", None, False)[0]]
                except PoolOverlap:
                    outcomes.append("overlap")
                    return []
            return work

        cidrs = ["10.72.0.0/16", "10.72.1.0/24", "10.72.0.0/24", "10.72.128.0/17"]
        won = _race([make(IpamService(s), c) for s, c in zip(stores, cidrs, strict=True)])
        assert len(won) + len(outcomes) == 4
        nets = [IPNetwork(p.split("/", 1)[1]) for p in won]
        for i, n in enumerate(nets):
            for m in nets[i + 1:]:
                assert n.last < m.first or m.last < n.first, (n, m)
    finally:
        for s in stores:
            s.close()


class Interleave:
    """Wraps a store and runs ``hook`` once, right after the first read matching ``when``.

    It pins down the interleaving a race needs (another host writing between our read and our
    txn) instead of hoping threads produce it.
    """

    def __init__(self, inner: Store, when: Callable[[str], bool], hook: Callable[[], object]) -> None:
        self.inner = inner
        self.when = when
        self.hook: Callable[[], object] | None = hook

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def _maybe(self, key: str) -> None:
        if self.hook is not None and self.when(key):
            hook, self.hook = self.hook, None
            hook()

    def get(self, key: str) -> object:
        kv = self.inner.get(key)
        self._maybe(key)
        return kv

    def list(self, prefix: str, **kw: object) -> object:
        out = self.inner.list(prefix, **kw)  # type: ignore[arg-type]
        self._maybe(prefix)
        return out


def test_static_sneaking_in_before_dynamic_commit_is_not_overwritten(store: Store) -> None:
    other = IpamService(store)
    pid = pool(other, "10.73.0.0/24")
    won: list[str] = []
    racing = Interleave(store, lambda k: k.endswith("/10.73.0.1"),
                        lambda: won.append(alloc(other, pid, "10.73.0.1")))
    mine = IpamService(racing)  # type: ignore[arg-type]
    assert alloc(mine, pid) == "10.73.0.2/24"
    assert won == ["10.73.0.1/24"]
    assert other.pool_usage(pid)["by_kind"] == {"aux": 1, "endpoint": 1}


def test_overlapping_pool_created_between_check_and_commit_is_refused(store: Store) -> None:
    other = IpamService(store)
    racing = Interleave(store, lambda k: k == "ipam/pools/",
                        lambda: pool(other, "10.74.0.0/24"))
    mine = IpamService(racing)  # type: ignore[arg-type]
    with pytest.raises(PoolOverlap, match=r"overlaps existing pool 10\.74\.0\.0/24"):
        mine.request_pool(LOCAL, "10.74.0.0/16", "", None, False)
    assert [p["pool"] for p in other.list_pools()] == ["10.74.0.0/24"]


def test_predefined_pool_taken_between_choice_and_commit_is_not_handed_twice(store: Store) -> None:
    other = IpamService(store)
    racing = Interleave(store, lambda k: k == "ipam/pools/",
                        lambda: other.request_pool(LOCAL, "", "", None, False))
    mine = IpamService(racing)  # type: ignore[arg-type]
    assert mine.request_pool(LOCAL, "", "", None, False)[1] == "10.200.1.0/24"
    assert sorted(p["pool"] for p in other.list_pools()) == ["10.200.0.0/24", "10.200.1.0/24"]


def test_release_racing_the_cursor_past_a_static_does_not_leak_it(store: Store) -> None:
    """A static ahead of the cursor is released while the cursor steps over it: it must stay usable."""
    other = IpamService(store)
    pid = pool(other, "10.75.0.0/29")  # .1 .. .6
    alloc(other, pid, "10.75.0.1")
    racing = Interleave(store, lambda k: k.endswith("/10.75.0.1"),
                        lambda: other.release_address(pid, "10.75.0.1"))
    mine = IpamService(racing)  # type: ignore[arg-type]
    got = [alloc(mine, pid) for _ in range(6)]
    assert sorted(got) == sorted(f"10.75.0.{i}/29" for i in range(1, 7))
    with pytest.raises(PoolExhausted):
        alloc(mine, pid)


# -- indeterminate commits ------------------------------------------------------------------------

class FlakyCommit:
    """Wraps a store: the next txn raises Indeterminate, after applying it (``applied``) or not."""

    def __init__(self, inner: Store, applied: bool) -> None:
        self.inner = inner
        self.applied = applied
        self.armed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def txn(self, compares: Sequence[Cmp], ops: Sequence[Op]) -> TxnResult:
        if self.armed:
            self.armed = False
            if self.applied:
                self.inner.txn(compares, ops)
            raise Indeterminate("commit timed out")
        return self.inner.txn(compares, ops)


@pytest.mark.parametrize("applied", [True, False])
def test_indeterminate_commit_is_settled_by_reading_back(store: Store, applied: bool) -> None:
    flaky = FlakyCommit(store, applied)
    ipam = IpamService(flaky)  # type: ignore[arg-type]
    pid = pool(ipam, "10.80.0.0/24")
    flaky.armed = True
    assert alloc(ipam, pid) == "10.80.0.1/24"
    flaky.armed = True
    assert alloc(ipam, pid, "10.80.0.50") == "10.80.0.50/24"
    assert alloc(ipam, pid) == "10.80.0.2/24"
    assert ipam.pool_usage(pid)["allocated"] == 3
