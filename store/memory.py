"""In-memory reference backend of the store contract.

It exists so that unit tests of IPAM, drivers and the daemon run without a file or a server,
and so that the contract suite has a plain, obviously-correct model to hold the durable
backends against. It is thread-safe (one lock; a condition wakes watchers) and keeps a
bounded changelog, so that it exercises the same "history was compacted, relist" path that
etcd and SQLite callers must handle.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence

from store.base import (
    DEFAULT_HISTORY,
    KV,
    Cmp,
    Compacted,
    Delete,
    Event,
    LeaseNotFound,
    Op,
    Put,
    TxnResult,
    TxnShortcuts,
    check_ttl,
    check_txn,
    prefix_end,
)

LEASE_POLL = 0.05  # seconds a waiting watcher sleeps at most while leases may run out

__all__ = ["DEFAULT_HISTORY", "MemoryStore"]


class MemoryStore(TxnShortcuts):
    """Reference implementation of ``store.base.Store`` held in process memory."""

    def __init__(self, *, history: int = DEFAULT_HISTORY) -> None:
        if history < 1:
            raise ValueError("history must keep at least one revision")
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._data: dict[str, KV] = {}
        self._keys: list[str] = []  # sorted, so that prefix lists and paging are range scans
        self._rev = 0
        self._compact_rev = 0
        self._history: deque[tuple[int, list[Event]]] = deque()
        self._max_history = history
        self._closed = False
        self._leases: dict[int, tuple[int, float]] = {}  # id -> (ttl, monotonic expiry)
        self._next_lease = 0x10000

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: str) -> KV | None:
        with self._lock:
            self._expire_locked()
            return self._data.get(key)

    def list(self, prefix: str, *, limit: int | None = None, start_after: str | None = None
             ) -> tuple[list[KV], int]:
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0 (0 or None: no limit)")
        end = prefix_end(prefix)
        with self._lock:
            self._expire_locked()
            if start_after is not None and start_after >= prefix:
                lo = bisect.bisect_right(self._keys, start_after)
            else:
                lo = bisect.bisect_left(self._keys, prefix)
            hi = len(self._keys) if end is None else bisect.bisect_left(self._keys, end)
            if limit:
                hi = min(hi, lo + limit)
            return [self._data[k] for k in self._keys[lo:hi]], self._rev

    def revision(self) -> int:
        with self._lock:
            self._expire_locked()
            return self._rev

    # -- writes ------------------------------------------------------------------------------

    def txn(self, compares: Sequence[Cmp], ops: Sequence[Op]) -> TxnResult:
        check_txn(compares, ops)
        with self._lock:
            self._check_open()
            self._expire_locked()
            failed: list[tuple[str, KV | None]] = []
            for cmp in compares:
                current = self._data.get(cmp.key)
                if (current.mod_rev if current else 0) != cmp.mod_rev:
                    failed.append((cmp.key, current))
            if failed:
                return TxnResult(False, self._rev, failed)
            for op in ops:
                if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                    raise LeaseNotFound(op.lease)
            # Deleting absent keys changes nothing; like etcd, such a txn does not bump the revision.
            effective = [op for op in ops if isinstance(op, Put) or op.key in self._data]
            if not effective:
                return TxnResult(True, self._rev)
            return TxnResult(True, self._apply_locked(effective))

    def _apply_locked(self, effective: Sequence[Op]) -> int:
        """Apply ops that all change something as one new revision; returns it."""
        rev = self._rev + 1
        events: list[Event] = []
        for op in effective:
            if isinstance(op, Put):
                old = self._data.get(op.key)
                if old is None:
                    bisect.insort(self._keys, op.key)
                    kv = KV(op.key, bytes(op.value), rev, rev, 1, op.lease)
                else:
                    kv = KV(op.key, bytes(op.value), rev, old.create_rev, old.version + 1, op.lease)
                self._data[op.key] = kv
                events.append(Event("PUT", op.key, kv.value, rev))
            else:
                del self._data[op.key]
                del self._keys[bisect.bisect_left(self._keys, op.key)]
                events.append(Event("DELETE", op.key, b"", rev))
        self._rev = rev
        self._history.append((rev, events))
        while len(self._history) > self._max_history:
            dropped, _ = self._history.popleft()
            self._compact_rev = dropped + 1
        self._changed.notify_all()
        return rev

    # -- leases ------------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        check_ttl(ttl)
        with self._lock:
            self._check_open()
            self._next_lease += 1
            self._leases[self._next_lease] = (ttl, time.monotonic() + ttl)
            return self._next_lease

    def keepalive(self, lease: int) -> int:
        with self._lock:
            self._expire_locked()
            if lease not in self._leases:
                raise LeaseNotFound(lease)
            ttl = self._leases[lease][0]
            self._leases[lease] = (ttl, time.monotonic() + ttl)
            return ttl

    def revoke(self, lease: int) -> None:
        with self._lock:
            self._expire_locked()
            if self._leases.pop(lease, None) is not None:
                self._drop_lease_keys_locked(lease)

    def expire_leases(self) -> None:
        with self._lock:
            self._expire_locked()

    def _expire_locked(self) -> None:
        """Delete the keys of every lease past its expiry, one revision per lease (as etcd does)."""
        if not self._leases:
            return
        now = time.monotonic()
        for lease in [lid for lid, (_, exp) in self._leases.items() if exp <= now]:
            del self._leases[lease]
            self._drop_lease_keys_locked(lease)

    def _drop_lease_keys_locked(self, lease: int) -> None:
        doomed = [Delete(k) for k, kv in self._data.items() if kv.lease == lease]
        if doomed:
            self._apply_locked(sorted(doomed, key=lambda d: d.key))

    # -- history -----------------------------------------------------------------------------

    def watch(self, prefix: str, from_rev: int, *, timeout: float | None = None) -> Iterator[Event]:
        with self._lock:  # raise Compacted now, not at the first next(), so callers relist early
            if from_rev < self._compact_rev:
                raise Compacted(self._compact_rev)
        return self._watch(prefix, from_rev, timeout)

    def _watch(self, prefix: str, next_rev: int, timeout: float | None) -> Iterator[Event]:
        end = prefix_end(prefix)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                while True:
                    if self._closed:
                        return
                    self._expire_locked()
                    if next_rev < self._compact_rev:
                        raise Compacted(self._compact_rev)
                    if next_rev <= self._rev:
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return
                    if self._leases:  # nobody may write when a lease runs out: look again soon
                        remaining = LEASE_POLL if remaining is None else min(remaining, LEASE_POLL)
                    self._changed.wait(remaining)
                pending: list[list[Event]] = []
                for rev, evs in reversed(self._history):  # newest first: touch only the unseen tail
                    if rev < next_rev:
                        break
                    pending.append(evs)
                batch = [ev for evs in reversed(pending) for ev in evs
                         if ev.key >= prefix and (end is None or ev.key < end)]
                next_rev = self._rev + 1
            yield from batch
            if batch and timeout is not None:
                deadline = time.monotonic() + timeout

    def compact(self, revision: int) -> None:
        with self._lock:
            if revision > self._rev:
                raise ValueError(f"cannot compact at {revision}: the store is at revision {self._rev}")
            if revision <= self._compact_rev:
                return
            while self._history and self._history[0][0] < revision:
                self._history.popleft()
            self._compact_rev = revision
            self._changed.notify_all()  # lagging watchers must learn they were compacted

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._changed.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("store is closed")
