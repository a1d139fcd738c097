"""The daemon's view of its store during an outage: failures name the store, and fail fast.

Issue 7 item 6. When the store is unreachable, every call into a backend waits out that
backend's own failover deadline (etcd: 15 s of retries across every member) before it raises
``Unavailable``. Two things follow that this wrapper fixes, without the backends knowing:

- **The error must say which store.** dockerd shows our ``Err`` verbatim; "etcd unreachable at
  h1,h2" does not tell an operator it is the cnmkit *state store* that is away. Every
  ``StoreError`` leaving here starts with ``store <url>: `` and is one line.
- **One slow probe at a time.** While the store is known to be down, the first caller (a
  request, or the periodic reconcile pass) probes it by making its call for real; callers that
  arrive meanwhile wait for that probe's verdict instead of starting their own, and share it:
  a failed probe fails them too. Without this, each request of an outage holds a worker thread
  for the backend's full deadline and the requests queued behind it wait for multiples of it.
  With it, a request is answered within one deadline, and service resumes on the first call
  that reaches the store again: no restart, no timer.

Nothing here retries a write or changes what a backend promises: ``Indeterminate`` still means
"re-read to settle" (``store.settle``), and a CAS conflict is still a plain ``TxnResult``.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from store.base import (
    KV,
    Cmp,
    Compacted,
    Event,
    Indeterminate,
    Op,
    Store,
    StoreError,
    TooLarge,
    TxnResult,
    Unavailable,
)

T = TypeVar("T")



def display_url(url: str) -> str:
    """The URL as an operator wrote it, minus any password, for messages and logs."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}" if user else netloc))


def _one_line(text: str) -> str:
    return " ".join(text.split())


class GuardedStore:
    """A ``Store`` that names itself in every failure and lets one caller probe while it is down."""

    def __init__(self, inner: Store, url: str) -> None:
        self.inner = inner
        self.url = display_url(url)
        self._cond = threading.Condition()
        self._down: Unavailable | None = None       # the error that showed the store down
        self._probing = False
        self._probes = 0                            # probes finished, so a waiter knows its one ended
        self.waiting = 0                            # callers waiting for a probe's verdict (tests read it)

    # -- the guard ---------------------------------------------------------------------------

    @property
    def down(self) -> bool:
        """True while the last call that reached for the store found it unreachable."""
        return self._down is not None

    def _named(self, err: StoreError) -> StoreError:
        """The same error class, its message prefixed with the store (once)."""
        text = _one_line(str(err))
        if text.startswith(f"store {self.url}: "):
            return err
        if isinstance(err, Unavailable):
            return Unavailable(f"store {self.url}: unavailable ({text})")
        if isinstance(err, Indeterminate):
            return Indeterminate(f"store {self.url}: write outcome unknown ({text})")
        if isinstance(err, Compacted):
            return err                                  # carries compact_rev; callers relist, nobody reads it
        if isinstance(err, TooLarge):
            return TooLarge(f"store {self.url}: {text}")
        return StoreError(f"store {self.url}: {text}")

    def _call(self, fn: Callable[[], T]) -> T:
        probe = self._admit()
        try:
            result = fn()
        except (Unavailable, Indeterminate) as err:
            named = self._named(err)
            self._settle_probe(probe, named if isinstance(named, Unavailable) else Unavailable(
                f"store {self.url}: unavailable (last write: {_one_line(str(err))})"))
            raise named from err
        except StoreError as err:
            self._settle_probe(probe, None)         # the store answered (a refusal is an answer)
            named = self._named(err)
            if named is err:
                raise
            raise named from err
        except BaseException:
            self._settle_probe(probe, self._down)   # a bug or a cancel proves nothing either way
            raise
        self._settle_probe(probe, None)
        return result

    def _admit(self) -> bool:
        """May this call go to the store? True: it is the probe. Raises with a failed probe's verdict."""
        with self._cond:
            if self._down is None:
                return False
            if self._probing:
                probe = self._probes
                self.waiting += 1
                try:
                    while self._probes == probe:
                        self._cond.wait()           # the probe's verdict is ours too
                finally:
                    self.waiting -= 1
                if self._down is not None:
                    raise Unavailable(str(self._down))
                return False
            self._probing = True
            return True

    def _settle_probe(self, probe: bool, down: Unavailable | None) -> None:
        with self._cond:
            self._down = down
            if probe:
                self._probing = False
                self._probes += 1
            self._cond.notify_all()

    # -- the Store contract ------------------------------------------------------------------

    def get(self, key: str) -> KV | None:
        return self._call(lambda: self.inner.get(key))

    def list(self, prefix: str, *, limit: int | None = None, start_after: str | None = None
             ) -> tuple[builtins.list[KV], int]:
        return self._call(lambda: self.inner.list(prefix, limit=limit, start_after=start_after))

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return self._call(lambda: self.inner.put(key, value, lease=lease))

    def cas(self, key: str, value: bytes, expect_mod_rev: int, *, lease: int = 0) -> TxnResult:
        return self._call(lambda: self.inner.cas(key, value, expect_mod_rev, lease=lease))

    def delete(self, key: str, *, expect_mod_rev: int | None = None) -> TxnResult:
        return self._call(lambda: self.inner.delete(key, expect_mod_rev=expect_mod_rev))

    def txn(self, compares: Sequence[Cmp], ops: Sequence[Op]) -> TxnResult:
        return self._call(lambda: self.inner.txn(compares, ops))

    def revision(self) -> int:
        return self._call(self.inner.revision)

    def watch(self, prefix: str, from_rev: int, *, timeout: float | None = None) -> Iterator[Event]:
        try:
            yield from self.inner.watch(prefix, from_rev, timeout=timeout)
        except StoreError as err:
            named = self._named(err)
            if named is err:
                raise
            raise named from err

    def compact(self, revision: int) -> None:
        self._call(lambda: self.inner.compact(revision))

    def grant(self, ttl: int) -> int:
        return self._call(lambda: self.inner.grant(ttl))

    def keepalive(self, lease: int) -> int:
        return self._call(lambda: self.inner.keepalive(lease))

    def revoke(self, lease: int) -> None:
        self._call(lambda: self.inner.revoke(lease))

    def expire_leases(self) -> None:
        self._call(self.inner.expire_leases)

    def close(self) -> None:
        self.inner.close()
