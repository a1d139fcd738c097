"""Deletions of this host's networks, acted on as the store says so (the store is the truth).

A network's kernel objects (a bridge, its rules, a VLAN uplink) live on the host that owns the
network record (``Host``), but with a shared store any host may delete the record (``cnmkit
network rm`` there). The deleting host's driver has nothing of the network to undo; the owner
must, and without this watch it did only at its next periodic reconcile pass (or never, with
``--reconcile-interval 0``).

One thread lists ``networks/`` and then follows a watch of it from the next revision, keeping
this host's network records in memory, so that a DELETE event (which carries no value) still
says what the network was. A deleted record of this host that this daemon did not delete itself
(``deleted_here``: its own DeleteNetwork already undid the kernel side) is handed to
``on_deleted`` (the reconciling agent's ``remove_deleted``, under the network's lock). After a
store error or a compaction the thread lists again; networks of this host missing from the new
listing were deleted meanwhile and are handed over too. Overlay networks are skipped
(``skip_drivers``): their namespaces follow the records through the overlay agent's own watch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from agent.watching import Worker, follow
from store import records
from store.base import Store
from store.records import NetworkRecord

log = logging.getLogger("cnmkit.netwatch")


class NetworkDeletionWatch(Worker):
    """Follows ``networks/`` and reports each of this host's networks deleted elsewhere."""

    thread_name = "cnmkit-netwatch"
    IDLE = 1.0                                     # seconds without an event before the watch is resumed

    def __init__(self, store: Store, host_id: str, on_deleted: Callable[[str, NetworkRecord], None], *,
                 deleted_here: Callable[[str], bool] = lambda _id: False,
                 skip_drivers: Collection[str] = ()) -> None:
        super().__init__()
        self.store = store
        self.host_id = host_id
        self.on_deleted = on_deleted
        self.deleted_here = deleted_here
        self.skip_drivers = frozenset(skip_drivers)
        self.mine: dict[str, NetworkRecord] = {}       # network id -> record, this host's only

    def _run(self) -> None:
        listed = [False]

        def relist() -> int:                     # after the first listing, what went meanwhile is reported
            rev = self.relist(report=listed[0])
            listed[0] = True
            return rev

        follow(self.store, records.NETWORKS, self._stop, relist=relist,
               on_event=lambda ev: self.apply(ev.type, ev.key, ev.value), what="networks", idle=self.IDLE)

    def relist(self, *, report: bool) -> int:
        """Read this host's network records; with ``report``, hand over those gone since. The revision."""
        kvs, rev = self.store.list(records.NETWORKS)
        before, self.mine = self.mine, {}
        for kv in kvs:
            self._put(records.network_id_of(kv.key), kv.value)
        if report:
            for network_id in sorted(set(before) - set(self.mine)):
                self._deleted(network_id, before[network_id])
        return rev

    def apply(self, kind: str, key: str, value: bytes) -> None:
        """Fold one ``networks/`` event in; a DELETE of one of ours is handed over."""
        network_id = records.network_id_of(key)
        if kind == "PUT":
            self._put(network_id, value)
            return
        rec = self.mine.pop(network_id, None)
        if rec is not None:
            self._deleted(network_id, rec)

    def _put(self, network_id: str, value: bytes) -> None:
        rec = NetworkRecord.decode(value)
        if rec.owned_by(self.host_id) and rec.driver not in self.skip_drivers:
            self.mine[network_id] = rec
        else:
            self.mine.pop(network_id, None)

    def _deleted(self, network_id: str, rec: NetworkRecord) -> None:
        if self.deleted_here(network_id):
            return
        log.info("network %s (%s) of this host was deleted from the store: removing it here",
                 network_id[:12], rec.driver)
        self.on_deleted(network_id, rec)
