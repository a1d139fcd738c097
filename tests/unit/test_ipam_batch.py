"""Batched dynamic allocation: IpamService.request_addresses and the event-loop AddressBatcher."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ipam.batcher import AddressBatcher
from ipam.errors import InvalidRequest, PoolExhausted, PoolNotFound
from ipam.service import IpamService
from plugin import profile
from store.base import Cmp, Op, Store, TxnResult
from store.memory import MemoryStore
from store.sqlite import SQLiteStore

LOCAL = "cnmkit-local"


class CountingStore:
    """Counts write txns, passing everything to the real store."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.txns = 0

    def txn(self, compares: list[Cmp], ops: list[Op]) -> TxnResult:
        self.txns += 1
        return self.inner.txn(compares, ops)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CountingStore]:
    s: Store = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "state.db"))
    yield CountingStore(s)
    s.close()


def addrs(results: list[tuple[str, dict[str, str]] | Exception]) -> list[str]:
    out = []
    for r in results:
        assert not isinstance(r, Exception), r
        out.append(r[0])
    return out


def test_a_batch_is_one_txn_and_equals_sequential_allocation(store: CountingStore) -> None:
    ipam = IpamService(store, host_id="h1")  # type: ignore[arg-type]
    pool_id, _, _ = ipam.request_pool(LOCAL, "10.9.0.0/24", "", None, False)
    before = store.txns
    got = addrs(ipam.request_addresses(pool_id, [{}] * 16))
    assert store.txns - before == 1
    assert got == [f"10.9.0.{i}/24" for i in range(1, 17)]
    assert ipam.request_address(pool_id, "", None)[0] == "10.9.0.17/24"  # the cursor moved past all 16
    assert ipam.pool_usage(pool_id)["allocated"] == 17


def test_a_batch_steps_over_statics_and_keeps_them(store: CountingStore) -> None:
    ipam = IpamService(store)  # type: ignore[arg-type]
    pool_id, _, _ = ipam.request_pool(LOCAL, "10.9.0.0/24", "", None, False)
    ipam.request_address(pool_id, "10.9.0.2", None)
    ipam.request_address(pool_id, "10.9.0.4", None)
    got = addrs(ipam.request_addresses(pool_id, [{}, {"com.docker.network.endpoint.macaddress": "02:00:00:00:00:01"},
                                                 {}]))
    assert got == ["10.9.0.1/24", "10.9.0.3/24", "10.9.0.5/24"]
    ipam.release_address(pool_id, "10.9.0.4")
    # as one by one: the cursor walks the range once before released addresses are reused
    assert addrs(ipam.request_addresses(pool_id, [{}])) == ["10.9.0.6/24"]


def test_a_batch_larger_than_the_pool_serves_what_there_is(store: CountingStore) -> None:
    ipam = IpamService(store)  # type: ignore[arg-type]
    pool_id, _, _ = ipam.request_pool(LOCAL, "10.9.0.0/29", "", None, False)  # 6 usable addresses
    results = ipam.request_addresses(pool_id, [{}] * 8)
    assert addrs(results[:6]) == [f"10.9.0.{i}/29" for i in range(1, 7)]
    assert all(isinstance(r, PoolExhausted) for r in results[6:])
    ipam.release_address(pool_id, "10.9.0.3")
    ipam.release_address(pool_id, "10.9.0.5")
    results = ipam.request_addresses(pool_id, [{}] * 3)  # past the range's end: from the free set
    assert addrs(results[:2]) == ["10.9.0.3/29", "10.9.0.5/29"]
    assert isinstance(results[2], PoolExhausted)


def test_bad_entries_fail_alone(store: CountingStore) -> None:
    ipam = IpamService(store)  # type: ignore[arg-type]
    pool_id, _, _ = ipam.request_pool(LOCAL, "10.9.0.0/24", "", None, False)
    results = ipam.request_addresses(pool_id, [{}, {"x": 1}, {}])  # type: ignore[list-item]
    assert isinstance(results[1], InvalidRequest) and "Options" in str(results[1])
    assert addrs([results[0], results[2]]) == ["10.9.0.1/24", "10.9.0.2/24"]
    assert all(isinstance(r, PoolNotFound) for r in ipam.request_addresses(f"{LOCAL}/10.8.0.0/24", [{}, {}]))
    assert all(isinstance(r, InvalidRequest) for r in ipam.request_addresses("nope", [{}]))


def test_batches_and_single_calls_from_threads_never_share_an_address(store: CountingStore) -> None:
    ipam = IpamService(store)  # type: ignore[arg-type]
    pool_id, _, _ = ipam.request_pool(LOCAL, "10.9.0.0/22", "", None, False)
    got: list[str] = []
    lock = threading.Lock()

    def batches() -> None:
        for _ in range(10):
            out = addrs(ipam.request_addresses(pool_id, [{}] * 7))
            with lock:
                got.extend(out)

    def singles() -> None:
        for _ in range(20):
            out = ipam.request_address(pool_id, "", None)[0]
            with lock:
                got.append(out)

    threads = [threading.Thread(target=f) for f in (batches, batches, singles, singles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(set(got)) == 2 * 70 + 2 * 20


def test_concurrent_requests_on_one_pool_share_one_job(store: CountingStore) -> None:
    """16 requests that arrive in one turn of the loop go to the workers as one batch."""
    ipam = IpamService(store)  # type: ignore[arg-type]
    pool_id, _, _ = ipam.request_pool(LOCAL, "10.9.0.0/24", "", None, False)
    other, _, _ = ipam.request_pool(LOCAL, "10.10.0.0/24", "", None, False)
    calls: list[int] = []
    real = ipam.request_addresses

    def counted(pid: str, options: list[dict[str, str] | None]) -> list[tuple[str, dict[str, str]] | Exception]:
        calls.append(len(options))
        return real(pid, options)

    ipam.request_addresses = counted  # type: ignore[method-assign]

    async def run() -> list[str]:
        with ThreadPoolExecutor(4) as executor:
            batcher = AddressBatcher(ipam, executor)
            results = await asyncio.gather(*(batcher.request_address(pool_id, {}) for _ in range(16)),
                                           batcher.request_address(other, {}),
                                           return_exceptions=True)
            again = await batcher.request_address(pool_id, {})  # a later request starts a job of its own
            with pytest.raises(PoolNotFound):
                await batcher.request_address(f"{LOCAL}/10.11.0.0/24", {})
        return [r[0] for r in results if not isinstance(r, BaseException)] + [again[0]]

    got = asyncio.run(run())
    assert sorted(calls) == [1, 1, 1, 16]
    assert len(got) == len(set(got)) == 18


def test_a_batch_is_charged_to_every_request_in_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-call profile (issue 11 item 5) still splits a batched RequestAddress: each request
    of the batch is charged the job's hop, worker and store time."""
    monkeypatch.setattr(profile, "_OUT", str(tmp_path / "profile.jsonl"))
    ipam = IpamService(profile.wrap(MemoryStore(), "store"))
    pool_id, _, _ = ipam.request_pool(LOCAL, "10.9.0.0/24", "", None, False)

    async def one(batcher: AddressBatcher) -> profile.Record:
        rec = profile.Record("/IpamDriver.RequestAddress")
        profile._request.set(rec)                         # as the middleware does, in this task only
        await batcher.request_address(pool_id, {})
        return rec

    async def run() -> list[profile.Record]:
        with ThreadPoolExecutor(2) as executor:
            batcher = AddressBatcher(ipam, executor)
            return list(await asyncio.gather(*(one(batcher) for _ in range(3))))

    recs = asyncio.run(run())
    assert all(r.worker > 0 and r.store > 0 and r.hop > 0 for r in recs)
    assert recs[0].worker == recs[1].worker == recs[2].worker   # one job, the same for each
