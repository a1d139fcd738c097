"""Host identity and liveness: which daemons share the store, and which of them are alive.

Several daemons (hosts) share one store (issue 7). Each one must know who it is, so that the
records of one host (its endpoints, their ports, its local pools and address allocations) say
whose they are; and each one must learn when another is gone, to drop what it derived from it
and, later, to take back what it held. The pieces:

- **Identity.** ``--host-id`` (default: ``/etc/machine-id``, else the hostname: stable across
  restarts of one machine, which is what makes a restarted daemon find its own records) and
  ``--advertise`` (default: the IPv4 address of the default route's device, read from
  ``/proc/net/route`` and one ``SIOCGIFADDR`` ioctl: nothing is sent and nothing changes).
- **Liveness.** The daemon holds a store lease and keeps its record ``hosts/<id>`` (advertise
  address, start time) under it, refreshing the lease every ``ttl / 3`` seconds. If it dies (even
  by SIGKILL) or loses the store for longer than the TTL, the key expires and every other daemon
  sees the DELETE on its watch of ``hosts/``: the host leaves their host list (``cnmkit host ls``,
  ``Cnmkit.HostList``). Nothing kernel-side is derived from remote hosts yet (VXLAN will be: it
  hangs off the same watch).
- **Reclaim after a grace period.** The addresses and pool references of a host that has been
  gone for ``grace`` seconds (as seen by this daemon's monotonic clock, from the DELETE, or from
  this daemon's start for a host already absent then) are released, every transaction comparing
  ``hosts/<id>`` with "absent". A host that comes back, even a moment before, holds its record
  again, so the compare fails and it keeps everything: we never reclaim from a live host. The
  grace covers restarts and short store outages (flannel's lesson, design/store.md 5.6: a lease
  lost to an outage must not cost running containers their addresses).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from netaddr import AddrFormatError, IPAddress

from agent.watching import follow
from store.base import Cmp, LeaseNotFound, Store, StoreError
from store.records import HOSTS, HostRecord, decode_host, encode_host, host_id_of, host_key

log = logging.getLogger("cnmkit.hosts")

DEFAULT_TTL = 10  # seconds; a SIGKILLed host is gone for the others within about this
DEFAULT_GRACE = 600.0  # seconds a gone host keeps its addresses
_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_SIOCGIFADDR = 0x8915
_RTF_UP = 0x1


def check_host_id(text: object) -> str:
    """A host id safe in store keys, logs and file names; ValueError naming the option otherwise."""
    if not isinstance(text, str) or not _HOST_RE.fullmatch(text):
        raise ValueError(f"--host-id: {text!r} is not a host id (1-63 letters, digits, '.', '_', '-', "
                         "starting with a letter or digit)")
    return text


def check_advertise(text: object) -> str:
    if not isinstance(text, str):
        raise ValueError(f"--advertise: {text!r} is not an IP address")
    try:
        return str(IPAddress(text))
    except (AddrFormatError, ValueError):
        raise ValueError(f"--advertise: {text!r} is not an IP address") from None


def default_host_id(machine_id: str = "/etc/machine-id") -> str:
    """The machine id (the same for the life of an install), else the hostname."""
    try:
        with open(machine_id) as f:
            text = f.read().strip()
        if _HOST_RE.fullmatch(text):
            return text
    except OSError:
        pass
    return check_host_id(socket.gethostname().split(".")[0])


def default_advertise(route_table: str = "/proc/net/route") -> str:
    """IPv4 address of the default route's device ("" when there is no default route)."""
    try:
        with open(route_table) as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        return ""
    for row in rows:
        if len(row) >= 8 and row[1] == "00000000" and row[7] == "00000000" and int(row[3], 16) & _RTF_UP:
            return _device_address(row[0])
    return ""


def _device_address(device: str) -> str:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        raw = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", device.encode()[:15]))
    except OSError:
        return ""
    finally:
        sock.close()
    return socket.inet_ntoa(raw[20:24])


Reclaim = Callable[[str, list[Cmp]], list[str]]


class HostLiveness:
    """This host's leased record, the live hosts as watched, and the reclaim of gone ones."""

    def __init__(self, store: Store, host_id: str, advertise: str, *, ttl: int = DEFAULT_TTL,
                 grace: float = DEFAULT_GRACE, reclaim: Reclaim | None = None,
                 holders: Callable[[], set[str]] | None = None) -> None:
        self.store = store
        self.host_id = check_host_id(host_id)
        self.advertise = check_advertise(advertise) if advertise else ""
        self.ttl = ttl
        self.grace = grace
        self._reclaim = reclaim
        self._holders = holders
        self.lease = 0
        self.started = time.time()
        self._live: dict[str, dict[str, Any]] | None = None  # None until the watch has listed
        self._gone: dict[str, float] = {}  # host -> monotonic time it was seen gone
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.changed = threading.Condition(self._lock)  # tests and callers wait on host changes

    # -- this host's record ------------------------------------------------------------------------

    def register(self) -> None:
        """Grant a lease and put ``hosts/<id>`` under it (replacing a record a crashed run left)."""
        self.lease = self.store.grant(self.ttl)
        value = encode_host(HostRecord(HostID=self.host_id, Advertise=self.advertise, Started=self.started,
                                       PID=os.getpid()))
        self.store.put(host_key(self.host_id), value, lease=self.lease)
        log.info("host %s (advertise %s) registered with a %d s lease", self.host_id,
                 self.advertise or "unknown", self.ttl)

    def refresh(self) -> None:
        """Keep the lease alive; if it was lost (an outage longer than the TTL), register again."""
        try:
            self.store.keepalive(self.lease)
        except LeaseNotFound:
            log.warning("host %s: the store expired our lease; registering again", self.host_id)
            self.register()

    def deregister(self) -> None:
        """A clean stop: revoke the lease so the others see this host leave now."""
        if self.lease:
            try:
                self.store.revoke(self.lease)
            except StoreError as exc:
                log.warning("host %s: could not revoke our lease (it will expire): %s", self.host_id, exc)
            self.lease = 0

    # -- the others ----------------------------------------------------------------------------------

    def hosts(self) -> list[dict[str, Any]]:
        """The live hosts, this one included: from the watch, or read now if it has not listed yet."""
        with self._lock:
            live = None if self._live is None else dict(self._live)
        if live is None:
            live = {host_id_of(kv.key): decode_host(kv.value) for kv in self.store.list(HOSTS)[0]}
        return [{**rec, "HostID": host, "Self": host == self.host_id} for host, rec in sorted(live.items())]

    def hosts_cached(self) -> list[dict[str, Any]]:
        """What the watch knows (empty before it listed): call with or without ``changed`` held."""
        return [{**rec, "HostID": host} for host, rec in sorted((self._live or {}).items())]

    def start_watch(self) -> None:
        self._watcher = threading.Thread(target=self._watch, name="cnmkit-hosts", daemon=True)
        self._watcher.start()

    def stop_watch(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None

    def _watch(self) -> None:
        """List ``hosts/`` then follow it from the next revision; relist after compaction or an error."""
        def relist() -> int:
            kvs, rev = self.store.list(HOSTS)
            self._set_live({host_id_of(kv.key): decode_host(kv.value) for kv in kvs})
            return rev

        follow(self.store, HOSTS, self._stop, relist=relist,
               on_event=lambda ev: self._event(ev.type, host_id_of(ev.key), ev.value), what="hosts")

    def _set_live(self, live: dict[str, dict[str, Any]]) -> None:
        now = time.monotonic()
        with self._lock:
            before = self._live or {}
            for host in set(before) - set(live):
                self._gone.setdefault(host, now)
            for host in live:
                self._gone.pop(host, None)
            self._live = live
            self.changed.notify_all()

    def _event(self, kind: str, host: str, value: bytes) -> None:
        with self._lock:
            live = self._live if self._live is not None else {}
            if kind == "PUT":
                live[host] = decode_host(value)
                if self._gone.pop(host, None) is not None:
                    log.info("host %s is back within its grace period: it keeps its addresses", host)
            elif live.pop(host, None) is not None and host != self.host_id:
                self._gone[host] = time.monotonic()
                log.warning("host %s is gone (its lease expired or was revoked); its addresses are "
                            "reclaimed in %.0f s unless it comes back", host, self.grace)
            self._live = live
            self.changed.notify_all()

    # -- periodic work -------------------------------------------------------------------------------

    def tick(self) -> list[str]:
        """Refresh our lease, expire leases (emulating backends), reclaim hosts gone past the grace."""
        self.refresh()
        self.store.expire_leases()
        now = time.monotonic()
        with self._lock:
            live = set(self._live) if self._live is not None else None
        if live is not None and self._holders is not None:
            for host in self._holders() - live - {self.host_id}:
                with self._lock:
                    self._gone.setdefault(host, now)  # gone before we started: the clock starts now
        with self._lock:
            due = [h for h, since in self._gone.items() if now - since >= self.grace and h != self.host_id]
        done: list[str] = []
        for host in due:
            guard = [Cmp(host_key(host), 0)]
            if self.store.get(host_key(host)) is not None:
                continue  # it is back; the watch will say so
            released = self._reclaim(host, guard) if self._reclaim is not None else []
            if self.store.get(host_key(host)) is None:
                with self._lock:
                    self._gone.pop(host, None)
            log.warning("host %s gone for %.0f s: released its pools and addresses %s", host, self.grace,
                        ", ".join(released) or "(none held)")
            done.append(host)
        return done

    async def run(self) -> None:
        """``tick`` every ttl/3 seconds until cancelled; a failed tick is logged, not fatal.

        On asyncio's default executor, not the request workers: a burst of requests must not
        delay the keepalive past the TTL and make the others think this host died.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.2, self.ttl / 3))
            try:
                await loop.run_in_executor(None, self.tick)
            except Exception as exc:
                log.warning("host liveness: %s", exc)
