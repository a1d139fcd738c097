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
- endpoint entries are bytes, and both maps are bounded (least recently used go first):
  thousands of held endpoints cost a few MB, not their decoded objects (issue 11 item 4).

Only the calls holding the network's lock use it, and it is shared by worker threads, hence the
lock in its maps (store/lru.py); it holds no store connection and does no I/O.
"""

from __future__ import annotations

from store.lru import Lru
from store.records import NetworkRecord

MAX_NETWORKS = 1024
MAX_ENDPOINTS = 4096


class RecordCache:
    """Records and their mod revisions: ``networks/<id>`` decoded (few), ``endpoints/<net>/<ep>`` encoded."""

    def __init__(self, max_networks: int = MAX_NETWORKS, max_endpoints: int = MAX_ENDPOINTS) -> None:
        self.networks: Lru[str, tuple[NetworkRecord, int]] = Lru(max_networks)
        self.endpoints: Lru[tuple[str, str], tuple[bytes, int]] = Lru(max_endpoints)

    def forget_network(self, network_id: str) -> None:
        self.networks.pop(network_id)

    def forget_endpoint(self, network_id: str, endpoint_id: str) -> None:
        self.endpoints.pop((network_id, endpoint_id))
