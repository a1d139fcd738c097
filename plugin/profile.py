"""Where a request's time goes, per call: worker hop, store, kernel, the rest (issue 11 item 5).

Off unless the daemon runs with ``CNMKIT_PROFILE=<file>``: then every request on every socket
gets a record, kept in memory, and SIGUSR1 (or the daemon's stop) writes them as JSON lines to
that file (replacing it) and starts afresh. ``bench/endpoint_lifecycle.py`` uses it to print its per-call
profile; the client measures the round trip, so "protocol" (HTTP, JSON, the socket, the client)
is the round trip minus the server's handler time.

Per request, milliseconds:

    server   the handler, from routing to the response object (aiohttp's own parse/write excluded)
    hop      queueing for and returning from the worker thread (run_in_executor there and back)
    worker   time inside the worker function; split into
    store    store calls made from it (the store object is wrapped: ``wrap(store, "store")``)
    kernel   kernel verbs made from it (``wrap(kernel, "kernel")``; netlink and pyroute2)

so ``worker - store - kernel`` is the manager's and driver's own Python, and
``server - hop - worker`` is decoding, encoding, the network lock and the event loop.
Disabled, the only cost is one ``if`` per executor call.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")
ENV = "CNMKIT_PROFILE"

_OUT = os.environ.get(ENV, "")
_request: contextvars.ContextVar[Record | None] = contextvars.ContextVar("cnmkit_profile", default=None)
_thread = threading.local()
_records: list[Record] = []
_lock = threading.Lock()


@dataclass
class Record:
    path: str
    server: float = 0.0
    hop: float = 0.0
    worker: float = 0.0
    store: float = 0.0
    kernel: float = 0.0


def enabled() -> bool:
    return bool(_OUT)


@web.middleware
async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
    rec = Record(request.path)
    token = _request.set(rec)
    start = time.perf_counter()
    try:
        return await handler(request)
    finally:
        rec.server = (time.perf_counter() - start) * 1000
        _request.reset(token)
        with _lock:
            _records.append(rec)


async def run_in_executor(executor: Executor | None, fn: Callable[..., T], *args: Any) -> T:
    """``loop.run_in_executor``, with the hop and the worker's time charged to the request."""
    loop = asyncio.get_running_loop()
    rec = _request.get() if _OUT else None
    if rec is None:
        return await loop.run_in_executor(executor, fn, *args)
    times = [0.0, 0.0]

    def work() -> T:
        times[0] = time.perf_counter()
        _thread.rec = rec
        try:
            return fn(*args)
        finally:
            _thread.rec = None
            times[1] = time.perf_counter()

    submitted = time.perf_counter()
    try:
        return await loop.run_in_executor(executor, work)
    finally:
        done = time.perf_counter()
        if times[1]:
            rec.worker += (times[1] - times[0]) * 1000
            rec.hop += ((done - submitted) - (times[1] - times[0])) * 1000


def current() -> Record | None:
    """The record of the request being handled (None: profiling is off, or not in a request)."""
    return _request.get() if _OUT else None


async def run_for(records: list[Record | None], executor: Executor | None, fn: Callable[..., T], *args: Any) -> T:
    """``run_in_executor`` for one job done on behalf of several requests (a batch of them):
    each is charged the whole job's hop, worker, store and kernel time, which it waited for."""
    mine = [r for r in records if r is not None]
    if not mine:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    shared = Record("")
    token = _request.set(shared)
    try:
        return await run_in_executor(executor, fn, *args)
    finally:
        _request.reset(token)
        for rec in mine:
            rec.hop += shared.hop
            rec.worker += shared.worker
            rec.store += shared.store
            rec.kernel += shared.kernel


class _Timed:
    """A proxy that charges the time of every method call to the worker's request, under ``kind``."""

    def __init__(self, inner: Any, kind: str) -> None:
        self._inner = inner
        self._kind = kind

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr
        kind = self._kind

        def timed(*args: Any, **kwargs: Any) -> Any:
            rec: Record | None = getattr(_thread, "rec", None)
            if rec is None:
                return attr(*args, **kwargs)
            _thread.rec = None                     # nested calls are not charged twice
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                setattr(rec, kind, getattr(rec, kind) + (time.perf_counter() - start) * 1000)
                _thread.rec = rec

        return timed


def wrap(obj: T, kind: str) -> T:
    """``obj`` itself when profiling is off; else a proxy timing its calls as ``kind``."""
    return _Timed(obj, kind) if _OUT else obj  # type: ignore[return-value]


def dump() -> None:
    """Write every record so far to the profile file (one JSON object a line, replacing it) and forget them."""
    if not _OUT:
        return
    with _lock:
        taken, _records[:] = list(_records), []
    tmp = f"{_OUT}.tmp"
    with open(tmp, "w") as f:
        for rec in taken:
            f.write(json.dumps(asdict(rec)) + "\n")
    os.replace(tmp, _OUT)
