"""Other hosts' containers in this host's runtime containers' hosts files, as the store changes.

A runtime container on a multi-host (overlay) network finds its peers on other hosts by name
through its hosts file (runtime/hostsfiles.py). The CLI writes that file at the container's
run/stop/connect/exec; without this module a peer started on another host afterwards stayed
unknown (and a removed one listed) until one of those. The overlay agent (agent/overlay.py),
which already follows every endpoint record on its watch, calls ``changed()`` when an overlay's
endpoints move; a thread of its own then rewrites the files from the store, so the agent's
event path (the FDB and neighbour entries, convergence) never waits on a file or a lock.

Changes arriving while a rewrite runs are folded into one more rewrite after it (the flag is
cleared before the store is read, so no change is ever missed). The rewrite holds the runtime's
state lock, as the CLI does, and reads the records after taking it: the last writer always wrote
from the newest records. A host without runtime containers costs a directory check.
"""

from __future__ import annotations

import logging
import os
import threading

from runtime import hosts, hostsfiles
from runtime.state import StateStore
from store import records
from store.base import Store
from store.records import EndpointRecord, NetworkRecord

log = logging.getLogger("cnmkit.peers")


class RemotePeerNames:
    """Rewrites the hosts files of the runtime containers under ``state_dir`` when told to."""

    RETRY = 1.0                                   # seconds before a failed rewrite is tried again

    def __init__(self, store: Store, state_dir: str) -> None:
        self.store = store
        self.state_dir = state_dir
        self._dirty = False
        self._stopping = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.rewrites = 0                             # completed rewrites (tests)

    def changed(self) -> None:
        """Some overlay's endpoints changed: rewrite soon (cheap; callable from any thread)."""
        with self._cond:
            self._dirty = True
            self._cond.notify_all()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cnmkit-peers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._dirty or self._stopping)
                if self._stopping:
                    return
                self._dirty = False
            try:
                written = self.refresh()
            except Exception as exc:              # the store away, a bad record: again a bit later
                log.warning("hosts files of runtime containers: %s; retrying", exc)
                with self._cond:
                    self._dirty = True
                    self._cond.wait_for(lambda: self._stopping, timeout=self.RETRY)
                continue
            if written:
                log.info("hosts files of %d runtime container(s) updated with other hosts' peers", len(written))

    def refresh(self) -> list[str]:
        """Rewrite what changed, from the records read now; the container ids written."""
        if not os.path.isdir(os.path.join(self.state_dir, "containers")):
            return []                                 # no runtime container on this host, ever
        state = StateStore(self.state_dir)
        with state.locked():
            local = hostsfiles.local_members(state)
            written = hostsfiles.rewrite(state, local, self._remote(local)) if local else []
        with self._cond:
            self.rewrites += 1
            self._cond.notify_all()
        return written

    def wait_rewrites(self, count: int, timeout: float) -> bool:
        """Until ``count`` rewrites have completed (tests); False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self.rewrites >= count, timeout=timeout)

    def _remote(self, local: dict[str, hosts.Member]) -> dict[str, hosts.Member]:
        """Other hosts' named endpoints on the local containers' multi-host networks, from the store."""
        ours = hostsfiles.our_endpoints(local)
        networks = sorted({str(att["network_id"]) for m in local.values() for att in m.attachments
                           if att.get("network_id")})
        remote: dict[str, hosts.Member] = {}
        for network_id in networks:
            kv = self.store.get(records.network_key(network_id))
            if kv is None or NetworkRecord.decode(kv.value).driver != hostsfiles.MULTI_HOST_DRIVER:
                continue
            rec = NetworkRecord.decode(kv.value)
            # The overlay's: dockerd's containers on other hosts are under their own engines' network ids.
            eps = [EndpointRecord.decode(e.value).to_dict()["Spec"]
                   for nid in records.overlay_network_ids(self.store, network_id, rec)
                   for e in self.store.list(records.endpoints_prefix(nid))[0]]
            remote.update(hostsfiles.remote_members(network_id, eps, ours))
        return remote
