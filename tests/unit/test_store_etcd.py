"""What only the etcd backend promises: members die and callers do not notice.

Each test that kills members starts its own 3-member cluster (tests/etcd_cluster.py) and asks
``etcdctl`` which member leads. Members are killed by the pid the fixture started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Callable

import pytest

from store.base import Cmp, Compacted, Event, Put, Unavailable
from store.etcd import EtcdStore
from tests.etcd_cluster import EtcdCluster

WATCH_SAFETY = 30.0  # a watch idle this long ends, so a lost event becomes a failed assertion


def _closed_ports(n: int) -> list[str]:
    """Loopback ports with nothing listening (bound, read, released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]
    finally:
        for s in socks:
            s.close()


def test_unreachable_cluster_raises_unavailable_naming_endpoints() -> None:
    endpoints = _closed_ports(3)
    store = EtcdStore(endpoints, op_timeout=0.5, deadline=1.0)
    try:
        for call in (lambda: store.get("k"), store.revision, lambda: store.list("k/"),
                     lambda: store.put("k", b"v"), lambda: store.cas("k", b"v", 0),
                     lambda: list(store.watch("k/", 1, timeout=WATCH_SAFETY))):
            with pytest.raises(Unavailable) as err:
                call()
            assert all(ep in str(err.value) for ep in endpoints)
    finally:
        store.close()


def _rotated(cluster: EtcdCluster, first: int) -> list[str]:
    """Endpoints with member ``first`` first: the store talks to it until it fails."""
    eps = cluster.endpoints
    return eps[first:] + eps[:first]


@pytest.mark.parametrize("victim", ["leader", "follower"])
def test_member_kill_during_cas_stream_is_invisible(etcd_cluster_factory: Callable[[], EtcdCluster],
                                                    victim: str) -> None:
    """SIGKILL of the member the client talks to, mid-stream: no error, no lost or doubled write."""
    cluster = etcd_cluster_factory()
    leader = cluster.leader()
    target = leader if victim == "leader" else (leader + 1) % 3
    store = EtcdStore(_rotated(cluster, target))
    writers, before_kill, after_kill = 4, 40, 60
    done_before, done_after, stop = threading.Event(), threading.Event(), threading.Event()
    killed = threading.Event()
    lock = threading.Lock()
    acked: list[tuple[int, int, int]] = []  # (writer, seq, counter value) each client saw succeed
    errors: list[BaseException] = []
    start_rev = store.revision() + 1
    events: list[Event] = []
    watch_done = threading.Event()

    def write(w: int) -> None:
        seq = 0
        try:
            while not stop.is_set():
                kv = store.get("counter")
                n = json.loads(kv.value)["n"] if kv else 0
                # The value names its writer: an unclear outcome is settled by reading it back.
                value = json.dumps({"n": n + 1, "by": f"{w}:{seq}"}).encode()
                res = store.txn([Cmp("counter", kv.mod_rev if kv else 0)],
                                [Put("counter", value), Put(f"log/{w}/{seq:05d}", str(n + 1).encode())])
                if not res.succeeded:
                    continue
                seen = store.get("counter")  # a read right after: never older than our own write
                assert seen is not None and seen.mod_rev >= res.revision
                with lock:
                    acked.append((w, seq, n + 1))
                    total = len(acked)
                seq += 1
                if total >= before_kill:
                    done_before.set()
                if killed.is_set() and total >= before_kill + after_kill:
                    done_after.set()
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            done_before.set()
            done_after.set()

    def watch() -> None:
        try:
            for ev in store.watch("log/", start_rev, timeout=WATCH_SAFETY):
                if ev.key == "log/~end":  # written after every writer stopped
                    break
                events.append(ev)
        except BaseException as exc:
            errors.append(exc)
        finally:
            watch_done.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    try:
        done_before.wait(WATCH_SAFETY)
        cluster.kill(target)
        killed.set()
        done_after.wait(WATCH_SAFETY * 2)
    finally:
        stop.set()
        for t in threads:
            t.join()
        store.put("log/~end", b"")
    watcher.join()
    assert errors == []
    assert len(acked) >= before_kill + after_kill

    # Exactly the acknowledged increments, each once: values 1..N, one log key per ack.
    counter = store.get("counter")
    assert counter is not None and json.loads(counter.value)["n"] == len(acked) == counter.version
    assert sorted(n for _, _, n in acked) == list(range(1, len(acked) + 1))
    store.delete("log/~end")
    logs, _ = store.list("log/")
    assert sorted(kv.key for kv in logs) == sorted(f"log/{w}/{s:05d}" for w, s, _ in acked)
    assert {kv.key: int(kv.value) for kv in logs} == {f"log/{w}/{s:05d}": n for w, s, n in acked}

    # The watch lived through the death of its member: every write once, in order.
    assert [e.key for e in events] == [kv.key for kv in sorted(logs, key=lambda kv: kv.mod_rev)]
    assert len({e.revision for e in events}) == len(events)

    # The killed member comes back and catches up (etcdctl reads through it).
    cluster.start_member(target)
    cluster.wait_healthy()
    assert cluster.status(target) is not None
    assert cluster.get_on(target, "counter") == counter.value.decode()
    store.close()


def _pause(cluster: EtcdCluster, i: int) -> None:
    proc = cluster.procs[i]
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)


def test_watch_resumes_after_member_death_without_gap(etcd_cluster_factory: Callable[[], EtcdCluster]) -> None:
    """Events written while the watch's member was frozen, then killed, arrive once each."""
    cluster = etcd_cluster_factory()
    a, b = cluster.endpoints[0], cluster.endpoints[1]
    watcher, writer = EtcdStore([a, b]), EtcdStore([b])
    r = writer.put("w/0", b"0")
    it = watcher.watch("w/", r, timeout=WATCH_SAFETY)
    assert next(it).key == "w/0"  # the stream is open on member a
    _pause(cluster, 0)  # a can no longer push anything
    written = [writer.put(f"w/{i}", str(i).encode()) for i in range(1, 6)]
    writer.delete("w/3")
    cluster.kill(0)  # the stream breaks; the watch resumes on b from the last revision + 1
    got = [next(it) for _ in range(6)]
    assert [(e.type, e.key, e.revision) for e in got] == [
        *[("PUT", f"w/{i}", rev) for i, rev in enumerate(written, start=1)], ("DELETE", "w/3", written[-1] + 1)]
    writer.put("w/live", b"x")
    assert next(it).key == "w/live"
    watcher.close()
    writer.close()


def test_watch_resumed_below_compaction_raises(etcd_cluster_factory: Callable[[], EtcdCluster]) -> None:
    """A stream that breaks while history it has not seen is compacted: Compacted, so the caller relists."""
    cluster = etcd_cluster_factory()
    a, b = cluster.endpoints[0], cluster.endpoints[1]
    watcher, writer = EtcdStore([a, b]), EtcdStore([b])
    r = writer.put("c/k", b"0")
    it = watcher.watch("c/", r, timeout=WATCH_SAFETY)
    assert next(it).revision == r
    _pause(cluster, 0)
    last = 0
    for i in range(3):
        last = writer.put("c/k", str(i + 1).encode())
    writer.compact(last)  # served and applied by b, where the watch will resume
    cluster.kill(0)
    with pytest.raises(Compacted) as err:
        next(it)
    assert err.value.compact_rev == last
    watcher.close()
    writer.close()
