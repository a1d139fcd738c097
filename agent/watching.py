"""The one way the agents follow a part of the store: list it, then watch it from the next revision.

A watch that ends (``idle`` seconds without an event) is resumed after the last revision seen; a
compacted history or a store error makes it list again, so nothing that happened meanwhile is
missed (``relist`` sees it). Used by host liveness (agent/hosts.py) and the network deletion
watch (agent/netwatch.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from store.base import Compacted, Event, Store, StoreError

log = logging.getLogger("cnmkit.watch")


def follow(store: Store, prefix: str, stop: threading.Event, *, relist: Callable[[], int],
           on_event: Callable[[Event], None], what: str, idle: float = 1.0) -> None:
    """Until ``stop``: ``relist()`` (reads the records, answers their revision), then each event
    under ``prefix`` after it to ``on_event``; a store error is logged and followed by a relist."""
    while not stop.is_set():
        try:
            rev = relist()
            while not stop.is_set():
                for ev in store.watch(prefix, rev + 1, timeout=idle):
                    rev = ev.revision
                    on_event(ev)
                    if stop.is_set():
                        return
        except Compacted:
            continue
        except (StoreError, RuntimeError, ValueError) as exc:
            if stop.is_set():
                return
            log.warning("watching %s: %s; listing again", what, exc)
            stop.wait(1.0)


class Worker:
    """One named daemon thread running ``_run`` until ``stop()`` (which sets ``_stop`` and joins)."""

    thread_name = "cnmkit-worker"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        raise NotImplementedError
