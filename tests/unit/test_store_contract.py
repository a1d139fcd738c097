"""One behavioural contract, run against every store backend.

Callers (IPAM, the network manager, the daemon) are written against ``store.base.Store`` only;
this suite is what makes backends interchangeable. To add a backend, add one entry to
``BACKENDS``: a function from pytest's ``tmp_path`` to an open store.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from store.base import (
    KV,
    MAX_TXN_OPS,
    MAX_VALUE,
    Cmp,
    Compacted,
    Delete,
    Event,
    LeaseNotFound,
    Put,
    Store,
    TooLarge,
    check_limits,
)
from store.etcd import EtcdStore
from store.memory import MemoryStore
from store.records import TxnBuilder, get_json, list_json, update_json
from store.sqlite import SQLiteStore
from store.url import open_store
from tests.etcd_cluster import EtcdCluster

BACKENDS: dict[str, Callable[[Path], Store]] = {
    "memory": lambda tmp: MemoryStore(),
    "sqlite": lambda tmp: SQLiteStore(str(tmp / "state" / "kv.db")),
}
# etcd runs on the session's real 3-member cluster (tests/etcd_cluster.py); each test gets a fresh
# key root there: revisions are shared by the whole cluster, keys are not.
ALL_BACKENDS = [*sorted(BACKENDS), "etcd"]

# The same backends with a short history window, to see compaction on write in a few hundred writes.
BOUNDED: dict[str, Callable[[Path, int], Store]] = {
    "memory": lambda tmp, history: MemoryStore(history=history),
    "sqlite": lambda tmp, history: SQLiteStore(str(tmp / "state" / "kv.db"), history=history),
}

WATCH_SAFETY = 10.0  # seconds a watch may idle before it ends; a hang becomes a failed assertion


@pytest.fixture(params=ALL_BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store
    if request.param == "etcd":
        cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
        s = EtcdStore(cluster.endpoints, root=f"contract/{uuid.uuid4().hex}/")
    else:
        s = BACKENDS[request.param](tmp_path)
    yield s
    s.close()


def keys(kvs: list[KV]) -> list[str]:
    return [kv.key for kv in kvs]


# -- reads and plain writes ----------------------------------------------------------------------


def test_get_put_and_revisions(store: Store) -> None:
    assert store.get("a") is None
    r0 = store.revision()
    r1 = store.put("a", b"one")
    assert r1 == r0 + 1 == store.revision()
    kv = store.get("a")
    assert kv == KV("a", b"one", r1, r1, 1)
    r2 = store.put("a", b"two")
    assert r2 == r1 + 1
    assert store.get("a") == KV("a", b"two", r2, r1, 2)  # create_rev kept, version counts writes
    assert store.put("empty", b"") == r2 + 1
    assert store.get("empty").value == b""  # type: ignore[union-attr]


def test_list_prefix_boundaries(store: Store) -> None:
    for k in ["a", "a/", "a/1", "a/2", "a/x/y", "a0", "ab", "b/1", "a.", "a/\U0001f600"]:
        store.put(k, k.encode())
    items, rev = store.list("a/")
    assert keys(items) == ["a/", "a/1", "a/2", "a/x/y", "a/\U0001f600"]
    assert rev == store.revision()
    assert [kv.value for kv in items] == [k.encode() for k in keys(items)]
    assert keys(store.list("a/x")[0]) == ["a/x/y"]
    assert store.list("zz")[0] == []
    assert len(store.list("")[0]) == 10


def test_list_paging(store: Store) -> None:
    names = [f"p/{i:03d}" for i in range(25)]
    for n in reversed(names):
        store.put(n, b"v")
    store.put("p0", b"outside")
    store.put("o", b"outside")
    seen: list[str] = []
    after: str | None = None
    while True:
        page, _ = store.list("p/", limit=10, start_after=after)
        assert len(page) <= 10
        if not page:
            break
        seen += keys(page)
        after = page[-1].key
    assert seen == names
    assert keys(store.list("p/", limit=3)[0]) == names[:3]
    assert keys(store.list("p/", start_after="p/020")[0]) == names[21:]
    assert keys(store.list("p/", start_after="a")[0]) == names  # a cursor below the prefix is ignored


# -- compare-and-swap ----------------------------------------------------------------------------


def test_cas_create_if_absent(store: Store) -> None:
    first = store.cas("k", b"mine", 0)
    assert first.succeeded and first.failed == []
    second = store.cas("k", b"theirs", 0)
    assert not second.succeeded
    assert second.revision == first.revision  # a failed compare writes nothing
    assert second.failed == [("k", store.get("k"))]
    assert second.failed[0][1].value == b"mine"  # type: ignore[union-attr]


def test_cas_fresh_token_wins_stale_loses(store: Store) -> None:
    store.put("k", b"v1")
    token = store.get("k").mod_rev  # type: ignore[union-attr]
    won = store.cas("k", b"v2", token)
    assert won.succeeded
    lost = store.cas("k", b"v3", token)  # same token again: now stale
    assert not lost.succeeded
    current = store.get("k")
    assert current is not None and current.value == b"v2" and current.mod_rev == won.revision
    assert lost.failed == [("k", current)]
    assert store.cas("k", b"v4", 12345).succeeded is False
    assert store.cas("absent", b"x", current.mod_rev).failed == [("absent", None)]


def test_delete_idempotent_and_conditional(store: Store) -> None:
    r_put = store.put("k", b"v")
    gone = store.delete("k")
    assert gone.succeeded and gone.revision == r_put + 1
    assert store.get("k") is None
    again = store.delete("k")
    assert again.succeeded and again.revision == gone.revision  # nothing to delete, no new revision
    r = store.put("k", b"v2")
    stale = store.delete("k", expect_mod_rev=r_put)
    assert not stale.succeeded and stale.failed == [("k", store.get("k"))]
    assert store.get("k") is not None
    assert store.delete("k", expect_mod_rev=r).succeeded
    assert store.get("k") is None
    assert store.delete("k", expect_mod_rev=0).succeeded  # "absent" holds for an absent key
    assert not store.delete("k", expect_mod_rev=r).succeeded


# -- transactions --------------------------------------------------------------------------------


def test_txn_all_or_nothing(store: Store) -> None:
    store.put("a", b"1")
    store.put("b", b"1")
    ka, kb = store.get("a"), store.get("b")
    assert ka is not None and kb is not None
    before = store.revision()
    bad = store.txn([Cmp("a", ka.mod_rev), Cmp("b", kb.mod_rev - 1)],
                    [Put("a", b"2"), Put("b", b"2"), Put("c", b"new"), Delete("x")])
    assert not bad.succeeded
    assert bad.failed == [("b", kb)]
    assert store.revision() == before == bad.revision
    assert store.get("a") == ka and store.get("b") == kb and store.get("c") is None

    good = store.txn([Cmp("a", ka.mod_rev), Cmp("b", kb.mod_rev), Cmp("c", 0)],
                     [Put("a", b"2"), Delete("b"), Put("c", b"new")])
    assert good.succeeded and good.revision == before + 1 == store.revision()
    a, c = store.get("a"), store.get("c")
    assert a is not None and c is not None and store.get("b") is None
    assert a.mod_rev == c.mod_rev == c.create_rev == good.revision  # one txn, one revision


def test_revision_bumps_once_per_txn(store: Store) -> None:
    start = store.revision()
    ops = [Put(f"t/{i}", b"x") for i in range(MAX_TXN_OPS)]
    assert store.txn([], ops).revision == start + 1
    assert {kv.mod_rev for kv in store.list("t/")[0]} == {start + 1}
    assert store.txn([], [Delete(f"t/{i}") for i in range(10)]).revision == start + 2
    assert store.txn([], []).revision == start + 2
    assert store.revision() == start + 2


def test_limits(store: Store) -> None:
    too_many = [Put(f"k{i}", b"") for i in range(MAX_TXN_OPS + 1)]
    with pytest.raises(TooLarge):
        check_limits(too_many)
    with pytest.raises(TooLarge):
        store.txn([], too_many)
    with pytest.raises(TooLarge):
        store.put("big", b"x" * (MAX_VALUE + 1))
    with pytest.raises(TooLarge):
        store.cas("big", b"x" * (MAX_VALUE + 1), 0)
    assert store.get("big") is None and store.get("k0") is None
    store.put("big", b"x" * MAX_VALUE)  # exactly at the limit is fine
    assert len(store.get("big").value) == MAX_VALUE  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        store.txn([], [Put("dup", b"1"), Delete("dup")])


# -- watch ---------------------------------------------------------------------------------------


def test_watch_replays_history_then_live_events(store: Store) -> None:
    store.put("w/before", b"old")  # before R: must not be replayed
    r = store.put("w/a", b"1")
    store.put("other/x", b"not watched")
    store.txn([], [Put("w/b", b"2"), Put("w/c", b"3")])
    store.delete("w/a")
    history = [("PUT", "w/a", b"1", r), ("PUT", "w/b", b"2", r + 2), ("PUT", "w/c", b"3", r + 2),
               ("DELETE", "w/a", b"", r + 3)]

    started = threading.Event()

    def writer() -> None:
        started.wait(WATCH_SAFETY)
        store.put("w/live", b"4")
        store.put("other/y", b"no")
        store.delete("w/b")

    t = threading.Thread(target=writer)
    t.start()
    got: list[Event] = []
    try:
        for ev in store.watch("w/", r, timeout=WATCH_SAFETY):
            got.append(ev)
            if len(got) == len(history):
                started.set()  # history fully replayed; now the other thread writes
            if len(got) == len(history) + 2:
                break
    finally:
        started.set()
        t.join()
    assert [(e.type, e.key, e.value, e.revision) for e in got[:4]] == history
    live = [(e.type, e.key, e.value) for e in got[4:]]
    assert live == [("PUT", "w/live", b"4"), ("DELETE", "w/b", b"")]
    assert got[4].revision < got[5].revision
    assert [e.revision for e in got] == sorted(e.revision for e in got)


def test_watch_ends_after_idle_timeout(store: Store) -> None:
    r = store.put("w/a", b"1")
    got = list(store.watch("w/", r, timeout=0.2))
    assert [(e.key, e.revision) for e in got] == [("w/a", r)]


def test_watch_compacted(store: Store) -> None:
    revs = [store.put("c/k", str(i).encode()) for i in range(5)]
    store.compact(revs[3])
    with pytest.raises(Compacted) as err:
        list(store.watch("c/", revs[2], timeout=0.2))
    assert err.value.compact_rev == revs[3]
    kept = list(store.watch("c/", revs[3], timeout=0.2))  # the compaction revision itself is kept
    assert [e.value for e in kept] == [b"3", b"4"]
    assert store.get("c/k").value == b"4"  # type: ignore[union-attr]  # compaction keeps current state


# -- leases ----------------------------------------------------------------------------------------


def test_lease_expiry_deletes_keys_with_events_and_keepalive_keeps_them(store: Store) -> None:
    """Two leases of one TTL, the earlier kept alive: the later one's keys go first, as DELETE events.

    No wall-clock assertion: without the keepalives the earlier lease would expire first, so the
    order of what is gone when the later key's DELETE arrives is the proof.
    """
    kept = store.grant(1)
    start = store.put("l/kept", b"k", lease=kept)
    dying = store.grant(1)
    store.put("l/a", b"a", lease=dying)
    store.put("l/b", b"b", lease=dying)
    assert store.get("l/a").lease == dying  # type: ignore[union-attr]
    deleted: set[str] = set()
    next_rev, safety = start, time.monotonic() + 6 * WATCH_SAFETY  # a hang fails, nothing is timed
    while not deleted >= {"l/a", "l/b"} and time.monotonic() < safety:
        store.keepalive(kept)  # several times a second, events or not
        for ev in store.watch("l/", next_rev, timeout=0.1):
            next_rev = ev.revision + 1
            if ev.type == "DELETE":
                deleted.add(ev.key)
    assert deleted == {"l/a", "l/b"}, "both keys of the expired lease were deleted, as events"
    assert store.get("l/a") is None and store.get("l/b") is None
    assert store.get("l/kept") is not None, "the lease kept alive outlived the later one"
    with pytest.raises(LeaseNotFound):
        store.keepalive(dying)
    with pytest.raises(LeaseNotFound):
        store.put("l/late", b"x", lease=dying)
    assert store.get("l/late") is None
    store.revoke(kept)


def test_lease_revoke_and_reattach(store: Store) -> None:
    lease = store.grant(60)
    assert store.keepalive(lease) >= 60
    store.put("r/a", b"1", lease=lease)
    assert store.txn([Cmp("r/b", 0)], [Put("r/b", b"2", lease)]).succeeded
    store.put("r/c", b"3", lease=lease)
    store.put("r/c", b"4")  # re-put without a lease: detached, it survives the lease
    assert store.get("r/c").lease == 0  # type: ignore[union-attr]
    before = store.revision()
    store.revoke(lease)
    assert store.get("r/a") is None and store.get("r/b") is None
    assert store.get("r/c").value == b"4"  # type: ignore[union-attr]
    events = list(store.watch("r/", before + 1, timeout=0.3))
    assert sorted((e.type, e.key) for e in events) == [("DELETE", "r/a"), ("DELETE", "r/b")]
    store.revoke(lease)  # idempotent
    with pytest.raises(LeaseNotFound):
        store.keepalive(lease)
    with pytest.raises(LeaseNotFound):
        store.txn([], [Put("r/d", b"5", lease), Put("r/e", b"6")])
    assert store.get("r/e") is None, "a txn naming a dead lease writes nothing"
    with pytest.raises(ValueError):
        store.grant(0)


@pytest.fixture(params=sorted(BACKENDS))
def history_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The backends whose open watch can fall behind a compaction.

    etcd pushes events to a caught-up watcher before any compaction, so an open stream never
    falls behind there; its real case (a stream resumed below compaction) is
    tests/unit/test_store_etcd.py::test_watch_resumed_below_compaction_raises.
    """
    s = BACKENDS[request.param](tmp_path)
    yield s
    s.close()


def test_watch_overtaken_by_compaction(history_store: Store) -> None:
    store = history_store
    r = store.put("c/k", b"0")
    it = store.watch("c/", r, timeout=WATCH_SAFETY)
    assert next(it).revision == r
    last = r
    for i in range(3):
        last = store.put("c/k", str(i + 1).encode())
    store.compact(last)  # the watcher has not read r+1..last-1 yet: it lost history
    with pytest.raises(Compacted):
        list(it)


@pytest.mark.parametrize("backend", sorted(BOUNDED))
def test_history_is_compacted_on_write(backend: str, tmp_path: Path) -> None:
    """History is a window of the last ``history`` revisions, however many writes came before."""
    store = BOUNDED[backend](tmp_path, 50)
    try:
        first = store.put("ep/x", b"0")
        it = store.watch("ep/", first, timeout=WATCH_SAFETY)
        assert next(it).revision == first  # a watcher that then stops reading falls behind
        for _ in range(300):  # an endpoint's life: put, update, delete
            store.put("ep/x", b"a")
            store.put("ep/x", b"b")
            store.delete("ep/x")
        rev = store.put("live/k", b"1")
        assert rev == first + 901
        with pytest.raises(Compacted) as err:
            store.watch("ep/", first, timeout=0.2)
        assert err.value.compact_rev == rev - 49  # exactly the last 50 revisions are kept
        with pytest.raises(Compacted):
            list(it)  # the stalled watcher learns it must relist
        recent = list(store.watch("", rev - 49, timeout=0.2))
        assert [e.revision for e in recent] == list(range(rev - 49, rev + 1))
        assert (recent[-1].type, recent[-1].key) == ("PUT", "live/k")
        assert [e.type for e in recent[-4:-1]] == ["PUT", "PUT", "DELETE"]
    finally:
        store.close()


# -- concurrency ---------------------------------------------------------------------------------


def test_concurrent_cas_increments_lose_nothing(store: Store) -> None:
    threads, per_thread = 8, 25
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(per_thread):
                update_json(store, "counter", lambda old: {"n": (old or {"n": 0})["n"] + 1},
                            retries=10_000)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    value, _ = get_json(store, "counter")
    assert value == {"n": threads * per_thread}
    assert store.get("counter").version == threads * per_thread  # type: ignore[union-attr]


# -- records helpers (backend-neutral) -----------------------------------------------------------


def test_records_helpers(store: Store) -> None:
    assert get_json(store, "r/x") == (None, 0)
    new, rev = update_json(store, "r/x", lambda old: {"owner": "ep1"} if old is None else old)
    assert new == {"owner": "ep1"} and get_json(store, "r/x") == (new, rev)
    same, rev2 = update_json(store, "r/x", lambda old: old)  # unchanged: no write
    assert (same, rev2) == (new, rev) and store.revision() == rev
    entries, list_rev = list_json(store, "r/")
    assert [(e.key, e.value, e.mod_rev) for e in entries] == [("r/x", new, rev)]
    assert list_rev == rev

    ok = TxnBuilder().create("r/y", {"a": 1}).replace("r/x", {"owner": "ep2"}, rev).commit(store)
    assert ok.succeeded
    lost = TxnBuilder().create("r/z", {}).replace("r/x", {"owner": "ep3"}, rev).commit(store)
    assert not lost.succeeded and store.get("r/z") is None
    assert get_json(store, "r/x")[0] == {"owner": "ep2"}
    gone, _ = update_json(store, "r/y", lambda old: None)
    assert gone is None and store.get("r/y") is None


def test_open_store_urls(tmp_path: Path) -> None:
    s = open_store(f"sqlite://{tmp_path}/u/state.db")
    assert isinstance(s, SQLiteStore)
    s.put("k", b"v")
    s.close()
    bare = open_store(str(tmp_path / "u" / "state.db"))
    assert bare.get("k").value == b"v"  # type: ignore[union-attr]
    bare.close()
    assert isinstance(open_store("memory://"), MemoryStore)
    etcd = open_store("etcd://127.0.0.1:2379,127.0.0.1:22379/cnmkit-root/")
    assert isinstance(etcd, EtcdStore) and etcd.endpoints == ["127.0.0.1:2379", "127.0.0.1:22379"]
    etcd.close()
    for bad in ("etcd://", "etcd://h1:2379,h2", "etcd://h1:notaport"):
        with pytest.raises(ValueError, match="host:port"):
            open_store(bad)
    with pytest.raises(ValueError, match="'zk'"):
        open_store("zk://127.0.0.1:2181")
    with pytest.raises(ValueError):
        open_store("sqlite://relative.db")
