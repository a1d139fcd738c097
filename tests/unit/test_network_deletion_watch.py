"""agent/netwatch.py on the in-memory store: which deleted network records are handed over.

Fast tier; the real thing (two daemons on SQLite and on etcd, the owner's bridge checked with
``ip -j``) is tests/kernel/test_two_hosts.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from agent.netwatch import NetworkDeletionWatch
from drivers.base import NetworkSpec
from store import records
from store.memory import MemoryStore
from store.records import NetworkRecord

SAFETY = 60.0      # seconds before a hang becomes a failure; nothing is timed against it


def put(store: MemoryStore, tag: str, host: str, driver: str = "cnmkit-bridge") -> str:
    nid = tag * 64
    store.put(records.network_key(nid), NetworkRecord(driver=driver, spec=NetworkSpec(network_id=nid),
                                                      host=host).encode())
    return nid


class Handed:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.changed = threading.Condition()

    def __call__(self, network_id: str, rec: NetworkRecord) -> None:
        assert rec.spec.network_id == network_id
        with self.changed:
            self.ids.append(network_id)
            self.changed.notify_all()

    def wait_for(self, n: int) -> list[str]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.ids) >= n, timeout=SAFETY), self.ids
            return list(self.ids)


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    made = MemoryStore()
    yield made
    made.close()


def test_only_this_hosts_networks_deleted_elsewhere_are_handed_over(store: MemoryStore) -> None:
    mine, theirs, overlay, here, last = (put(store, "a", "hA"), put(store, "b", "hB"),
                                         put(store, "c", "hA", "cnmkit-vxlan"), put(store, "d", "hA"),
                                         put(store, "e", "hA"))
    handed = Handed()
    watch = NetworkDeletionWatch(store, "hA", handed, deleted_here=lambda nid: nid == here,
                                 skip_drivers=("cnmkit-vxlan",))
    watch.start()
    try:
        later = put(store, "f", "hA")                    # made after the listing: known from its PUT
        for nid in (mine, theirs, overlay, here, later, last):
            store.delete(records.network_key(nid))
        # Events come in order: once ``last`` is handed over, every earlier one was looked at.
        assert handed.wait_for(3) == [mine, later, last]
    finally:
        watch.stop()


def test_a_relist_hands_over_what_went_while_the_watch_was_away(store: MemoryStore) -> None:
    gone, kept = put(store, "a", "hA"), put(store, "b", "hA")
    handed = Handed()
    watch = NetworkDeletionWatch(store, "hA", handed)
    watch.relist(report=False)
    store.delete(records.network_key(gone))
    watch.relist(report=True)
    assert handed.ids == [gone] and set(watch.mine) == {kept}
