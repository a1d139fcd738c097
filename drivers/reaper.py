"""Deleting veths off the request's critical path: mark now, delete in batches in the background.

Deleting a veth costs the kernel an RCU grace period, ~20 ms (perf-anchors §3), whatever the
tool; it was 23 of the 39 ms of dockerd's seven calls for one container. Nothing the engine does
next waits for that link to be gone: after DeleteEndpoint it only needs the endpoint to be
*ours no more*. So DeleteEndpoint only **marks** the host end (one RTM_NEWLINK, ~1 ms):

    ifalias  cnmkit:doomed:<endpoint id>     (drivers/naming.doomed_alias)
    group    DOOMED_GROUP                    (a netdev group number kept for this)

and answers. A ``Reaper`` thread then deletes every marked link with ONE ``RTM_DELLINK`` on the
group (the kernel's ``ip link delete group N``): one unregister batch, so ten links cost about
the grace periods of one. Each link goes exactly once: the group delete removes what is in the
group at that moment, and a link gone is not in it any more.

A crash between the answer and the deletion leaves only links carrying the doomed mark; the
reconciler (``BridgeDriver.reconcile``, run at every daemon start) deletes every such link by
name and alias, never by group, so nothing unmarked is ever at risk. A new endpoint with the
same id (the host end's name is derived from it) finds its doomed predecessor under that name:
the Join deletes that one link first (drivers/bridge.py), synchronously, which is then simply
not there any more for the batch.

``InlineReaper`` deletes at once in the caller: the behaviour before this module, kept for the
unit tier and for tools that want the link gone when the call returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Protocol

from drivers.errors import DriverError

log = logging.getLogger("cnmkit.reaper")

IDLE_WAIT = 0.05
"""Seconds a batch waits at most for a moment with no request in flight (``InFlight``): under a
steady stream of requests it goes anyway."""

HOLD_ENV = "CNMKIT_TEST_HOLD_REAPER"
"""Test hook: set to 1, the background reaper marks but never deletes (a test then SIGKILLs the
daemon "between the answer and the deletion" and proves the reconciler finishes the job)."""


class DoomOps(Protocol):
    """The two kernel verbs deferred deletion needs (``Kernel`` and ``FakeKernel`` have them)."""

    def link_doom(self, name: str, *, alias: str, doomed_alias: str, down: bool = False) -> bool: ...
    def reap_doomed(self) -> None: ...
    def link_delete(self, name: str, *, alias: str) -> bool: ...


class Idle(Protocol):
    """Something the reaper can wait on for a moment when no request is being served."""

    def wait_idle(self, timeout: float | None) -> bool: ...


class InFlight:
    """How many requests the daemon is serving; background work waits for none (``wait_idle``).

    Measured through dockerd (issue 11 item 2): a batch started from inside Leave, while that
    call still wrote its record, made the call 4 ms slower (the batch's netlink dump and the
    kernel's unregister work compete with the request for the GIL and two CPUs). Started once the
    answer is out, it runs while dockerd does its own work between calls.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0

    def enter(self) -> None:
        with self._cond:
            self._count += 1

    def leave(self) -> None:
        with self._cond:
            self._count -= 1
            if self._count == 0:
                self._cond.notify_all()

    def wait_idle(self, timeout: float | None) -> bool:
        """True once no request is in flight, False when ``timeout`` seconds passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout)


class Reaper(Protocol):
    """What the bridge driver hands marked links to."""

    def submit(self, name: str = "", doomed_alias: str = "") -> None:
        """A link (``name``, carrying ``doomed_alias``, when given) was just marked: delete it (now or soon)."""

    def close(self) -> None:
        """Delete whatever is still marked, then stop."""


class InlineReaper:
    """Deletes the marked links at once, in the caller's thread."""

    def __init__(self, kernel: DoomOps) -> None:
        self.kernel = kernel

    def submit(self, name: str = "", doomed_alias: str = "") -> None:
        self.kernel.reap_doomed()

    def close(self) -> None:
        """Nothing is ever left pending."""


class BackgroundReaper:
    """One daemon thread that deletes the marked links in batches, off every request's path.

    ``submit`` only sets a flag and wakes the thread: the requests that mark links while a batch
    is being deleted are all taken by the next one. The thread uses its own netlink socket
    (drivers/kernel.py keeps one per thread).

    One named link, alone, is deleted at once by name (one get, one delete: no dump of every
    link), without waiting for the request to be answered: after Leave that delete races
    dockerd's move of the container end back to the host netns (~13 ms it then need not spend),
    and it must start before dockerd reads the answer to win. Measured through dockerd (issue
    11 item 2): Leave's answer to DeleteEndpoint 16.5 ms with the batch waiting for no request
    in flight, 3.6 ms starting at once. Several links, or unnamed ones, go as one group batch,
    which waits for a moment with no request in flight (``InFlight``): its dump competes with
    the request for the GIL.
    """

    def __init__(self, kernel: DoomOps, *, hold: bool | None = None, idle: Idle | None = None) -> None:
        self.kernel = kernel
        self.hold = os.environ.get(HOLD_ENV) == "1" if hold is None else hold
        self.idle = idle                         # the daemon's InFlight: a batch waits for no request
        self._cond = threading.Condition()
        self._pending = False
        self._named: list[tuple[str, str]] = []  # (name, doomed alias) submitted since the last pass
        self._stopping = False
        self.batches = 0                         # how many group deletes ran (tests, bench)
        self._thread = threading.Thread(target=self._run, name="cnmkit-reaper", daemon=True)
        self._thread.start()

    def submit(self, name: str = "", doomed_alias: str = "") -> None:
        with self._cond:
            self._pending = True
            if name and doomed_alias:
                self._named.append((name, doomed_alias))
            else:
                self._named.append(("", ""))     # unnamed: the group batch
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._stopping):
                    self._cond.wait()
                if self.hold:
                    if self._stopping:
                        return
                    self._pending = False
                    self._named.clear()
                    continue
                stopping, self._pending = self._stopping, False
                named, self._named = self._named, []
            if len(named) == 1 and named[0][0] and not stopping:
                self._delete_one(*named[0])
                continue
            if self.idle is not None and not stopping:
                self.idle.wait_idle(IDLE_WAIT)   # the marking request's answer goes out first
            self._reap()
            if stopping:
                return

    def _delete_one(self, name: str, doomed_alias: str) -> None:
        """The one link just marked, by name: gone, or not carrying the mark (a new endpoint of the
        same id took the name back), is fine; a failure leaves it marked for a group batch."""
        try:
            self.kernel.link_delete(name, alias=doomed_alias)
        except DriverError:
            self.submit()                        # LinkExists (no longer doomed) or a kernel error
        except Exception:
            with contextlib.suppress(Exception):
                log.exception("doomed-link reaper")

    def _reap(self) -> None:
        try:
            self.kernel.reap_doomed()
            self.batches += 1
        except DriverError as exc:
            # Left marked: the next batch, or the reconciler's pass, deletes them.
            log.warning("deleting doomed links failed (left for the next pass): %s", exc)
        except Exception:                        # never let the thread die: the next submit retries
            with contextlib.suppress(Exception):
                log.exception("doomed-link reaper")
