"""The reconciling agent: the store is the desired state, the kernel is made to agree with it.

Requests change the kernel only while they run; a reboot (bridges, veths and iptables rules
gone, the store kept), a ``kill -9`` between two kernel writes, or somebody's ``ip link del``
leave the kernel behind the store, and nothing else would ever repair it. The agent does, in
one pass that runs

- at daemon start, before any socket is served (dockerd's first Join after a reboot then finds
  its bridge: that Join failed with ``link cnm-...: No such device`` before the agent existed);
- on demand: ``cnmkit reconcile [--dry-run]`` (Cnmkit.Reconcile on the IPAM socket);
- periodically: ``cnmkit daemon --reconcile-interval SECONDS`` (0 disables).

A pass, per network on record and under the network's own lock (the one every request on that
network holds, so a pass never interleaves with a create, join or delete of the same network):
read the network and endpoint records, then ask the network's driver to make each object right
(``Converger.ensure_network`` / ``ensure_endpoints``: look first, act only on what is missing or
half-made, never flush or re-create what exists, so running containers keep their traffic).
Then orphans: kernel objects carrying our mark that no record explains are removed by the
driver's ``Reconciler.reconcile``, which scans the kernel *before* it reads the store (records
are written before kernel objects and removed after them, so nothing in flight looks orphaned).
``--no-cleanup`` skips that step. Links a DeleteEndpoint marked doomed (drivers/reaper.py) and a
crash left undeleted go in every pass, whatever the store holds: the mark is the decision.
Objects without our mark are never touched; a link with our derived name but no mark is
adopted only when a record names it (the drivers decide that).

Many hosts on one store: a pass converges only this host's networks and endpoints (records whose
``Host`` is ours, or that carry none, from before hosts existed). Orphan removal still counts
every host's records as known, so it never deletes a kernel object some record names.

Every action is logged as one line and returned, so the CLI can print what was (or, with
``dry_run``, would be) done. The loop lives here, between the store and the drivers; drivers
only know how to make one object right.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager, nullcontext
from functools import partial

from drivers.base import Converger, EndpointState, NetworkDriver, Reconciler
from drivers.errors import DriverError
from store import records
from store.base import Store, Unavailable
from store.records import EndpointRecord, NetworkRecord

log = logging.getLogger("cnmkit.agent")

LockFactory = Callable[[str], AbstractAsyncContextManager[None]]


def _no_lock(network_id: str) -> AbstractAsyncContextManager[None]:
    return nullcontext()


class Agent:
    """One host's reconciler: ``reconcile()`` is a pass; ``run_every()`` repeats it."""

    def __init__(self, store: Store, drivers: Mapping[str, NetworkDriver], executor: Executor,
                 lock: LockFactory = _no_lock, host_id: str = "") -> None:
        self.host_id = host_id
        self.store = store
        self.drivers = drivers
        self.executor = executor
        self._lock = lock

    async def reconcile(self, *, dry_run: bool = False, cleanup: bool = True, unattended: bool = False,
                        ) -> list[str]:
        """One pass over every network on record, then (with ``cleanup``) the orphans; the actions.

        ``unattended`` (the daemon's own passes): a store with no network at all is more likely the
        wrong store (a mistyped ``--store``, a fresh state dir) than a host whose every network
        was deleted, so orphans are then left for ``cnmkit reconcile`` to remove when asked.
        """
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        network_ids = await loop.run_in_executor(self.executor, self._network_ids)
        if cleanup and unattended and not network_ids:
            log.info("reconcile: the store holds no network; marked kernel objects are left alone "
                     "(run 'cnmkit reconcile' to remove them)")
            cleanup = False
        # Networks are independent: converged side by side, each under its own lock.
        per_network = await asyncio.gather(*(self._converge(nid, dry_run) for nid in network_ids))
        actions = [action for chunk in per_network for action in chunk]
        if cleanup:
            actions += await self.remove_orphans(dry_run=dry_run)
        else:
            actions += await self._remove_doomed(dry_run=dry_run)
        log.info("reconcile%s: %d network(s), %d action(s) in %.2f s", " (dry run)" if dry_run else "",
                 len(network_ids), len(actions), time.monotonic() - started)
        return actions

    async def remove_orphans(self, *, dry_run: bool = False) -> list[str]:
        """Drop marked kernel objects that no record explains (``cnmkit cleanup``, and every pass)."""
        loop = asyncio.get_running_loop()
        actions: list[str] = []
        for driver in self.drivers.values():
            if isinstance(driver, Reconciler):
                removed = await loop.run_in_executor(
                    self.executor, partial(driver.reconcile, self._known_ids, dry_run=dry_run))
                for action in removed:
                    self._log(action, dry_run)
                actions += removed
        return actions

    async def _remove_doomed(self, *, dry_run: bool) -> list[str]:
        """Links a DeleteEndpoint marked for deletion and a crash left: garbage whatever the store says."""
        loop = asyncio.get_running_loop()
        actions: list[str] = []
        for driver in self.drivers.values():
            remove = getattr(driver, "remove_doomed", None)
            if callable(remove):
                removed: list[str] = await loop.run_in_executor(self.executor, partial(remove, dry_run=dry_run))
                for action in removed:
                    self._log(action, dry_run)
                actions += removed
        return actions

    async def run_every(self, interval: float, *, cleanup: bool) -> None:
        """Repeat the pass every ``interval`` seconds until cancelled; a failed pass is logged, not fatal.

        A store that cannot be read means "freeze", never "nothing on record": the pass stops at
        the first read that fails, before it removed anything (orphans are judged only after the
        records were read), so running containers keep their bridges, veths and rules through an
        outage (design/store.md 5.6: Calico's lesson). One line when the freeze starts, one when
        it ends, not one per pass.
        """
        frozen = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile(cleanup=cleanup, unattended=True)
            except Unavailable as exc:
                if not frozen:
                    log.warning("reconcile frozen, the kernel is left as it is until the store answers: %s", exc)
                frozen = True
                continue
            except Exception as exc:                 # a stuck iptables, a bug: try next time
                log.warning("periodic reconcile failed: %s", exc)
                continue
            if frozen:
                log.info("store reachable again: reconcile resumed")
            frozen = False

    # -- one network ------------------------------------------------------------------------------

    async def _converge(self, network_id: str, dry_run: bool) -> list[str]:
        async with self._lock(network_id):
            return await asyncio.get_running_loop().run_in_executor(
                self.executor, self._converge_network, network_id, dry_run)

    def _converge_network(self, network_id: str, dry_run: bool) -> list[str]:
        """Read the records under the lock (a delete may have won the race) and converge them."""
        kv = self.store.get(records.network_key(network_id))
        if kv is None:
            return []
        rec = NetworkRecord.decode(kv.value)
        if not rec.owned_by(self.host_id):
            return []
        driver = self.drivers.get(rec.driver)
        if not isinstance(driver, Converger):
            return []
        spec = rec.spec
        try:
            actions = driver.ensure_network(spec, dry_run=dry_run)
        except DriverError as exc:
            # Its bridge is missing a part we cannot make, or a name is somebody else's: the
            # endpoints are skipped too, so nothing of ours is hung on a bridge that is not ours.
            actions = [f"error: network {network_id[:12]}: {exc}"]
            self._log(actions[0], dry_run)
            return actions
        eps, _ = self.store.list(records.endpoints_prefix(network_id))
        states = [_endpoint_state(ep) for ep in (EndpointRecord.decode(e.value) for e in eps)
                  if ep.owned_by(self.host_id)]
        actions += driver.ensure_endpoints(spec, states, dry_run=dry_run)
        for action in actions:
            self._log(action, dry_run)
        return actions

    async def remove_deleted(self, network_id: str, rec: NetworkRecord) -> list[str]:
        """A network of this host whose record went (another host's ``network rm``): its kernel
        objects go now, under the network's lock, not at the next periodic pass.

        Called by the deletion watch (agent/netwatch.py). The record is read again under the
        lock: one made again meanwhile (a retried create with the same id) is left alone.
        """
        async with self._lock(network_id):
            return await asyncio.get_running_loop().run_in_executor(
                self.executor, self._remove_deleted, network_id, rec)

    def _remove_deleted(self, network_id: str, rec: NetworkRecord) -> list[str]:
        driver = self.drivers.get(rec.driver)
        if driver is None or self.store.get(records.network_key(network_id)) is not None:
            return []
        try:
            driver.delete_network(rec.spec)
            action = f"removed network {network_id[:12]} ({rec.driver}): its record was deleted"
        except DriverError as exc:
            action = f"error: network {network_id[:12]}: its record was deleted, removing it failed: {exc}"
        self._log(action, False)
        return [action]

    # -- store reads ------------------------------------------------------------------------------

    def _network_ids(self) -> list[str]:
        kvs, _ = self.store.list(records.NETWORKS)
        return [records.network_id_of(kv.key) for kv in kvs if NetworkRecord.decode(kv.value).owned_by(self.host_id)]

    def _known_ids(self) -> tuple[set[str], set[str]]:
        nets, _ = self.store.list(records.NETWORKS)
        eps, _ = self.store.list(records.ENDPOINTS)
        return ({records.network_id_of(kv.key) for kv in nets}, {records.endpoint_ids_of(kv.key)[1] for kv in eps})

    @staticmethod
    def _log(action: str, dry_run: bool) -> None:
        level = logging.WARNING if action.startswith("error:") else logging.INFO
        log.log(level, "reconcile%s: %s", " (dry run, not done)" if dry_run else "", action)


def _endpoint_state(rec: EndpointRecord) -> EndpointState:
    return EndpointState(spec=rec.spec, joined=rec.joined, ports=rec.ports or ())
