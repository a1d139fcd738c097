"""The key-value contract every backend honours.

The plugin keeps all of its state in one key-value store so that a restarted daemon, a
second host or an operator's CLI all see the same truth. The contract is the one etcd v3
offers (revisions, compare-and-swap on a key's mod revision, all-or-nothing transactions,
watches that replay from a revision), so that the embedded SQLite backend and the etcd
backend of a later issue are interchangeable behind it.

Rules that keep backends interchangeable:
- a revision is an opaque, increasing int; a write transaction bumps it exactly once;
- the only compare is "key's mod_rev equals N" (0 means "key absent");
- a failed compare is not an error: ``TxnResult.succeeded`` is False and the caller re-reads;
- values are bytes of at most ``MAX_VALUE`` bytes, transactions hold at most ``MAX_TXN_OPS`` ops.

Leases (``grant``/``keepalive``/``revoke``, ``Put(..., lease=id)``) let a key die with its
writer: a daemon holds its host record under a lease, and when it stops refreshing it the key is
deleted and watchers get a DELETE event, so other hosts learn it is gone. The contract is the
part every backend can honour, deliberately no more than a Consul session can do:

- ``grant(ttl)`` returns an opaque lease id; the backend may round ``ttl`` up to its minimum
  (etcd 3.4: about 2 s with the default election timeout; Consul sessions: 10 s) and reports the
  TTL it really applies from ``keepalive``;
- a leased key lives at least ``ttl`` seconds after the last successful ``keepalive``, and is
  deleted, with a DELETE event, within a bounded time after that (Consul: up to about 2 x TTL),
  never earlier; expiry deletes every key attached to the lease, each as a DELETE event;
- ``keepalive`` of an expired or revoked lease raises ``LeaseNotFound`` (the holder must grant a
  new one and re-put its keys); ``revoke`` is idempotent and deletes the lease's keys now;
- writing a key with an unknown lease raises ``LeaseNotFound`` and writes nothing; re-putting a
  key attaches it to the new lease (or to none) and detaches it from the old one;
- no lease-based locks, no lease in compares, no "keys of lease" listing: etcd has them, a
  Consul session backend (``behavior=delete``, ``acquire=`` per leased key, ``renew``,
  ``destroy``) would have to emulate them, and nothing here needs them.

Backends that emulate expiry (SQLite, memory) expire lazily on every read and write; a daemon
also calls ``expire_leases`` periodically so that watchers see the DELETE of a key nobody reads.
etcd (and Consul) expire on the server and need no such call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

MAX_VALUE = 256 * 1024
MAX_TXN_OPS = 64
# Revisions of history every backend keeps for watch replay; older ones are compacted away on
# write (etcd's revision-based auto-compaction), so history costs a bounded amount of memory or
# disk however long the daemon runs. A watcher further behind than this gets ``Compacted``.
DEFAULT_HISTORY = 10_000


class StoreError(Exception):
    """Base class of every store failure."""


class Unavailable(StoreError):
    """The backend could not be reached; the operation had no effect and may be retried."""


class Indeterminate(StoreError):
    """The operation may or may not have been applied (a timeout mid-commit): re-read to settle."""


class Compacted(StoreError):
    """A watch asked for history older than the backend keeps; the caller must relist."""

    def __init__(self, compact_rev: int) -> None:
        super().__init__(f"revision compacted up to {compact_rev}")
        self.compact_rev = compact_rev


class TooLarge(StoreError):
    """A value or a transaction is over the portable limits."""


class LeaseNotFound(StoreError):
    """The lease expired, was revoked or never existed: grant a new one and write the keys again."""

    def __init__(self, lease: int) -> None:
        super().__init__(f"lease {lease:x} not found (expired or revoked)")
        self.lease = lease


@dataclass(frozen=True)
class KV:
    """One key as read: its value and the revisions that CAS and watches are built on."""

    key: str
    value: bytes
    mod_rev: int
    create_rev: int
    version: int
    lease: int = 0  # the lease the key dies with (0: none)


@dataclass(frozen=True)
class Cmp:
    """Succeeds when ``key``'s mod revision is ``mod_rev`` (0: the key does not exist)."""

    key: str
    mod_rev: int


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0  # 0: the key lives until deleted


@dataclass(frozen=True)
class Delete:
    key: str


Op = Put | Delete


@dataclass(frozen=True)
class TxnResult:
    """Outcome of a conditional write; ``failed`` holds the current KV (or None) of each failed compare."""

    succeeded: bool
    revision: int
    failed: list[tuple[str, KV | None]] = field(default_factory=list)


@dataclass(frozen=True)
class Event:
    type: Literal["PUT", "DELETE"]
    key: str
    value: bytes
    revision: int


class Store(Protocol):
    """Synchronous key-value store. Calls may block on I/O: the daemon runs them in worker threads."""

    def get(self, key: str) -> KV | None: ...

    def list(self, prefix: str, *, limit: int | None = None, start_after: str | None = None
             ) -> tuple[list[KV], int]:
        """Keys under ``prefix`` in key order, and the revision of that snapshot."""
        ...

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Unconditional write; returns the new store revision."""
        ...

    def cas(self, key: str, value: bytes, expect_mod_rev: int, *, lease: int = 0) -> TxnResult:
        """Write only if the key's mod revision is ``expect_mod_rev`` (0 = create if absent)."""
        ...

    def delete(self, key: str, *, expect_mod_rev: int | None = None) -> TxnResult:
        """Delete (conditionally). Deleting an absent key succeeds: deletes are idempotent."""
        ...

    def txn(self, compares: Sequence[Cmp], ops: Sequence[Op]) -> TxnResult:
        """Apply every op if every compare holds, atomically, as one revision."""
        ...

    def revision(self) -> int: ...

    def watch(self, prefix: str, from_rev: int, *, timeout: float | None = None) -> Iterator[Event]:
        """Events under ``prefix`` with revision >= ``from_rev``, in order; blocks for new ones.

        Ends after ``timeout`` seconds without a new event (None: never). Raises ``Compacted``
        when ``from_rev`` is older than the retained history.
        """
        ...

    def compact(self, revision: int) -> None:
        """Forget history older than ``revision``."""
        ...

    def grant(self, ttl: int) -> int:
        """A new lease of at least ``ttl`` seconds (the backend may round up); its id."""
        ...

    def keepalive(self, lease: int) -> int:
        """Restart the lease's TTL; returns the TTL applied. ``LeaseNotFound`` if it expired."""
        ...

    def revoke(self, lease: int) -> None:
        """End the lease now, deleting its keys (with DELETE events). Unknown leases: no-op."""
        ...

    def expire_leases(self) -> None:
        """Delete the keys of leases that ran out, now (a no-op where the server does it)."""
        ...

    def close(self) -> None: ...


def check_limits(ops: Sequence[Op]) -> None:
    """Reject what another backend could not take, so that code tested on SQLite runs on etcd."""
    if len(ops) > MAX_TXN_OPS:
        raise TooLarge(f"transaction has {len(ops)} ops, at most {MAX_TXN_OPS} are portable")
    for op in ops:
        if isinstance(op, Put) and len(op.value) > MAX_VALUE:
            raise TooLarge(f"value of {op.key!r} is {len(op.value)} bytes, at most {MAX_VALUE}")


def check_txn(compares: Sequence[Cmp], ops: Sequence[Op]) -> None:
    """``check_limits`` plus etcd's rule that a key appears at most once among a txn's ops.

    etcd rejects a txn that puts and deletes the same key; rejecting it here too keeps code
    that was only ever run against SQLite from failing on its first etcd deployment.
    """
    check_limits(ops)
    seen: set[str] = set()
    for op in ops:
        if op.key in seen:
            raise ValueError(f"key {op.key!r} appears twice in one transaction")
        seen.add(op.key)
    for op in ops:
        if isinstance(op, Put) and op.lease < 0:
            raise ValueError(f"put of {op.key!r} names a negative lease {op.lease}")
    for cmp in compares:
        if cmp.mod_rev < 0:
            raise ValueError(f"compare on {cmp.key!r} expects a negative revision {cmp.mod_rev}")


def check_ttl(ttl: int) -> int:
    """A lease TTL every backend can grant: whole seconds, 1 s to a day."""
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 86400:
        raise ValueError(f"lease TTL {ttl!r} is not a whole number of seconds in 1..86400")
    return ttl


def prefix_end(prefix: str) -> str | None:
    """Smallest key greater than every key starting with ``prefix`` (None: no upper bound).

    Backends turn a prefix list into the range ``prefix <= key < prefix_end`` so that it can use
    the key index; code-point order here equals SQLite's BINARY (UTF-8 memcmp) order.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code == 0xD800:  # surrogates cannot be encoded; the next encodable code point is U+E000
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


class TxnShortcuts:
    """put/cas/delete expressed through ``txn``, so a backend implements writes only once."""

    def txn(self, compares: Sequence[Cmp], ops: Sequence[Op]) -> TxnResult:
        raise NotImplementedError

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return self.txn([], [Put(key, value, lease)]).revision

    def cas(self, key: str, value: bytes, expect_mod_rev: int, *, lease: int = 0) -> TxnResult:
        return self.txn([Cmp(key, expect_mod_rev)], [Put(key, value, lease)])

    def delete(self, key: str, *, expect_mod_rev: int | None = None) -> TxnResult:
        compares = [] if expect_mod_rev is None else [Cmp(key, expect_mod_rev)]
        return self.txn(compares, [Delete(key)])
