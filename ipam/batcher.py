"""Coalesces concurrent dynamic RequestAddress calls on one pool into one worker job.

Why: every allocation on a pool is serialised by the pool (its cursor is one record), and on
SQLite each commit then pays a WAL fsync; on etcd a round trip. Sent one by one through the
worker pool, 16 concurrent clients queue on the pool lock, each holding one of the few worker
threads, and get one commit each. Here the event loop keeps, per pool, at most one job in the
workers; requests arriving while it runs wait in a list, and the next job takes them all and
allocates them with ``IpamService.request_addresses`` (a few CAS txns for the lot). One client
alone sees no difference: its request starts a job at once.

Lives on the event loop thread only (no locks): ``request_address`` runs there, and the job's
completion is delivered there by the future ``run_in_executor`` returns.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from ipam.service import BATCH_MAX, IpamService
from plugin import profile

Result = tuple[str, dict[str, str]]
# a request's options, its answer, its profile record (None: profiling off)
_Waiter = tuple[dict[str, str] | None, asyncio.Future[Result], profile.Record | None]


class AddressBatcher:
    """Per-pool batching of dynamic allocations for one ``IpamService`` and one executor."""

    def __init__(self, ipam: IpamService, executor: Executor | None) -> None:
        self._ipam = ipam
        self._executor = executor
        self._waiting: dict[str, list[_Waiter]] = {}
        self._busy: dict[str, asyncio.Future[list[Result | Exception]]] = {}  # pool -> its job in the workers

    async def request_address(self, pool_id: str, options: dict[str, str] | None) -> Result:
        """What ``IpamService.request_address(pool_id, "", options)`` returns, or raises."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result] = loop.create_future()
        queue = self._waiting.setdefault(pool_id, [])
        queue.append((options, fut, profile.current()))
        if pool_id not in self._busy and len(queue) == 1:
            # Start at the loop's next turn, not now: the requests whose bytes arrived with this
            # one are being handled in this turn and then join the same job.
            loop.call_soon(self._start, pool_id, loop)
        return await fut

    def _start(self, pool_id: str, loop: asyncio.AbstractEventLoop) -> None:
        if pool_id in self._busy or pool_id not in self._waiting:
            return
        queue = self._waiting.pop(pool_id)
        batch, rest = queue[:BATCH_MAX * 2], queue[BATCH_MAX * 2:]
        if rest:
            self._waiting[pool_id] = rest
        job = self._busy[pool_id] = asyncio.ensure_future(profile.run_for([rec for _, _, rec in batch], self._executor,
                                                    self._ipam.request_addresses, pool_id,
                                                    [options for options, _, _ in batch]))
        job.add_done_callback(lambda done: self._finish(pool_id, batch, done, loop))

    def _finish(self, pool_id: str, batch: list[_Waiter],
                done: asyncio.Future[list[Result | Exception]], loop: asyncio.AbstractEventLoop) -> None:
        self._busy.pop(pool_id, None)
        exc = done.exception() if not done.cancelled() else asyncio.CancelledError()
        results = done.result() if exc is None else [exc for _ in batch]
        for (_, fut, _), res in zip(batch, results, strict=True):
            if fut.done():
                continue  # its caller went away (the address stays allocated, as without batching)
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)
        if self._waiting.get(pool_id):
            self._start(pool_id, loop)
