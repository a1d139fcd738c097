"""Run a real cnmkit Daemon (real sockets, real handlers) on a thread of the test process."""

from __future__ import annotations

import asyncio
import threading

from drivers.base import NetworkDriver
from plugin.server import Daemon, DaemonConfig
from store.base import Store


class DaemonThread:
    def __init__(self, config: DaemonConfig, store: Store | None = None,
                 drivers: list[NetworkDriver] | None = None) -> None:
        self.config = config
        self._store = store
        self._drivers = drivers
        self.loop = asyncio.new_event_loop()
        self.daemon: Daemon | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.daemon = Daemon(self.config, store=self._store, drivers=self._drivers)
            self.loop.run_until_complete(self.daemon.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> DaemonThread:
        self.thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self.daemon is not None and self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.daemon.stop(), self.loop).result()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
        self.loop.close()
