"""Names of an overlay's containers, on every host, answered by DNS at the overlay's gateway.

dockerd's embedded DNS (127.0.0.11) knows only its own engine's containers, so a dockerd
container cannot resolve a container on another host. Each host's daemon therefore answers DNS
in each of its overlay namespaces (drivers/overlay_ns.py), on UDP port 53 of the overlay's
gateway address(es), with the names of that overlay's endpoints on every live host, from the
store (``NAMES_OPTION``: given by the runtime, learnt from dockerd by agent/dockernames.py).
A dockerd container uses it with ``docker run --dns <gateway>``: its embedded DNS answers its own
engine's names and forwards the rest to the gateway, from inside the container's namespace.

Why there: every host has the gateway address (the same on every host) in the overlay's own
namespace, and only that overlay's containers on this host reach it (vxlan0 answers no ARP for
it from elsewhere and an ebtables rule keeps the namespace's own frames off the tunnel), so the
responder is reachable from that overlay's containers only, serves only that overlay's names,
and needs nothing outside namespaces of ours: no port on the host, no iptables rule.

How: one thread runs an asyncio loop with one UDP socket per gateway address, made inside the
namespace (the thread setns()es, binds, comes back: the socket stays in the namespace). The
records come from the overlay agent's one watch (``reset``/``event``, agent/overlay.py), applied
on this thread; a zone is rebuilt only when asked after a change of its overlay. Sockets follow
the namespaces through ``OverlayHost``'s watchers: bound when ``ensure`` completes one, closed
*before* ``teardown`` deletes it, because an open socket pins its namespace and with it vxlan0,
whose VNI a re-made namespace could then not take.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from agent import dnswire
from drivers.errors import KernelError
from drivers.kernel import entered_netns, netns_path
from drivers.overlay_ns import OverlayHost
from drivers.vxlan import DRIVER_NAME, overlay_of
from runtime.names import is_hosts_word
from store import records
from store.base import KV, Event
from store.records import NAMES_OPTION, EndpointRecord, NetworkRecord, OverlayRecord

log = logging.getLogger("cnmkit.dns")

DNS_PORT = 53
IP_FREEBIND = 15                      # linux/in.h: bind before the address is there (IPv6 DAD)
_MAX_NAMES_PER_ENDPOINT = 34          # name, hostname and 32 aliases (agent/dockernames.py caps)

Zone = dict[str, tuple[str, ...]]     # lowercase name -> addresses


def endpoint_names(ep: EndpointRecord) -> list[str]:
    """The names an endpoint record gives its container, each checked as a hosts file checks it."""
    given = str(ep.spec.options.get(NAMES_OPTION) or "").split(",")[:_MAX_NAMES_PER_ENDPOINT]
    return list(dict.fromkeys(n.lower() for n in given if n and is_hosts_word(n)))


def build_zone(endpoints: Iterable[EndpointRecord]) -> Zone:
    """Every name of the endpoints -> every address carrying it (two containers with one name on
    two hosts: both addresses, as a round robin)."""
    zone: dict[str, list[str]] = {}
    for ep in endpoints:
        ips = [str(a.ip) for a in (ep.spec.address, ep.spec.address_v6) if a is not None]
        for name in endpoint_names(ep) if ips else []:
            zone.setdefault(name, []).extend(ip for ip in ips if ip not in zone[name])
    return {name: tuple(ips) for name, ips in zone.items()}


class View:
    """The records the zones need, folded from the agent's list and events (one thread only)."""

    KEYS = (records.NETWORKS, records.ENDPOINTS, records.HOSTS)

    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self.overlay_of: dict[str, str] = {}             # network id -> overlay name (vxlan networks)
        self.endpoints: dict[str, EndpointRecord] = {}   # endpoint key -> record
        self.live: set[str] = set()                      # host ids with a record (under a lease)
        self._zones: dict[str, Zone] = {}                # overlay -> zone, dropped when it may change

    def reset(self, kvs: Iterable[KV]) -> None:
        self.overlay_of, self.endpoints, self.live, self._zones = {}, {}, set(), {}
        for kv in kvs:
            self.apply(Event("PUT", kv.key, kv.value, kv.mod_rev))

    def apply(self, ev: Event) -> None:
        key, put = ev.key, ev.type == "PUT"
        if key.startswith(records.ENDPOINTS):
            if put:
                self.endpoints[key] = EndpointRecord.decode(ev.value)
            else:
                self.endpoints.pop(key, None)
            self._zones.pop(self.overlay_of.get(records.endpoint_ids_of(key)[0], ""), None)
        elif key.startswith(records.NETWORKS):
            nid = records.network_id_of(key)
            rec = NetworkRecord.decode(ev.value) if put else None
            if rec is not None and rec.driver == DRIVER_NAME:
                self.overlay_of[nid] = overlay_of(rec.spec)
            else:
                self.overlay_of.pop(nid, None)
            self._zones.clear()
        elif key.startswith(records.HOSTS):
            (self.live.add if put else self.live.discard)(records.host_id_of(key))
            self._zones.clear()

    def zone(self, overlay: str) -> Zone:
        if overlay not in self._zones:
            self._zones[overlay] = build_zone(
                ep for key, ep in self.endpoints.items()
                if self.overlay_of.get(records.endpoint_ids_of(key)[0]) == overlay
                and (ep.host is None or ep.host == self.host_id or ep.host in self.live))
        return self._zones[overlay]

    def lookup(self, overlay: str, name: str) -> Sequence[str] | None:
        return self.zone(overlay).get(name)


class _Responder(asyncio.DatagramProtocol):
    def __init__(self, dns: OverlayDNS, overlay: str) -> None:
        self.dns, self.overlay = dns, overlay
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = dnswire.answer(data, lambda name: self.dns.view.lookup(self.overlay, name))
        except Exception:                        # a bug must not stop the responder: drop the query
            log.exception("dns: overlay %s: query from %s dropped", self.overlay, addr[0])
            return
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns: overlay %s: %s", self.overlay, exc)


@dataclass
class _Bound:
    overlay: str
    netns_ino: int
    addresses: tuple[str, ...]
    transports: list[asyncio.DatagramTransport]
    socks: list[socket.socket]


class OverlayDNS:
    """The responders of this host's overlays; a watcher of ``OverlayHost`` and a listener of the
    overlay agent. ``port`` is 53 but for tests."""

    def __init__(self, host: OverlayHost, host_id: str, *, port: int = DNS_PORT) -> None:
        self.host = host
        self.port = port
        self.view = View(host_id)
        self.loop = asyncio.new_event_loop()
        self.bound: dict[int, _Bound] = {}               # VNI -> its sockets (DNS thread only)
        self._thread: threading.Thread | None = None
        self._lock = asyncio.Lock()                      # binds and closes, one at a time (DNS thread)

    # -- thread -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.loop.run_forever, name="cnmkit-dns", daemon=True)
        self._thread.start()
        self.host.watchers.append(self)

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.host.watchers.remove(self)
        if self._thread is None:
            return
        self._wait(self._close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self._thread = None
        self.loop.close()

    def _wait(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on the DNS thread and wait for it (from any other thread)."""
        if self._thread is None or not self.loop.is_running():
            coro.close()
            return
        asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    # -- the agent's records (agent/overlay.py listeners) -----------------------------------------

    def reset(self, kvs: list[KV]) -> None:
        self.loop.call_soon_threadsafe(self.view.reset, list(kvs))

    def event(self, ev: Event) -> None:
        if ev.key.startswith(View.KEYS):             # IPAM's many keys: no thread hop for nothing
            self.loop.call_soon_threadsafe(self.view.apply, ev)

    # -- namespaces (OverlayHost watchers) ---------------------------------------------------------

    def made(self, ov: OverlayRecord) -> None:
        """``ensure`` completed the overlay's namespace: answer there (again, if it was re-made)."""
        if not self.loop.is_closed():              # a Join still in flight while the daemon stops
            asyncio.run_coroutine_threadsafe(self._bind(ov), self.loop)

    def removing(self, vni: int) -> None:
        """Before ``teardown``: our sockets must not keep the namespace (and its vxlan0) alive."""
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._wait(self._close(vni))

    async def _bind(self, ov: OverlayRecord) -> None:
        """Nobody awaits this (``made`` only schedules it): every failure is logged here."""
        async with self._lock:
            try:
                await self._bind_locked(ov)
            except Exception:
                log.exception("dns: overlay %s: no responder", ov.name)

    async def _bind_locked(self, ov: OverlayRecord) -> None:
        name = self.host.name(ov.vni)
        try:
            ino = os.stat(netns_path(name)).st_ino
        except OSError:
            return                                       # gone again meanwhile
        addresses = tuple(str(gw).split("/")[0] for gw in ov.gateways)
        old = self.bound.get(ov.vni)
        if old is not None and (old.netns_ino, old.addresses, old.overlay) == (ino, addresses, ov.name):
            return
        self._close_now(ov.vni)
        try:
            socks = self._sockets(name, addresses)
        except (OSError, KernelError) as exc:            # the namespace gone, the port taken
            log.warning("dns: overlay %s: cannot answer at %s port %d in %s: %s", ov.name,
                        ", ".join(addresses), self.port, name, exc)
            return
        bound = self.bound[ov.vni] = _Bound(ov.name, ino, addresses, [], socks)
        for sock in socks:
            transport, _ = await self.loop.create_datagram_endpoint(lambda: _Responder(self, ov.name), sock=sock)
            bound.transports.append(transport)
        log.info("dns: answering overlay %s's names at %s port %d", ov.name, ", ".join(addresses), self.port)

    def _sockets(self, netns: str, addresses: Sequence[str]) -> list[socket.socket]:
        """UDP sockets bound in the namespace (this thread enters it for the binds only)."""
        made: list[socket.socket] = []
        try:
            with entered_netns(netns_path(netns)):
                for address in addresses:
                    family = socket.AF_INET6 if ":" in address else socket.AF_INET
                    sock = socket.socket(family, socket.SOCK_DGRAM)
                    made.append(sock)
                    sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind((address, self.port))
                    sock.setblocking(False)
        except Exception:
            for sock in made:
                sock.close()
            raise
        return made

    async def _close(self, vni: int) -> None:
        async with self._lock:
            self._close_now(vni)

    def _close_now(self, vni: int) -> None:
        bound = self.bound.pop(vni, None)
        if bound is None:
            return
        for transport in bound.transports:
            transport.abort()
        for sock in bound.socks:
            sock.close()                                 # now, not on the loop's next turn

    async def _close_all(self) -> None:
        async with self._lock:
            for vni in list(self.bound):
                self._close_now(vni)
