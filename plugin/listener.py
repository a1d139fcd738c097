"""Accepting connections on a plugin socket, with bounded resources.

Why not ``web.SockSite``: asyncio's own accept loop (``selector_events._accept_connection``,
Python 3.11) handles EMFILE by logging through the loop's exception handler, removing the
reader and scheduling a retry in 1 s, but it does not leave its ``for _ in range(backlog)``
loop: one readiness event logs up to 100 tracebacks and schedules up to 100 retries, each of
which re-arms the reader. With the fds used up by idle clients that became ~9,000 log records a
second (issue 6: 1.3 GB of log in 5 minutes). And it puts no bound on connections at all.

So this site runs its own accept loop on the listening socket and hands each accepted socket to
``loop.connect_accepted_socket`` with aiohttp's protocol factory, as ``create_server`` would:

- at most ``limit`` live connections per socket: one over that is accepted and closed at once
  (the client sees EOF rather than hanging in the backlog), logged once per burst;
- on EMFILE/ENFILE/ENOBUFS/ENOMEM accepting stops, is logged once, and resumes after
  ``retry_delay`` seconds; the burst's end (the next successful accept) is logged with the
  number of failed attempts, so one burst is two lines whatever its length;
- idle connections are closed by aiohttp's ``keepalive_timeout`` (set on the runner), which
  also covers a connection that never sends a request.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("cnmkit.daemon")

RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BATCH = 64  # accepts per readiness event, so one busy socket cannot starve the loop
RETRY_DELAY = 1.0  # seconds without accepting after the process ran out of fds
BACKLOG = 128


class _Counted(asyncio.Protocol):
    """Forwards every transport callback to aiohttp's protocol and reports the connection's end."""

    def __init__(self, inner: asyncio.Protocol, on_lost: Callable[[], None]) -> None:
        self._inner = inner
        self._on_lost: Callable[[], None] | None = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self.release()

    def release(self) -> None:
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost()


class BoundedSockSite(web.BaseSite):
    """An aiohttp site on a bound unix socket with a connection cap and a quiet accept loop."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *, limit: int,
                 retry_delay: float = RETRY_DELAY) -> None:
        super().__init__(runner, backlog=BACKLOG)
        if limit < 1:
            raise ValueError("connection limit must be at least 1")
        self._sock = sock
        self._limit = limit
        self._retry_delay = retry_delay
        self._path = str(sock.getsockname())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._stopped = False
        self._retry: asyncio.TimerHandle | None = None
        self.live = 0
        self._failed = 0           # accept attempts failed for lack of resources, this burst
        self._refused = 0          # connections closed for being over the limit, this burst
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def name(self) -> str:
        return f"http://unix:{self._path}:"

    async def start(self) -> None:
        await super().start()
        self._loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        self._sock.listen(self._backlog)
        self._resume()

    async def stop(self) -> None:
        self._runner._check_site(self)
        self._stopped = True
        self._pause()
        if self._retry is not None:
            self._retry.cancel()
        self._sock.close()
        self._runner._unreg_site(self)

    # -- accept loop ------------------------------------------------------------------------

    def _resume(self) -> None:
        self._retry = None
        if self._loop is not None and not self._stopped and not self._reading:
            self._loop.add_reader(self._sock.fileno(), self._accept_ready)
            self._reading = True

    def _pause(self) -> None:
        if self._loop is not None and self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    def _accept_ready(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    self._out_of_resources(exc)
                    return
                continue                     # ECONNABORTED and the like: that client is gone
            self._accepted(conn)

    def _out_of_resources(self, exc: OSError) -> None:
        """Stop accepting for a while; log the first failure of a burst only."""
        if self._failed == 0:
            log.error("%s: cannot accept connections: %s (%d open); retrying every %.0f s, "
                      "logged once until it recovers", self._path, exc.strerror, self.live,
                      self._retry_delay)
        self._failed += 1
        self._pause()
        assert self._loop is not None
        self._retry = self._loop.call_later(self._retry_delay, self._resume)

    def _accepted(self, conn: socket.socket) -> None:
        if self._failed:
            log.warning("%s: accepting again after %d failed attempts", self._path, self._failed)
            self._failed = 0
        if self.live >= self._limit:
            if self._refused == 0:
                log.warning("%s: %d connections open, the limit: closing new ones until one ends",
                            self._path, self.live)
            self._refused += 1
            conn.close()
            return
        self.live += 1
        assert self._loop is not None
        task = self._loop.create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        server = self._runner.server
        assert server is not None and self._loop is not None
        counted = _Counted(server(), self._released)
        try:
            await self._loop.connect_accepted_socket(lambda: counted, sock=conn)
        except Exception as exc:  # the transport never came up: free the slot and the fd
            log.warning("%s: dropping a connection: %s", self._path, exc)
            conn.close()
            counted.release()

    def _released(self) -> None:
        self.live -= 1
        if self._refused and self.live < self._limit:
            log.warning("%s: below the connection limit again; %d connections were refused",
                        self._path, self._refused)
            self._refused = 0
