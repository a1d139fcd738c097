"""A bounded, thread-safe mapping that forgets its least recently used entry first.

The daemon's caches of store records (drivers/record_cache.py, ipam/service.py) use it: a cache
entry only spares a read, since every write made from one compares its revision, so forgetting
one costs a round trip and never correctness; bounding them keeps the daemon's memory flat
however many endpoints it holds (issue 11 item 4).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A bounded mapping whose least recently used entry goes first; thread-safe."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._limit:
                self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)
