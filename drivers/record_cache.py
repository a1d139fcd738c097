"""The network and endpoint records this daemon last read or wrote, with their mod revisions.

Why: every protocol call used to read its network and endpoint records from the store before
acting, and Join and Leave read the endpoint record again to CAS it. On etcd each read is a
round trip (3-5 ms under load), so an attach (CreateEndpoint, Join, EndpointOperInfo) cost a
dozen sequential round trips before any kernel work (issue 8 item 8, issue 11 item 1).

What makes a cached record safe to act on (correctness never rests on the cache being fresh):

- every write the manager makes from a cached record carries a compare on the mod revision it
  cached (the endpoint's for Join, Leave and port changes; the network's for CreateEndpoint), so
  a record another process or host changed or deleted meanwhile fails the write instead of being
  overwritten; the manager then forgets the entry and redoes the call from the store;
- a network record is written once (create) and only ever deleted after, and an endpoint's spec
  never changes after its create, so the kernel work done from a cached spec is the work the
  store's record asks for as long as the record exists; a network cannot be deleted while it
  has endpoints, so an endpoint found here also vouches for its network;
- endpoint entries are bytes, every kind is bounded in number (least recently used go first): thousands of held
  endpoints cost a few MB, not their decoded objects (issue 11 item 4's memory bound).

Only the calls holding the network's lock use it, and it is shared by worker threads, hence the
lock here; it holds no store connection and does no I/O.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

from store.records import NetworkRecord

K = TypeVar("K")
V = TypeVar("V")

MAX_NETWORKS = 1024
MAX_ENDPOINTS = 8192


class _Lru(Generic[K, V]):
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


class RecordCache:
    """Records and their mod revisions: ``networks/<id>`` decoded (few), ``endpoints/<net>/<ep>`` encoded."""

    def __init__(self, max_networks: int = MAX_NETWORKS, max_endpoints: int = MAX_ENDPOINTS) -> None:
        self.networks: _Lru[str, tuple[NetworkRecord, int]] = _Lru(max_networks)
        self.endpoints: _Lru[tuple[str, str], tuple[bytes, int]] = _Lru(max_endpoints)

    def forget_network(self, network_id: str) -> None:
        self.networks.pop(network_id)

    def forget_endpoint(self, network_id: str, endpoint_id: str) -> None:
        self.endpoints.pop((network_id, endpoint_id))
