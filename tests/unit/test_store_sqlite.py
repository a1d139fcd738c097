"""SQLite-specific guarantees: several connections and processes on one file, and kill -9.

The daemon, its worker threads and the CLI open the same file; a writer may die at any
instruction. These tests check what the contract suite cannot: cross-process atomicity and
that a killed writer leaves a consistent, reopenable store.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import store.sqlite as sqlite_backend
from store.base import KV, Put
from store.sqlite import _SCHEMA, SQLiteStore, list_query

REPO = str(Path(__file__).resolve().parents[2])

# Increment "counter" with a CAS loop; print each value this process committed.
WORKER = r"""
import sys
from store.sqlite import SQLiteStore

store = SQLiteStore(sys.argv[1])
count = int(sys.argv[2])  # 0: forever
done = 0
while count == 0 or done < count:
    kv = store.get("counter")
    n = int(kv.value) if kv else 0
    if store.cas("counter", str(n + 1).encode(), kv.mod_rev if kv else 0).succeeded:
        done += 1
        print(n + 1, flush=True)
store.close()
"""


def spawn(db: Path, count: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, "-c", WORKER, str(db), str(count)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def counter(store: SQLiteStore) -> int:
    kv = store.get("counter")
    return int(kv.value) if kv else 0


def test_two_objects_share_one_file(tmp_path: Path) -> None:
    db = str(tmp_path / "kv.db")
    a, b = SQLiteStore(db), SQLiteStore(db)
    try:
        ra = a.put("k", b"from a")
        assert b.get("k").value == b"from a"  # type: ignore[union-attr]
        assert b.revision() == ra
        stale = b.get("k").mod_rev  # type: ignore[union-attr]
        assert a.cas("k", b"a2", stale).succeeded
        lost = b.cas("k", b"b2", stale)
        assert not lost.succeeded and lost.failed[0][1].value == b"a2"  # type: ignore[union-attr]
        watch = b.watch("", ra + 1, timeout=5)
        a.txn([], [Put("x", b"1"), Put("y", b"2")])
        got = [next(watch), next(watch), next(watch)]
        assert [(e.key, e.value) for e in got] == [("k", b"a2"), ("x", b"1"), ("y", b"2")]
    finally:
        a.close()
        b.close()


def test_threads_get_their_own_connection(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "kv.db"))
    seen: list[sqlite3.Connection] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        with lock:
            seen.append(store._conn())
        store.put(f"t/{i}", b"x")

    pool = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert len({id(c) for c in seen}) == 4
    assert len(store.list("t/")[0]) == 4
    store.close()


def test_processes_cas_increments_exact(tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "kv.db"  # not created yet: the workers race to create the schema too
    procs, per_proc = 3, 300
    workers = [spawn(db, per_proc) for _ in range(procs)]
    outputs = [w.communicate(timeout=120) for w in workers]
    for w, (_, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err
    committed = sorted(int(line) for out, _ in outputs for line in out.split())
    assert committed == list(range(1, procs * per_proc + 1))  # every value committed exactly once
    store = SQLiteStore(str(db))
    assert counter(store) == procs * per_proc
    assert store.revision() == procs * per_proc
    store.close()


def test_kill_9_writer_leaves_store_consistent(tmp_path: Path) -> None:
    db = tmp_path / "kv.db"
    SQLiteStore(str(db)).close()
    rng = random.Random(7)
    reported = 0
    last_rev = 0
    for _ in range(8):
        writer = spawn(db, 0)
        assert writer.stdout is not None
        for _ in range(rng.randint(20, 200)):  # let it commit a while, then kill mid-loop
            line = writer.stdout.readline()
            assert line, writer.stderr.read() if writer.stderr else ""
            reported = int(line)
        os.kill(writer.pid, signal.SIGKILL)
        # Read through the same buffered reader: communicate() would bypass lines it already holds.
        rest = writer.stdout.read()
        writer.stdout.close()
        assert writer.wait(timeout=30) == -signal.SIGKILL
        assert writer.stderr is not None
        writer.stderr.close()
        for line in rest.split():  # lines already in the pipe when it died
            reported = int(line)

        store = SQLiteStore(str(db))
        try:
            n = counter(store)
            # Committed increments all survive; at most the one in flight committed unreported.
            assert n in (reported, reported + 1)
            kv = store.get("counter")
            assert kv is not None and kv.version == n == kv.mod_rev == store.revision()
            assert store.revision() >= last_rev
            last_rev = store.revision()
            revs = [e.revision for e in store.watch("", 1, timeout=0)]
            assert revs == list(range(1, last_rev + 1))  # changelog has no gap and no duplicate
        finally:
            store.close()
        reported = n
        check = sqlite3.connect(db)
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        check.close()
    assert last_rev > 0


def test_watch_skips_sparse_history_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_backend, "WATCH_CHUNK", 3)
    store = SQLiteStore(str(tmp_path / "kv.db"))
    for i in range(20):
        store.put(f"noise/{i}", b"x")
        if i % 7 == 6:
            store.put("w/k", str(i).encode())
    got = [e.value for e in store.watch("w/", 1, timeout=0)]
    assert got == [b"6", b"13"]  # chunks without a matching event do not end an idle-timed watch
    store.close()


def test_data_survives_reopen(tmp_path: Path) -> None:
    db = str(tmp_path / "kv.db")
    store = SQLiteStore(db)
    store.put("a", b"1")
    rev = store.txn([], [Put("b", b"2"), Put("c", b"3")]).revision
    store.delete("a")
    store.compact(rev)
    store.close()
    again = SQLiteStore(db)
    try:
        items, r = again.list("")
        assert [(kv.key, kv.value, kv.mod_rev) for kv in items] == [("b", b"2", rev), ("c", b"3", rev)]
        assert r == rev + 1 == again.revision()
        assert [e.type for e in again.watch("", rev, timeout=0)] == ["PUT", "PUT", "DELETE"]
        assert again.put("d", b"4") == rev + 2
    finally:
        again.close()


def test_list_is_an_index_range_query(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "kv.db"))
    store.close()
    conn = sqlite3.connect(tmp_path / "kv.db")
    for args in [("ipam/pool1/", None, None), ("ipam/pool1/", 100, "ipam/pool1/10.0.0.9"), ("", 5, None)]:
        sql, params = list_query(*args)
        plan = " ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "SEARCH kv USING PRIMARY KEY" in plan, plan
        assert "SCAN" not in plan and "TEMP B-TREE" not in plan, plan
    conn.close()


def test_creates_private_parent_dirs(tmp_path: Path) -> None:
    db = tmp_path / "var" / "lib" / "cnmkit" / "kv.db"
    SQLiteStore(str(db)).close()
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def changelog_rows(db: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM changelog").fetchone()[0])
    finally:
        conn.close()


def file_bytes(db: str) -> int:
    """Size of the main file once the WAL is checkpointed into it (and truncated)."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()
    return os.path.getsize(db)


def test_changelog_rows_and_file_stay_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Endpoint lifecycles for ever: the changelog stays a window and the file does not grow."""
    monkeypatch.setattr(sqlite_backend, "VACUUM_EVERY", 100)
    db = str(tmp_path / "kv.db")
    store = SQLiteStore(db, history=200)
    value = b"x" * 2000  # an endpoint record's size, so a leak shows in pages quickly

    def lifecycles(n: int) -> None:
        for i in range(n):
            store.put(f"ep/{i % 7}", value)
            store.put(f"ep/{i % 7}", value + b"!")
            store.delete(f"ep/{i % 7}")

    try:
        lifecycles(200)
        assert changelog_rows(db) == 200
        settled = file_bytes(db)
        lifecycles(1000)
        assert changelog_rows(db) == 200
        assert file_bytes(db) <= settled + 64 * 1024  # 3000 more revisions (6 MB of values) later
        rev = store.put("live", b"1")
        assert [e.key for e in store.watch("", rev - 1, timeout=0)] == ["ep/5", "live"]  # 999 % 7
    finally:
        store.close()


def test_legacy_file_is_trimmed_and_shrunk_on_open(tmp_path: Path) -> None:
    """A file from before compaction (auto_vacuum off, 20k changelog rows) is brought down once."""
    db = str(tmp_path / "kv.db")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_SCHEMA)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO changelog (rev, sub, key, op, value) VALUES (?, 0, 'ep/x', 'PUT', ?)",
                     [(rev, b"x" * 500) for rev in range(1, 20_001)])
    conn.execute("INSERT INTO kv VALUES ('ep/x', ?, 1, 20000, 20000)", (b"x" * 500,))
    conn.execute("UPDATE meta SET revision = 20000")
    conn.execute("COMMIT")
    conn.close()
    before = file_bytes(db)
    store = SQLiteStore(db, history=100)
    try:
        assert changelog_rows(db) == 100
        assert file_bytes(db) < before // 10
        check = sqlite3.connect(db)
        assert check.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental from now on
        check.close()
        assert [e.revision for e in store.watch("ep/", 19_999, timeout=0)] == [19_999, 20_000]
        assert store.get("ep/x").mod_rev == 20_000  # type: ignore[union-attr]
    finally:
        store.close()


def test_file_from_before_leases_gets_the_lease_column_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, create_rev INTEGER NOT NULL,
                         mod_rev INTEGER NOT NULL, version INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL,
                           compact_rev INTEGER NOT NULL);
        INSERT INTO meta VALUES (1, 1, 0);
        INSERT INTO kv VALUES ('old', x'31', 1, 1, 1);
    """)
    conn.close()
    store = SQLiteStore(str(path))
    try:
        assert store.get("old") == KV("old", b"1", 1, 1, 1, 0)
        lease = store.grant(60)
        store.put("new", b"2", lease=lease)
        store.revoke(lease)
        assert store.get("new") is None and store.get("old") is not None
    finally:
        store.close()


# -- group commit (issue 11 item 3) ---------------------------------------------------------------


def test_a_write_returns_only_after_the_wal_is_fdatasynced(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """synchronous=NORMAL alone would answer before the disk has the commit: _sync must follow it."""
    store = SQLiteStore(str(tmp_path / "s.db"))
    synced: list[str] = []
    real = os.fdatasync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(sqlite_backend.os, "fdatasync", spy)
    store.put("/a", b"1")
    assert synced == [str(tmp_path / "s.db-wal")]
    assert store.cas("/a", b"2", 0).succeeded is False             # a failed compare commits nothing
    assert len(synced) == 1
    store.close()


def test_commits_made_during_an_fsync_share_the_next_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync runs outside SQLite's write lock: 8 writers commit while it runs, and one more covers them."""
    store = SQLiteStore(str(tmp_path / "s.db"))
    calls = 0
    entered, release = threading.Semaphore(0), threading.Semaphore(0)

    def gated(fd: int) -> None:
        nonlocal calls
        calls += 1
        entered.release()
        release.acquire()

    monkeypatch.setattr(sqlite_backend.os, "fdatasync", gated)
    first = threading.Thread(target=store.put, args=("/k0", b"v"))
    first.start()
    assert entered.acquire(timeout=60)                  # the first commit's fsync is running
    writers = [threading.Thread(target=store.put, args=(f"/k{i}", b"v")) for i in range(1, 9)]
    for w in writers:
        w.start()
    # Each of the 8 committed (the write lock is free during the fsync) and now waits for a sync.
    while store._commits < 9:                           # the ticket count is the observable
        threading.Event().wait(0.001)
    release.release()                                   # fsync 1 ends; one more covers all 8
    assert entered.acquire(timeout=60)
    release.release()
    for w in (first, *writers):
        w.join()
    assert calls == 2
    assert [kv.key for kv in store.list("/k")[0]] == [f"/k{i}" for i in range(9)]
    store.close()
