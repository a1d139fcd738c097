"""etcd v3 backend of the store contract, with failover across the members of one cluster.

Several hosts share their state through etcd (design/store.md, section 0). We talk gRPC through
aetcd's generated stubs (``aetcd.rpc``, aetcd pinned in setup.cfg) rather than its high-level
``Client``: that client has no per-call deadline, no range limit, one endpoint only, and a
watch that dies with its member. What this module adds, and why:

- **One private event loop** in a daemon thread. grpc.aio is asyncio; the daemon calls the store
  synchronously from worker threads, so each call is a coroutine submitted with
  ``run_coroutine_threadsafe`` and waited for.
- **Failover.** A read, or a write that certainly was not sent, is retried on the next member
  until a bounded deadline; then ``Unavailable`` names every endpoint. Losing one member of
  three, the leader included, costs one election and is invisible to callers.
- **Unknown outcomes are settled, never guessed.** A write that timed out or lost its connection
  mid-call may have committed (etcd sends no abort on an election). Before resending, we read
  the history between the last revision this client had seen and now: if our exact effect is
  there, the first attempt won. Otherwise the resend is guarded by the mod revisions of every
  key it writes, as read in that snapshot, so a late commit of the first attempt makes the
  resend fail instead of applying twice, and we settle again. If history was compacted in
  between, ``Indeterminate``.
- **Watches resume.** A broken stream (its member died) is reopened on another member from the
  last delivered revision + 1: no event lost, none repeated. Falling behind compaction raises
  ``Compacted`` so the caller relists. Streams ask for a leader (``hasleader``) so a member
  cut off from the quorum ends the stream instead of going silent.
- **Leases are etcd's own** (Lease service: grant, one keepalive round trip on a short-lived
  LeaseKeepAlive stream, revoke); etcd expires them and sends the DELETE events itself, so
  ``expire_leases`` does nothing. etcd rounds a TTL up to its minimum (1.5 x election timeout).
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

from store.base import (
    KV,
    Cmp,
    Compacted,
    Delete,
    Event,
    Indeterminate,
    LeaseNotFound,
    Op,
    Put,
    StoreError,
    TooLarge,
    TxnResult,
    TxnShortcuts,
    Unavailable,
    check_ttl,
    check_txn,
    prefix_end,
)

OP_TIMEOUT = 2.0  # one RPC on one member; a dead member costs at most this much
DEADLINE = 15.0  # a whole call with failover: several elections (1 s each by default) fit
_BACKOFF = (0.05, 0.1, 0.2, 0.4, 0.8)  # pauses between rounds over all members, capped
_LEADER = (("hasleader", "true"),)  # etcd's require-leader: streams end when a member loses quorum
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN,
              grpc.StatusCode.CANCELLED}
# gRPC's default reconnect backoff grows to 120 s: after a long outage of the whole cluster every
# call would fail fast for up to two minutes after the members are back. Capped at 1 s, a restored
# cluster is used within about a second (issue 7 item 6: service resumes with no restart).
_CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 1000))
_NOT_SENT = ("failed to connect", "connection refused", "connections to all backends failing")


def parse_endpoints(spec: str) -> list[str]:
    """``h1:2379,h2:2379`` -> ``["h1:2379", "h2:2379"]``; a clear ValueError naming the bad part."""
    endpoints = []
    for part in spec.split(","):
        part = part.strip()
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"etcd endpoint {part!r} is not host:port")
        endpoints.append(part)
    if not endpoints:
        raise ValueError("etcd store needs at least one host:port")
    return endpoints


class _Broken(Exception):
    """A watch stream ended without an error status (member shut down, stream cancelled)."""


@dataclass
class _Unknown:
    """A write attempt whose outcome we do not know; what it was sent after."""

    error: BaseException
    seen_rev: int


def _not_sent(err: grpc.aio.AioRpcError) -> bool:
    details = (err.details() or "").lower()
    return err.code() == grpc.StatusCode.UNAVAILABLE and any(s in details for s in _NOT_SENT)


class EtcdStore(TxnShortcuts):
    """``store.base.Store`` on an etcd v3 cluster; ``root`` is prepended to every key."""

    def __init__(self, endpoints: Sequence[str], *, root: str = "", op_timeout: float = OP_TIMEOUT,
                 deadline: float = DEADLINE) -> None:
        self.endpoints = list(endpoints)
        if not self.endpoints:
            raise ValueError("etcd store needs at least one endpoint")
        self._root = root
        self._op_timeout = op_timeout
        self._deadline = deadline
        self._preferred = 0  # the member that last answered; loop thread only
        self._seen_rev = 0  # highest header revision seen; every later commit is above it
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._watches: set[queue.Queue[Any]] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="etcd-store", daemon=True)
        self._thread.start()

    # -- plumbing ----------------------------------------------------------------------------

    def _run(self, coro: Awaitable[Any], *, write: bool = False) -> Any:
        if self._closed:
            raise RuntimeError("store is closed")
        fut: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(
            coro, self._loop)  # type: ignore[arg-type]
        try:
            # Every await inside is bounded; this outer bound only guards against a bug there.
            return fut.result(timeout=2 * self._deadline + 4 * self._op_timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            cls = Indeterminate if write else Unavailable
            raise cls(f"etcd at {self._where()}: no answer within {2 * self._deadline:.0f}s") from None

    def _where(self) -> str:
        return ",".join(self.endpoints)

    def _channel(self, i: int) -> grpc.aio.Channel:
        ch = self._channels.get(i)
        if ch is None:
            ch = self._channels[i] = rpc.insecure_channel(self.endpoints[i], options=_CHANNEL_OPTIONS)
        return ch

    def _k(self, key: str) -> bytes:
        return (self._root + key).encode()

    def _range(self, prefix: str) -> tuple[bytes, bytes]:
        full = self._root + prefix
        end = prefix_end(full)
        return (full.encode() or b"\0"), (b"\0" if end is None else end.encode())

    def _kv(self, kv: Any) -> KV:
        return KV(kv.key.decode()[len(self._root):], bytes(kv.value), kv.mod_revision, kv.create_revision,
                  kv.version, kv.lease)

    def _note(self, header: Any) -> int:
        self._seen_rev = max(self._seen_rev, header.revision)
        return int(header.revision)

    def _translate(self, err: grpc.aio.AioRpcError) -> StoreError | ValueError:
        code, details = err.code(), err.details() or ""
        if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
            return LeaseNotFound(0)  # the caller knows which lease and says so
        if code == grpc.StatusCode.INVALID_ARGUMENT and "too large" not in details:
            return ValueError(f"etcd refused the request: {details}")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED or "too large" in details:
            return TooLarge(f"etcd refused the request as too large: {details}")
        return StoreError(f"etcd at {self._where()}: {code.name}: {details}")

    def _unavailable(self, last: BaseException | None) -> Unavailable:
        why = last.details() if isinstance(last, grpc.aio.AioRpcError) else last  # type: ignore[union-attr]
        return Unavailable(f"etcd unreachable at {self._where()} within {self._deadline:g}s (last error: {why})")

    async def _each_member(self, deadline: float) -> Any:
        """Yield member indexes, preferred first, round after round, pausing between rounds."""
        n, rounds = len(self.endpoints), 0
        while self._loop.time() < deadline:
            start = self._preferred
            for step in range(n):
                if self._loop.time() >= deadline:
                    return
                yield (start + step) % n
            await asyncio.sleep(_BACKOFF[min(rounds, len(_BACKOFF) - 1)])
            rounds += 1

    def _budget(self, deadline: float) -> float:
        return max(0.05, min(self._op_timeout, deadline - self._loop.time()))

    async def _read(self, call: Callable[[Any, float], Awaitable[Any]], stub: Any = None) -> Any:
        """Run an idempotent call on members in turn until one answers or the deadline passes.

        ``stub`` is the service's stub class (KV by default; the Lease calls pass LeaseStub).
        """
        deadline = self._loop.time() + self._deadline
        last: BaseException | None = None
        async for i in self._each_member(deadline):
            try:
                resp = await call((stub or rpc.KVStub)(self._channel(i)), self._budget(deadline))
            except grpc.aio.AioRpcError as err:
                if err.code() not in _RETRYABLE:
                    raise self._translate(err) from err
                last = err
                self._preferred = (i + 1) % len(self.endpoints)
                continue
            self._preferred = i
            if hasattr(resp, "header"):
                self._note(resp.header)
            return resp
        raise self._unavailable(last)

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: str) -> KV | None:
        req = rpc.RangeRequest(key=self._k(key))
        resp = self._run(self._read(lambda kv, t: kv.Range(req, timeout=t)))
        return self._kv(resp.kvs[0]) if resp.kvs else None

    def list(self, prefix: str, *, limit: int | None = None, start_after: str | None = None
             ) -> tuple[builtins.list[KV], int]:
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0 (0 or None: no limit)")
        key, end = self._range(prefix)
        if start_after is not None and start_after >= prefix:
            key = self._k(start_after) + b"\0"  # the next key after the cursor in byte order
        req = rpc.RangeRequest(key=key, range_end=end, limit=limit or 0)
        resp = self._run(self._read(lambda kv, t: kv.Range(req, timeout=t)))
        return [self._kv(kv) for kv in resp.kvs], int(resp.header.revision)

    def revision(self) -> int:
        req = rpc.RangeRequest(key=b"\0", count_only=True)
        return int(self._run(self._read(lambda kv, t: kv.Range(req, timeout=t))).header.revision)

    # -- writes ------------------------------------------------------------------------------

    def txn(self, compares: Sequence[Cmp], ops: Sequence[Op]) -> TxnResult:
        check_txn(compares, ops)
        try:
            return self._run(self._txn(list(compares), list(ops)), write=True)  # type: ignore[no-any-return]
        except LeaseNotFound:
            leases = sorted({op.lease for op in ops if isinstance(op, Put) and op.lease})
            raise LeaseNotFound(leases[0] if leases else 0) from None

    # -- leases ------------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        # Not idempotent, but a resend after a lost answer only leaves an unused lease to expire.
        req = rpc.LeaseGrantRequest(TTL=check_ttl(ttl), ID=0)
        resp = self._run(self._read(lambda stub, t: stub.LeaseGrant(req, timeout=t), rpc.LeaseStub))
        if resp.error:
            raise StoreError(f"etcd at {self._where()}: lease grant refused: {resp.error}")
        return int(resp.ID)

    def keepalive(self, lease: int) -> int:
        async def once(stub: Any, budget: float) -> Any:
            call = stub.LeaseKeepAlive()
            try:
                async with asyncio.timeout(budget):
                    await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
                    resp = await call.read()
            except TimeoutError as err:
                raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(),
                                           grpc.aio.Metadata(), details="keepalive: no answer") from err
            finally:
                call.cancel()
            if resp is grpc.aio.EOF:
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                           details="keepalive stream ended")
            return resp

        resp = self._run(self._read(once, rpc.LeaseStub))
        if resp.TTL <= 0:
            raise LeaseNotFound(lease)
        return int(resp.TTL)

    def revoke(self, lease: int) -> None:
        req = rpc.LeaseRevokeRequest(ID=lease)
        try:
            self._run(self._read(lambda stub, t: stub.LeaseRevoke(req, timeout=t), rpc.LeaseStub))
        except LeaseNotFound:
            return  # expired or revoked already: revoke is idempotent

    def expire_leases(self) -> None:
        """etcd expires leases on the server and sends the DELETE events itself."""

    def _request(self, compares: Sequence[Cmp], ops: Sequence[Op]) -> Any:
        success = [rpc.RequestOp(request_put=rpc.PutRequest(key=self._k(op.key), value=op.value, lease=op.lease))
                   if isinstance(op, Put) else
                   rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=self._k(op.key)))
                   for op in ops]
        # The failure branch reads every compared key in the same revision, for TxnResult.failed.
        failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=self._k(c.key))) for c in compares]
        return rpc.TxnRequest(
            compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, key=self._k(c.key),
                                 mod_revision=c.mod_rev) for c in compares],
            success=success, failure=failure)

    async def _txn(self, compares: builtins.list[Cmp], ops: builtins.list[Op]) -> TxnResult:
        deadline = self._loop.time() + self._deadline
        guards: builtins.list[Cmp] = []  # added after an unknown outcome, see the module docstring
        unknown: _Unknown | None = None
        last: BaseException | None = None
        async for i in self._each_member(deadline):
            kv = rpc.KVStub(self._channel(i))
            try:
                if unknown is not None:
                    settled = await self._settle(i, ops, unknown.seen_rev, deadline)
                    if isinstance(settled, int):
                        return TxnResult(True, settled)
                    snapshot_rev, snapshot = settled
                    guards = [Cmp(op.key, snap_kv.mod_rev if (snap_kv := snapshot[op.key]) else 0) for op in ops]
                    unknown = None
                    sent_after = snapshot_rev
                else:
                    sent_after = self._seen_rev
                resp = await kv.Txn(self._request(compares + guards, ops), timeout=self._budget(deadline))
            except grpc.aio.AioRpcError as err:
                if err.code() not in _RETRYABLE:
                    raise self._translate(err) from err
                last = err
                self._preferred = (i + 1) % len(self.endpoints)
                if unknown is None and not _not_sent(err):
                    unknown = _Unknown(err, sent_after)
                continue
            self._preferred = i
            rev = self._note(resp.header)
            if resp.succeeded:
                return TxnResult(True, rev)
            current = [self._kv(r.response_range.kvs[0]) if r.response_range.kvs else None
                       for r in resp.responses]
            mods = [kv_.mod_rev if kv_ else 0 for kv_ in current]
            if any(mods[len(compares) + j] != g.mod_rev for j, g in enumerate(guards)):
                # A key we write changed since the snapshot, perhaps through our own first attempt
                # committing late: settle again from that snapshot before saying anything.
                unknown = _Unknown(StoreError("a key written changed since the last settle"), sent_after)
                continue
            failed = [(c.key, current[j]) for j, c in enumerate(compares) if mods[j] != c.mod_rev]
            return TxnResult(False, rev, failed)
        if unknown is not None:
            raise Indeterminate(f"etcd at {self._where()}: write outcome unknown after {self._deadline:g}s "
                                f"({unknown.error}); read the keys back to settle")
        raise self._unavailable(last)

    async def _settle(self, i: int, ops: builtins.list[Op], seen_rev: int, deadline: float
                      ) -> int | tuple[int, dict[str, KV | None]]:
        """Did ``ops`` commit after ``seen_rev``? Its revision if so, else a snapshot to guard a resend.

        Our commit, if any, is a revision above ``seen_rev`` whose events on the keys we write
        are exactly our puts (same values) plus deletes of some of our deleted keys.
        """
        kv = rpc.KVStub(self._channel(i))
        snap = await kv.Txn(rpc.TxnRequest(success=[rpc.RequestOp(request_range=rpc.RangeRequest(
            key=self._k(op.key))) for op in ops]), timeout=self._budget(deadline))
        now = self._note(snap.header)
        current = {op.key: (self._kv(r.response_range.kvs[0]) if r.response_range.kvs else None)
                   for op, r in zip(ops, snap.responses, strict=True)}
        if now > seen_rev and ops:
            history = await self._history(i, [op.key for op in ops], seen_rev + 1, now, deadline)
            puts = {op.key: op.value for op in ops if isinstance(op, Put)}
            deletes = {op.key for op in ops if isinstance(op, Delete)}
            for rev, events in history.items():
                got_puts = {e.key: e.value for e in events if e.type == "PUT"}
                got_deletes = {e.key for e in events if e.type == "DELETE"}
                if got_puts == puts and got_deletes <= deletes and events:
                    return rev
        return now, current

    async def _history(self, i: int, keys: builtins.list[str], first: int, last: int, deadline: float
                       ) -> dict[int, builtins.list[Event]]:
        """Events on ``keys`` with revisions ``first..last``, grouped by revision.

        The watch covers the whole keyspace: every revision has at least one event, so the
        event of revision ``last`` is what tells us the window is complete. (etcd 3.4.23's
        progress notices can overtake history not yet sent, etcd-io/etcd#15220, so they can't.)
        The window is the few revisions written while our call was unanswered.
        """
        wanted = {self._k(k) for k in keys}
        call = rpc.WatchStub(self._channel(i)).Watch(metadata=_LEADER)
        found: dict[int, builtins.list[Event]] = {}
        try:
            async with asyncio.timeout(self._budget(deadline)):
                await call.write(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                    key=b"\0", range_end=b"\0", start_revision=first)))
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF or (resp.canceled and not resp.compact_revision):
                        raise _Broken("history stream ended")
                    if resp.compact_revision:
                        raise Indeterminate(f"etcd at {self._where()}: write outcome unknown and history "
                                            f"compacted up to {resp.compact_revision}")
                    for ev in resp.events:
                        if ev.kv.key in wanted and ev.kv.mod_revision <= last:
                            found.setdefault(ev.kv.mod_revision, []).append(self._event(ev))
                    if resp.events and resp.events[-1].kv.mod_revision >= last:
                        return found  # one revision's events come in one response
        except (TimeoutError, _Broken) as err:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       details=f"reading history: {err!r}") from err
        finally:
            call.cancel()

    def _event(self, ev: Any) -> Event:
        key = ev.kv.key.decode()[len(self._root):]
        if ev.type == rpc.Event.DELETE:
            return Event("DELETE", key, b"", ev.kv.mod_revision)
        return Event("PUT", key, bytes(ev.kv.value), ev.kv.mod_revision)

    # -- history -----------------------------------------------------------------------------

    def watch(self, prefix: str, from_rev: int, *, timeout: float | None = None) -> Iterator[Event]:
        if self._closed:
            raise RuntimeError("store is closed")
        key, end = self._range(prefix)
        q: queue.Queue[Any] = queue.Queue()
        with self._lock:
            self._watches.add(q)
        fut = asyncio.run_coroutine_threadsafe(self._stream(key, end, max(from_rev, 1), q), self._loop)
        return self._drain(q, fut, timeout)

    def _drain(self, q: queue.Queue[Any], fut: concurrent.futures.Future[None], timeout: float | None
               ) -> Iterator[Event]:
        try:
            while True:
                try:
                    item = q.get(timeout=timeout)
                except queue.Empty:
                    return
                if item is None:  # the store was closed
                    return
                if isinstance(item, BaseException):
                    raise item
                yield from item
        finally:
            fut.cancel()
            with self._lock:
                self._watches.discard(q)

    async def _stream(self, key: bytes, end: bytes, next_rev: int, q: queue.Queue[Any]) -> None:
        """Feed ``q`` with event batches, resuming on another member whenever a stream breaks."""
        last: BaseException | None = None
        failing_since: float | None = None
        i = self._preferred
        rounds = 0
        while True:
            call = rpc.WatchStub(self._channel(i)).Watch(metadata=_LEADER)
            try:
                await asyncio.wait_for(call.write(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                    key=key, range_end=end, start_revision=next_rev))), self._op_timeout)
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        raise _Broken("stream ended")
                    if resp.compact_revision:
                        q.put(Compacted(int(resp.compact_revision)))
                        return
                    if resp.canceled:
                        raise _Broken(f"watch cancelled: {resp.cancel_reason}")
                    failing_since, rounds = None, 0
                    if resp.events:
                        batch = [self._event(ev) for ev in resp.events]
                        next_rev = batch[-1].revision + 1
                        q.put(batch)
            except (grpc.aio.AioRpcError, _Broken, TimeoutError) as err:
                last = err
            finally:
                call.cancel()
            now = self._loop.time()
            failing_since = now if failing_since is None else failing_since
            if now - failing_since > self._deadline:
                q.put(self._unavailable(last))
                return
            i = (i + 1) % len(self.endpoints)
            if i == self._preferred:
                await asyncio.sleep(_BACKOFF[min(rounds, len(_BACKOFF) - 1)])
                rounds += 1

    def compact(self, revision: int) -> None:
        req = rpc.CompactionRequest(revision=revision, physical=True)
        try:
            self._run(self._read(lambda kv, t: kv.Compact(req, timeout=t)))
        except StoreError as err:
            if "compacted" in str(err):
                return  # already compacted at or past ``revision``
            if "future revision" in str(err):
                raise ValueError(f"cannot compact at {revision}: it is past the store's revision") from err
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            for q in self._watches:
                q.put(None)

        async def shut() -> None:
            for ch in self._channels.values():
                await ch.close()

        try:
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=self._op_timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=self._op_timeout)
