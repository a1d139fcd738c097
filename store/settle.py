"""Writes whose outcome is unknown are settled by reading them back, never by guessing.

A backend raises ``Indeterminate`` when a write may or may not have committed (etcd: the member
died or the deadline passed mid-commit; it sends no abort on an election). Treating that as
"failed" leaks what did commit (calico#5203: addresses leaked on etcd trouble); treating it as
"done" loses what did not. The network manager's records are specific to their owner (a
network record holds its id and spec, an endpoint record its id, MAC and addresses), so reading
the written keys back answers the question:

- every put holds exactly our bytes and every deleted key is absent: the write landed;
- otherwise it did not (a linearizable read after the failure sees every commit that will ever
  happen for it), and it is sent again, still guarded by its own compares, so that a late first
  commit makes the resend fail instead of applying twice. A failed compare is then an ordinary
  ``TxnResult(succeeded=False)``: the caller re-reads, as after any lost race.

If the store cannot even be read back, the outcome stays unknown and ``Indeterminate`` goes up,
saying so; the reconciling agent completes or removes the half-made object later (the records
are written before the kernel objects, and removed after them).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Sequence

from store.base import (
    KV,
    Cmp,
    Event,
    Indeterminate,
    Op,
    Put,
    Store,
    StoreError,
    TxnResult,
    TxnShortcuts,
)

SETTLE_ROUNDS = 3  # resends after an unknown outcome before the caller is told it is unknown


class SettlingStore(TxnShortcuts):
    """A ``Store`` whose writes never end in ``Indeterminate`` when reading back can settle them."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def txn(self, compares: Sequence[Cmp], ops: Sequence[Op]) -> TxnResult:
        unknown: Indeterminate | None = None
        for _ in range(SETTLE_ROUNDS):
            try:
                return self.inner.txn(compares, ops)
            except Indeterminate as err:
                unknown = err
            landed = self._landed(ops, unknown)
            if landed is not None:
                return TxnResult(True, landed)
        assert unknown is not None
        raise unknown

    def _landed(self, ops: Sequence[Op], unknown: Indeterminate) -> int | None:
        """The revision our writes are visible at, or None if they are not all there."""
        revs = [0]
        try:
            for op in ops:
                kv = self.inner.get(op.key)
                if isinstance(op, Put):
                    if kv is None or kv.value != op.value or kv.lease != op.lease:
                        return None
                    revs.append(kv.mod_rev)
                elif kv is not None:
                    return None
            return max(revs) if len(revs) > 1 else self.inner.revision()
        except StoreError as err:
            raise Indeterminate(f"{unknown}; reading it back to settle failed too: {err}") from err

    # -- reads pass through -------------------------------------------------------------------

    def get(self, key: str) -> KV | None:
        return self.inner.get(key)

    def list(self, prefix: str, *, limit: int | None = None, start_after: str | None = None
             ) -> tuple[builtins.list[KV], int]:
        return self.inner.list(prefix, limit=limit, start_after=start_after)

    def revision(self) -> int:
        return self.inner.revision()

    def watch(self, prefix: str, from_rev: int, *, timeout: float | None = None) -> Iterator[Event]:
        return self.inner.watch(prefix, from_rev, timeout=timeout)

    def compact(self, revision: int) -> None:
        self.inner.compact(revision)

    def grant(self, ttl: int) -> int:
        return self.inner.grant(ttl)

    def keepalive(self, lease: int) -> int:
        return self.inner.keepalive(lease)

    def revoke(self, lease: int) -> None:
        self.inner.revoke(lease)

    def expire_leases(self) -> None:
        self.inner.expire_leases()

    def close(self) -> None:
        self.inner.close()

