"""JSON records on top of any ``Store``: the shape IPAM and the network manager actually use.

Every record is one JSON object under one key, and every update is an optimistic
read-modify-CAS loop on the key's mod revision, the pattern libnetwork's ``PutObjectAtomic``
and Calico's IPAM use (design/store.md section 5). On a conflict the loop re-reads from the
store, never from a cache: a stale cached token is how libnetwork#576 got stuck.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from store.base import Cmp, Delete, Op, Put, Store, StoreError, TxnResult

Record = dict[str, Any]


class Conflict(StoreError):
    """``update_json`` lost the CAS race more often than its retry budget allows."""


class Entry(NamedTuple):
    key: str
    value: Record
    mod_rev: int


def encode(value: Record) -> bytes:
    """Canonical bytes (sorted keys, no spaces), so equal records are equal values in the store."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes) -> Record:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError(f"record is not a JSON object: {data[:80]!r}")
    return value


def get_json(store: Store, key: str) -> tuple[Record | None, int]:
    """The record at ``key`` and its mod revision, the CAS token (None and 0 when absent)."""
    kv = store.get(key)
    return (None, 0) if kv is None else (decode(kv.value), kv.mod_rev)


def put_json(store: Store, key: str, value: Record) -> int:
    """Unconditional write; returns the store revision. Use ``cas_json`` when others may write too."""
    return store.put(key, encode(value))


def cas_json(store: Store, key: str, value: Record, expect_mod_rev: int) -> TxnResult:
    """Write if ``key``'s mod revision is still ``expect_mod_rev`` (0: create only if absent)."""
    return store.cas(key, encode(value), expect_mod_rev)


def list_json(store: Store, prefix: str) -> tuple[list[Entry], int]:
    """Every record under ``prefix`` in key order, with the snapshot revision to watch from (+1)."""
    kvs, rev = store.list(prefix)
    return [Entry(kv.key, decode(kv.value), kv.mod_rev) for kv in kvs], rev


def update_json(store: Store, key: str, fn: Callable[[Record | None], Record | None], *,
                retries: int = 64) -> tuple[Record | None, int]:
    """Apply ``fn(old) -> new`` atomically, retrying when another writer got in first.

    ``fn`` gets the current record (None if absent) and returns the new one, or None to delete
    the key; it may run several times, so it must not have side effects (raise to abort). When
    it returns the record unchanged nothing is written. Returns the record now stored and the
    revision it was read or written at.
    """
    for attempt in range(retries + 1):
        kv = store.get(key)
        old = None if kv is None else decode(kv.value)
        token = 0 if kv is None else kv.mod_rev
        new = fn(None if old is None else json.loads(json.dumps(old)))  # fn may mutate its argument
        if new == old:
            return old, token
        if new is None:
            result = store.delete(key, expect_mod_rev=token)
        else:
            result = store.cas(key, encode(new), token)
        if result.succeeded:
            return new, result.revision
        # Jittered, capped backoff: contending writers otherwise collide again in lock-step.
        time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 6))))
    raise Conflict(f"update of {key!r} lost {retries + 1} CAS races in a row")


@dataclass
class TxnBuilder:
    """Collects guarded record writes into one all-or-nothing txn.

    Used where two records must change together (an allocation and its endpoint record, moby#27398
    left endpoints behind because they were written separately).
    """

    compares: list[Cmp] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)

    def create(self, key: str, value: Record) -> TxnBuilder:
        """Write ``value`` only if ``key`` does not exist yet."""
        self.compares.append(Cmp(key, 0))
        self.ops.append(Put(key, encode(value)))
        return self

    def replace(self, key: str, value: Record, mod_rev: int) -> TxnBuilder:
        """Overwrite ``key`` only if it is still at ``mod_rev`` (0: only if absent)."""
        self.compares.append(Cmp(key, mod_rev))
        self.ops.append(Put(key, encode(value)))
        return self

    def delete(self, key: str, mod_rev: int | None = None) -> TxnBuilder:
        """Delete ``key`` (only if it is at ``mod_rev``, when given)."""
        if mod_rev is not None:
            self.compares.append(Cmp(key, mod_rev))
        self.ops.append(Delete(key))
        return self

    def require(self, key: str, mod_rev: int) -> TxnBuilder:
        """Commit only if ``key`` is still at ``mod_rev``, without writing it."""
        self.compares.append(Cmp(key, mod_rev))
        return self

    def commit(self, store: Store) -> TxnResult:
        return store.txn(self.compares, self.ops)
