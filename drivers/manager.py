"""The network manager: the store is the truth, drivers make the kernel agree with it.

Every protocol call lands here after decoding. The manager gives each call the semantics a
mature driver needs and that no single driver should re-implement:

- idempotency: a create that finds the same object answers as the first time did; a delete
  or leave that finds nothing succeeds (Docker retries; daemons restart mid-operation);
- durability: networks and endpoints are recorded before the kernel is touched, so a
  restarted daemon can Leave and Delete what an earlier one made;
- rollback: a driver failure after the record was written removes the record again;
- isolation of work: calls on one network are serialised by an asyncio lock, while blocking
  store and kernel work runs in worker threads so one slow call never stalls the others.

Many processes and hosts on one store (issue 7): that asyncio lock only orders the kernel work
of this daemon. Correctness never rests on it: every read-modify-write of a record is a
compare-and-swap retried on conflict, and the two choices that read many records (the subnet
overlap check of a new network, the host ports of a publish) compare a claims key that every
such choice bumps in the same transaction that records it (``claims/subnets``,
``claims/ports/<host>``), so two daemons deciding at once cannot both win on a stale view.
Records of one host (networks, endpoints and their published ports) carry its id (``Host``);
the overlap rule: two local-space subnets of different hosts may overlap (each host's bridge
is private to it), anything involving the global address space may not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Protocol, TypeVar, runtime_checkable

from drivers.base import (
    EndpointResult,
    EndpointSpec,
    JoinRequest,
    JoinResult,
    NetworkDriver,
    NetworkSpec,
    PortBinding,
    PortPublisher,
    PortRequest,
)
from drivers.errors import Conflict, DriverError, NotFound
from ipam.pools import GLOBAL_ADDRESS_SPACE, OVERLAY_OPTION
from plugin import profile
from plugin.quoting import shown, shown_key
from store import records
from store.base import KV, Cmp, Delete, Put, Store
from store.records import Conflict as LostRaces
from store.records import EndpointRecord, NetworkRecord, overlay_network_ids, update_json
from store.settle import SettlingStore

T = TypeVar("T")
log = logging.getLogger("cnmkit.manager")

EPHEMERAL_PORTS = (49153, 60999)          # where -P ports come from, as with Docker's own bridge
CLAIM_ATTEMPTS = 200                      # rounds lost to other creates/publishes before giving up
DROPPED_REMEMBERED = 4096                 # network ids deleted here, awaiting their watch event


@runtime_checkable
class HostBindingDefault(Protocol):
    """Optional capability of a PortPublisher: the host address of ports whose request names none.

    (Docker's ``com.docker.network.bridge.host_binding_ipv4``.) Applied before host ports are
    chosen, so conflicts are judged, and bindings answered, with the address really used.
    """

    def default_host_ip(self, network: NetworkSpec) -> str: ...


@runtime_checkable
class HostRouting(Protocol):
    """Optional capability: whether the host routes a network's subnets (holds an address on it).

    A network the host does not route (a VLAN whose gateway is a router outside) puts nothing in
    the host's routing table, so the overlap check leaves it out: two VLANs may carry one subnet.
    Drivers without it route what they carry, as a bridge does.
    """

    def routes_on_host(self, spec: NetworkSpec) -> bool: ...


class NetworkManager:
    def __init__(self, store: Store, drivers: dict[str, NetworkDriver], executor: ThreadPoolExecutor,
                 host_id: str = "") -> None:
        # Writes whose outcome the store could not tell are settled by reading them back (store/settle.py).
        self.store: Store = SettlingStore(store)
        self.drivers = drivers
        self.executor = executor
        self.host_id = host_id
        # network id -> (lock, number of calls holding or awaiting it). The entry goes when the
        # last of them leaves, so ids from bad input or deleted networks leave nothing behind,
        # deterministically (a weak table depended on when the garbage collector ran).
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # Told of every successful Join, on the event loop, after the reply is decided: they may
        # schedule work (agent/dockernames.py asks dockerd for the container's name) but never
        # wait, since dockerd is waiting for the reply.
        self.joined: list[Callable[[JoinRequest], None]] = []
        # Ids of networks whose records this daemon deleted itself (a DeleteNetwork, a create's
        # rollback): its driver has already undone the kernel side, so the deletion watch
        # (agent/netwatch.py) leaves them alone. Bounded: an id whose event never comes ages out.
        self._dropped: dict[str, None] = {}
        self._dropped_lock = threading.Lock()

    # -- plumbing -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _network_lock(self, network_id: str) -> AsyncIterator[None]:
        """Hold this network's lock; the table entry lives exactly as long as a holder or waiter.

        Counted, not weakly referenced, so a bad id leaves no entry whatever the garbage collector does.
        """
        lock, users = self._locks.get(network_id) or (asyncio.Lock(), 0)
        self._locks[network_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            # Runs on the event loop thread, like the increment: no other coroutine interleaves.
            lock, users = self._locks[network_id]
            if users == 1:
                del self._locks[network_id]
            else:
                self._locks[network_id] = (lock, users - 1)

    def network_lock(self, network_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The lock every call on this network holds; the reconciling agent takes it too."""
        return self._network_lock(network_id)

    async def _run(self, network_id: str, fn: Callable[..., T], *args: Any) -> T:
        async with self._network_lock(network_id):
            return await profile.run_in_executor(self.executor, fn, *args)

    def _read_network(self, network_id: str) -> NetworkRecord | None:
        kv = self.store.get(records.network_key(network_id))
        return NetworkRecord.decode(kv.value) if kv else None

    def _read_endpoint(self, network_id: str, endpoint_id: str) -> tuple[EndpointRecord | None, int]:
        kv = self.store.get(records.endpoint_key(network_id, endpoint_id))
        return (EndpointRecord.decode(kv.value), kv.mod_rev) if kv else (None, 0)

    def _network(self, network_id: str) -> tuple[NetworkSpec, NetworkDriver]:
        rec = self._read_network(network_id)
        if rec is None:
            raise NotFound(f"NetworkID: network {network_id[:12]} not found")
        driver = self.drivers.get(rec.driver)
        if driver is None:
            raise NotFound(f"network {network_id[:12]} uses driver {rec.driver}, which this daemon lacks")
        return rec.spec, driver

    def _endpoint(self, network_id: str, endpoint_id: str) -> tuple[EndpointSpec, EndpointRecord] | None:
        rec, _ = self._read_endpoint(network_id, endpoint_id)
        return (rec.spec, rec) if rec else None

    # -- networks -----------------------------------------------------------------------------

    def _update_endpoint(self, network_id: str, endpoint_id: str,
                         fn: Callable[[EndpointRecord], EndpointRecord]) -> None:
        """Change an endpoint record with a CAS loop (``fn`` returns the new one); absent: nothing."""
        def edit(rec: dict[str, Any] | None) -> dict[str, Any] | None:
            return None if rec is None else fn(EndpointRecord.from_dict(rec)).to_dict()

        try:
            update_json(self.store, records.endpoint_key(network_id, endpoint_id), edit)
        except LostRaces as exc:
            raise Conflict(f"EndpointID: endpoint {endpoint_id[:12]} keeps changing, try again") from exc

    async def create_network(self, driver_name: str, spec: NetworkSpec) -> None:
        await self._run(spec.network_id, self._create_network, driver_name, spec)

    def _create_network(self, driver_name: str, spec: NetworkSpec) -> None:
        driver = self.drivers[driver_name]
        unknown = driver.validate(spec) or []
        if unknown:
            # Kept with the network (inspect shows them) as Docker's bridge keeps them; said here
            # so that a mistyped option does not silently do nothing.
            log.warning("network %s (%s): driver %s does not use option(s) %s; kept as given",
                        spec.network_id[:12], shown(spec.name or "unnamed"), driver_name,
                        ", ".join(shown_key(k) for k in unknown))
        key = records.network_key(spec.network_id)
        for _ in range(CLAIM_ATTEMPTS):
            # The claims token first: any create that commits after this read bumps it, so an
            # overlap check on a view older than that create fails its compare and runs again.
            claims = self.store.get(records.SUBNET_CLAIMS)
            existing = self._read_network(spec.network_id)
            if existing is not None:
                if existing.driver != driver_name or existing.spec != spec:
                    raise Conflict(f"NetworkID: network {spec.network_id[:12]} exists with a different "
                                   "configuration")
                driver.create_network(spec)          # re-ensure the kernel side; idempotent
                return
            self._check_overlap(driver_name, spec)
            value = NetworkRecord(driver=driver_name, spec=spec, host=self.host_id).encode()
            compares = [Cmp(records.SUBNET_CLAIMS, claims.mod_rev if claims else 0), Cmp(key, 0)]
            ops: list[Put | Delete] = [Put(records.SUBNET_CLAIMS, records.next_claim(claims)), Put(key, value)]
            if spec.name:
                compares.append(Cmp(records.name_key(spec.name), 0))
                ops.append(Put(records.name_key(spec.name), records.encode_name(spec.network_id)))
            result = self.store.txn(compares, ops)
            if result.succeeded:
                break
            for failed_key, kv in result.failed:
                if failed_key.startswith(records.NAMES) and kv is not None:
                    raise Conflict(f"network name {shown(spec.name)} is already used by network "
                                   f"{records.decode_name(kv.value)[:12]}")
            # Another create committed meanwhile (the claims token or this very id): look again.
        else:
            raise Conflict(f"NetworkID: network {spec.network_id[:12]}: other creates kept winning, try again")
        try:
            driver.create_network(spec)
        except BaseException:
            self._drop_network_records(spec)
            raise

    def _routed(self, driver_name: str, spec: NetworkSpec) -> bool:
        driver = self.drivers.get(driver_name)
        if getattr(driver, "isolated", False):
            return False                       # in namespaces of its own (the overlay): never meets ours
        if not isinstance(driver, HostRouting):
            return True
        try:
            return driver.routes_on_host(spec)
        except DriverError:
            return True                        # a record this driver cannot read: assume the worst

    def _check_overlap(self, driver_name: str, spec: NetworkSpec) -> None:
        """Two networks with overlapping subnets would fight over host routes: refuse, naming the other.

        Only two local-space subnets on different hosts may overlap: each lives behind its own
        host's bridge. A global-space subnet may reach every host, so it clashes with any. A
        driver whose networks live in namespaces of their own (``isolated``: the VXLAN overlay)
        is checked by neither side: its subnets never meet the host's routes.
        """
        mine = [d for d in (*spec.ipv4, *spec.ipv6) if d.pool.prefixlen > 0]
        if not mine or not self._routed(driver_name, spec):
            return
        kvs, _ = self.store.list(records.NETWORKS)
        for kv in kvs:
            rec = NetworkRecord.decode(kv.value)
            other = rec.spec
            if not self._routed(rec.driver, other):
                continue
            same_host = rec.owned_by(self.host_id)
            for data in (d for d in (*other.ipv4, *other.ipv6) if d.pool.prefixlen > 0):
                theirs = data.pool
                for ours in mine:
                    pool = ours.pool
                    shared = GLOBAL_ADDRESS_SPACE in (ours.address_space, data.address_space)
                    if not (same_host or shared):
                        continue
                    if pool.version == theirs.version and (pool in theirs or theirs in pool):
                        label = other.name or other.network_id[:12]
                        raise Conflict(f"subnet {pool} overlaps {theirs} of network {label}")

    def dropped_here(self, network_id: str) -> bool:
        """True (once per deletion) when this daemon deleted the network's record itself."""
        with self._dropped_lock:
            return self._dropped.pop(network_id, 0) is None

    def _drop_network_records(self, spec: NetworkSpec) -> None:
        with self._dropped_lock:                 # before the delete: its watch event may come at once
            self._dropped[spec.network_id] = None
            if len(self._dropped) > DROPPED_REMEMBERED:
                del self._dropped[next(iter(self._dropped))]
        ops: list[Put | Delete] = [Delete(records.network_key(spec.network_id))]
        if spec.name:
            ops.append(Delete(records.name_key(spec.name)))
        try:
            self.store.txn([], ops)
        except BaseException:
            self.dropped_here(spec.network_id)
            raise

    async def delete_network(self, network_id: str) -> None:
        await self._run(network_id, self._delete_network, network_id)

    def _delete_network(self, network_id: str) -> None:
        try:
            spec, driver = self._network(network_id)
        except NotFound:
            return                                      # already gone
        eps, _ = self.store.list(records.endpoints_prefix(network_id), limit=5)
        if eps:
            names = ", ".join(records.endpoint_ids_of(kv.key)[1][:12] for kv in eps)
            raise Conflict(f"network {spec.name or network_id[:12]} has active endpoints: {names}")
        driver.delete_network(spec)
        self._drop_network_records(spec)

    # -- endpoints ----------------------------------------------------------------------------

    async def create_endpoint(self, spec: EndpointSpec) -> EndpointResult:
        return await self._run(spec.network_id, self._create_endpoint, spec)

    def _create_endpoint(self, spec: EndpointSpec) -> EndpointResult:
        network, driver = self._network(spec.network_id)
        for addr, field, pools in ((spec.address, "Interface.Address", network.ipv4),
                                   (spec.address_v6, "Interface.AddressIPv6", network.ipv6)):
            if addr is not None and pools and not any(addr.ip in d.pool for d in pools):
                raise Conflict(f"{field}: {addr} is outside the subnets of network "
                               f"{network.name or network.network_id[:12]}")
        found = self._endpoint(spec.network_id, spec.endpoint_id)
        if found is not None:
            return found[1].result
        result = driver.create_endpoint(network, spec)
        stored = replace(spec, mac=spec.mac or result.mac)
        value = EndpointRecord(spec=stored, mac=result.mac, sandbox="", host=self.host_id).encode()
        key = records.endpoint_key(spec.network_id, spec.endpoint_id)
        if not self.store.cas(key, value, 0).succeeded:
            raise Conflict(f"EndpointID: endpoint {spec.endpoint_id[:12]} is being created concurrently")
        return result

    async def delete_endpoint(self, network_id: str, endpoint_id: str) -> None:
        await self._run(network_id, self._delete_endpoint, network_id, endpoint_id)

    def _delete_endpoint(self, network_id: str, endpoint_id: str) -> None:
        found = self._endpoint(network_id, endpoint_id)
        if found is None:
            return
        network, driver = self._network(network_id)
        if found[1].ports and isinstance(driver, PortPublisher):
            driver.unpublish(network, found[0])            # no Revoke came (a crash, an old engine)
        driver.delete_endpoint(network, found[0])
        self.store.delete(records.endpoint_key(network_id, endpoint_id))

    async def join(self, request: JoinRequest) -> JoinResult:
        result = await self._run(request.network_id, self._join, request)
        for hook in self.joined:
            try:
                hook(request)
            except Exception:                    # the Join succeeded: a hook's bug must not undo that
                log.exception("join hook %r failed", hook)
        return result

    def _join(self, request: JoinRequest) -> JoinResult:
        network, driver = self._network(request.network_id)
        found = self._endpoint(request.network_id, request.endpoint_id)
        if found is None:
            raise NotFound(f"EndpointID: endpoint {request.endpoint_id[:12]} not found")
        spec, _ = found
        result = driver.join(network, spec, request)
        self._update_endpoint(request.network_id, request.endpoint_id,
                              lambda rec: replace(rec, sandbox=request.sandbox_key))
        return result

    async def leave(self, network_id: str, endpoint_id: str) -> None:
        await self._run(network_id, self._leave, network_id, endpoint_id)

    def _leave(self, network_id: str, endpoint_id: str) -> None:
        found = self._endpoint(network_id, endpoint_id)
        if found is None:
            return
        network, driver = self._network(network_id)
        driver.leave(network, found[0])
        self._update_endpoint(network_id, endpoint_id, lambda rec: replace(rec, sandbox=""))

    async def endpoint_info(self, network_id: str, endpoint_id: str) -> dict[str, object]:
        return await self._run(network_id, self._endpoint_info, network_id, endpoint_id)

    def _endpoint_info(self, network_id: str, endpoint_id: str) -> dict[str, object]:
        network, driver = self._network(network_id)
        found = self._endpoint(network_id, endpoint_id)
        if found is None:
            raise NotFound(f"EndpointID: endpoint {endpoint_id[:12]} not found")
        return driver.endpoint_info(network, found[0])

    # -- published ports (ProgramExternalConnectivity / RevokeExternalConnectivity) -----------------

    async def program_external(self, network_id: str, endpoint_id: str,
                               requests: tuple[PortRequest, ...]) -> list[PortBinding]:
        """Choose and reserve host ports, then program them; only the choice is serialised host-wide.

        Host ports are host-wide, so choosing them is serialised across networks (``_ports_lock``),
        but that critical section is store work only: read what is taken, write this endpoint's
        choice with a compare-and-swap on its record. The kernel work (seconds for thousands of
        ports) runs after it, under this network's own lock alone, so it never holds up another
        network's create, publish or delete. Lock order is always network lock, then ports lock.
        """
        loop = asyncio.get_running_loop()
        async with self._network_lock(network_id):
            reserved = await loop.run_in_executor(self.executor, self._reserve_ports,
                                                  network_id, endpoint_id, requests)
            if reserved is None:
                return []
            bindings, previous = reserved
            try:
                await loop.run_in_executor(self.executor, self._publish, network_id, endpoint_id, bindings)
            except Exception:
                # The firewall replaces an endpoint's rules in one commit, so a failure left the
                # previous ones in place: the record says so again.
                await loop.run_in_executor(self.executor, self._set_ports, network_id, endpoint_id, previous)
                raise
            return bindings

    def _reserve_ports(self, network_id: str, endpoint_id: str, requests: tuple[PortRequest, ...],
                       ) -> tuple[list[PortBinding], tuple[PortBinding, ...] | None] | None:
        """Pick host ports and record them with the endpoint (CAS); returns them and the previous ones."""
        network, driver = self._network(network_id)
        key = records.endpoint_key(network_id, endpoint_id)
        claims_key = records.port_claims_key(self.host_id)
        for _ in range(CLAIM_ATTEMPTS):
            claims = self.store.get(claims_key)  # before the choice: see create_network
            rec, mod_rev = self._read_endpoint(network_id, endpoint_id)
            if rec is None:
                raise NotFound(f"EndpointID: endpoint {endpoint_id[:12]} not found")
            if not requests or not isinstance(driver, PortPublisher):
                return None
            if isinstance(driver, HostBindingDefault):
                default = driver.default_host_ip(network)
                requests = tuple(replace(r, host_ip=r.host_ip or default) for r in requests)
            bindings = self._choose_host_ports(endpoint_id, requests)
            previous = rec.ports
            value = replace(rec, ports=tuple(bindings)).encode()
            result = self.store.txn(
                [Cmp(claims_key, claims.mod_rev if claims else 0), Cmp(key, mod_rev)],
                [Put(claims_key, records.next_claim(claims)), Put(key, value)])
            if result.succeeded:
                return bindings, previous
            # Another choice of this host's ports, or a change to this endpoint: choose again.
        raise Conflict(f"EndpointID: endpoint {endpoint_id[:12]}: other port choices kept winning, try again")

    def _publish(self, network_id: str, endpoint_id: str, bindings: list[PortBinding]) -> None:
        network, driver = self._network(network_id)
        found = self._endpoint(network_id, endpoint_id)
        if found is None:
            raise NotFound(f"EndpointID: endpoint {endpoint_id[:12]} not found")
        if isinstance(driver, PortPublisher):
            driver.publish(network, found[0], tuple(bindings))

    def _set_ports(self, network_id: str, endpoint_id: str, ports: tuple[PortBinding, ...] | None) -> None:
        self._update_endpoint(network_id, endpoint_id, lambda rec: replace(rec, ports=ports or None))

    def _choose_host_ports(self, endpoint_id: str, requests: tuple[PortRequest, ...]) -> list[PortBinding]:
        """Resolve ranges and ``-P`` (0) to free host ports; refuse a port another endpoint publishes."""
        taken: dict[tuple[str, int], list[tuple[str, str]]] = {}
        for kv in self.store.list(records.ENDPOINTS)[0]:
            other = EndpointRecord.decode(kv.value)
            owner = records.endpoint_ids_of(kv.key)[1]
            if owner == endpoint_id or not other.owned_by(self.host_id):
                continue  # ports are per host: another host's endpoint takes none of ours
            for b in other.ports or ():
                taken.setdefault((b.proto, b.host_port), []).append((b.host_ip, owner))

        def free(proto: str, port: int, host_ip: str) -> bool:
            return all(ip and host_ip and ip != host_ip for ip, _ in taken.get((proto, port), []))

        out: list[PortBinding] = []
        for req in requests:
            first, last = ((req.host_port_first, req.host_port_last) if req.host_port_first
                           else EPHEMERAL_PORTS)
            port = next((p for p in range(first, last + 1) if free(req.proto, p, req.host_ip)), None)
            if port is None:
                owners = {o[:12] for p in range(first, min(last, first + 16) + 1)
                          for _, o in taken.get((req.proto, p), [])}
                raise Conflict(f"host port {first}{'-' + str(last) if last != first else ''}/{req.proto} is "
                               f"already published by endpoint {', '.join(sorted(owners)) or '?'}")
            binding = PortBinding(proto=req.proto, port=req.port, host_port=port, host_ip=req.host_ip)
            taken.setdefault((req.proto, port), []).append((req.host_ip, endpoint_id))
            out.append(binding)
        return out

    async def revoke_external(self, network_id: str, endpoint_id: str) -> None:
        await self._run(network_id, self._revoke_external, network_id, endpoint_id)

    def _revoke_external(self, network_id: str, endpoint_id: str) -> None:
        found = self._endpoint(network_id, endpoint_id)
        if found is None:
            return
        network, driver = self._network(network_id)
        spec, rec = found
        # Only an endpoint whose record names ports can have port rules: the ports are recorded
        # before they are programmed and cleared after they are removed. dockerd revokes at every
        # container stop, and looking at the firewall costs iptables processes (16 ms a stop,
        # issue 11 item 2); stray rules of an endpoint no longer on record are the reconciler's.
        if isinstance(driver, PortPublisher) and rec.ports:
            driver.unpublish(network, spec)
        if rec.ports:
            self._update_endpoint(network_id, endpoint_id, lambda r: replace(r, ports=None))

    # -- inspection (CLI) -------------------------------------------------------------------------

    async def list_networks(self) -> list[dict[str, Any]]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._list_networks)

    def _list_networks(self) -> list[dict[str, Any]]:
        kvs, _ = self.store.list(records.NETWORKS)
        eps, _ = self.store.list(records.ENDPOINTS)
        counts: dict[str, int] = {}
        for kv in eps:
            nid = records.endpoint_ids_of(kv.key)[0]
            counts[nid] = counts.get(nid, 0) + 1
        return [self._summary(NetworkRecord.decode(kv.value), counts.get(records.network_id_of(kv.key), 0))
                for kv in kvs]

    @staticmethod
    def _summary(rec: NetworkRecord, endpoints: int) -> dict[str, Any]:
        spec = records.network_to_dict(rec.spec)
        return {"Id": spec["NetworkID"], "Name": spec["Name"], "Driver": rec.driver,
                "Internal": spec["Internal"], "EnableIPv6": spec["EnableIPv6"],
                "IPv4": spec["IPv4"], "IPv6": spec["IPv6"],
                "Options": spec["Options"], "Endpoints": endpoints}

    async def record_names(self, network_id: str, endpoint_id: str, names: str) -> bool:
        """Put a container's names (``records.NAMES_OPTION``) on its endpoint record; False if the
        endpoint is gone. For names learnt after the Join (agent/dockernames.py)."""
        return await self._run(network_id, self._record_names, network_id, endpoint_id, names)

    def _record_names(self, network_id: str, endpoint_id: str, names: str) -> bool:
        found = False

        def named(rec: EndpointRecord) -> EndpointRecord:
            nonlocal found
            found = True
            return replace(rec, spec=replace(rec.spec, options={**rec.spec.options, records.NAMES_OPTION: names}))

        self._update_endpoint(network_id, endpoint_id, named)
        return found

    async def inspect_network(self, ref: str, *, overlay: bool = False) -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._inspect_network, ref, overlay)

    def _inspect_network(self, ref: str, overlay: bool = False) -> dict[str, Any]:
        """One network and its endpoints: reads only that network's keys (every runtime attach asks).

        ``overlay``: also ``OverlayEndpointList``, the endpoints of every network record of the same
        overlay (``cnmkit.overlay``): each dockerd mints its own id for one overlay, so the overlay's
        containers on other hosts sit under other ids. Asked for names (runtime hosts files) only.
        """
        network_id = self.resolve(ref)
        rec = self._read_network(network_id)
        if rec is None:
            raise NotFound(f"network {shown(ref)} not found")
        eps, _ = self.store.list(records.endpoints_prefix(network_id))
        summary = self._summary(rec, len(eps))
        summary["EndpointList"] = self._endpoint_list(eps)
        name = rec.spec.options.get(OVERLAY_OPTION)
        if overlay and name:
            siblings = overlay_network_ids(self.store, network_id, rec)
            summary["OverlayEndpointList"] = [
                ep for nid in siblings
                for ep in self._endpoint_list(self.store.list(records.endpoints_prefix(nid))[0])]
        return summary

    @staticmethod
    def _endpoint_list(eps: list[KV]) -> list[dict[str, Any]]:
        return [{**shown_ep["Spec"], "Sandbox": shown_ep["Sandbox"], "Ports": shown_ep.get("Ports", [])}
                for shown_ep in (EndpointRecord.decode(kv.value).to_dict() for kv in eps)]

    def resolve(self, ref: str) -> str:
        """A network by name, full id, or unique id prefix (as docker's CLI accepts)."""
        if not ref:
            raise NotFound("Network: empty network name")
        kv = self.store.get(records.name_key(ref))
        if kv is not None:
            return records.decode_name(kv.value)
        if self.store.get(records.network_key(ref)) is not None:
            return ref
        kvs, _ = self.store.list(records.NETWORKS + ref, limit=2)
        if len(kvs) == 1:
            return records.network_id_of(kvs[0].key)
        if len(kvs) > 1:
            raise Conflict(f"network id prefix {shown(ref)} is ambiguous")
        raise NotFound(f"network {shown(ref)} not found")
