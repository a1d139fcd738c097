"""cnmkit-vxlan: one network across hosts, a VXLAN overlay converged from the shared store.

Identity across hosts (issue 8, item 3). Every dockerd mints its own NetworkID and calls
RequestPool before CreateNetwork with nothing but ``--ipam-opt`` values, so an overlay is named
by the user, on every host, twice::

    docker network create -d cnmkit-vxlan --ipam-driver cnmkit \\
        --ipam-opt cnmkit.overlay=blue -o cnmkit.overlay=blue --subnet 10.77.0.0/24 blue

- the IPAM option puts the pool in the overlay's own address space (``cnmkit-overlay.blue``,
  ipam/service.py), shared by every host through the store: one PoolID, one allocator, the
  gateway request shared by every host (the same gateway everywhere), no address handed twice;
- the driver option names the overlay for CreateNetwork, which checks that this host really
  holds the overlay's pool (a create without the IPAM option got a per-host pool: refused,
  telling the user what to add), then registers or matches ``overlays/<name>``: the first create
  (any host) writes subnets, gateways, VNI, MTU and ``internal`` by compare-and-swap, every later
  one must match field by field or is refused naming the field. Each host's NetworkID maps to
  the overlay through its network record's ``cnmkit.overlay`` option;
- ``cnmkit network create -d vxlan NAME --subnet ...`` (client/engine.py) adds both options
  itself (the overlay is named after the network) and creates the network once: every host's
  daemon and runtime use that one network record through the store.

VNI (item 1): ``-o vni=N`` (1..16777215) or the lowest free one from 4096 up; ``claims/vni/<N>``
is created in the same transaction as the overlay record, so two overlays never share a VNI.
MTU (item 5): the underlay device's (the one carrying ``--advertise``) minus 50, or
``-o com.docker.network.driver.mtu=N``, refused when larger than the underlay allows; the
veths, bridge and VXLAN device all get it, so an oversized packet fails at the sender with
EMSGSIZE instead of vanishing in the tunnel. Kernel layout per overlay and host: drivers/overlay_ns.py.
Remote endpoints' FDB and neighbour entries: agent/overlay.py, from the store.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from netaddr import IPNetwork

from drivers import naming
from drivers.base import (
    EndpointResult,
    EndpointSpec,
    EndpointState,
    JoinRequest,
    JoinResult,
    NetworkSpec,
)
from drivers.bridge import DEFAULT_SANDBOX_DIRS, OPT_MTU, OPT_NAME, check_sandbox, endpoint_mac
from drivers.errors import Conflict, DriverError, InvalidOption, KernelError, NotFound
from drivers.kernel_api import OverlayKernelOps
from drivers.overlay_ns import BRIDGE, OverlayHost
from ipam.pools import OVERLAY_NAME_RE, OVERLAY_OPTION
from ipam.service import overlay_pool_hosts
from plugin.quoting import shown
from store import records
from store.base import Cmp, Delete, Put, Store
from store.records import NetworkRecord, OverlayRecord

OPT_VNI = "vni"
VNI_MAX = (1 << 24) - 1
VNI_AUTO_FIRST = 4096
VXLAN_OVERHEAD = 50                      # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
DRIVER_NAME = "cnmkit-vxlan"
_ATTEMPTS = 100
log = logging.getLogger("cnmkit.vxlan")


@dataclass(frozen=True)
class VxlanConfig:
    """The -o options of one overlay network, parsed and checked once."""

    overlay: str
    vni: int = 0                         # 0: the overlay's, or a free one from the range
    mtu: int = 0                         # 0: the overlay's, or the underlay's minus 50
    unknown: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: NetworkSpec) -> VxlanConfig:
        overlay, vni, mtu = "", 0, 0
        unknown: list[str] = []
        for key, value in spec.options.items():
            text = str(value)
            if key == OVERLAY_OPTION:
                overlay = text
            elif key == OPT_VNI:
                if not text.isdigit() or not 1 <= int(text) <= VNI_MAX:
                    raise InvalidOption(OPT_VNI, f"{shown(text)} is not a VNI (1..{VNI_MAX})")
                vni = int(text)
            elif key == OPT_MTU:
                if not text.isdigit() or not 68 <= int(text) <= 65535:
                    raise InvalidOption(OPT_MTU, f"{shown(text)} is not an MTU (68..65535)")
                mtu = int(text)
            elif key == OPT_NAME:
                continue
            elif key.startswith("cnmkit."):
                raise InvalidOption(key, "unknown cnmkit option for the cnmkit-vxlan driver")
            else:
                unknown.append(key)
        if not overlay:
            raise InvalidOption(OVERLAY_OPTION, "missing: name the overlay on every host with "
                                "-o cnmkit.overlay=NAME --ipam-driver cnmkit --ipam-opt cnmkit.overlay=NAME")
        if not OVERLAY_NAME_RE.fullmatch(overlay):
            raise InvalidOption(OVERLAY_OPTION, f"{shown(overlay)} is not an overlay name "
                                "(1..64 of letters, digits, '_', '.', '-')")
        return cls(overlay=overlay, vni=vni, mtu=mtu, unknown=tuple(unknown))


def overlay_of(spec: NetworkSpec) -> str:
    """The overlay a network record belongs to ("" for none): its ``cnmkit.overlay`` option."""
    return str(spec.options.get(OVERLAY_OPTION, ""))


class VxlanDriver:
    name = DRIVER_NAME
    # Local scope (a non-swarm dockerd 20.10 refuses Scope global), global connectivity.
    scope: Literal["local", "global"] = "local"
    connectivity_scope: Literal["local", "global"] = "global"
    isolated = True                       # namespaces of its own: the manager skips overlap checks

    def __init__(self, host_kernel: OverlayKernelOps, store: Store, host_id: str, advertise: str, *,
                 sandbox_dirs: Sequence[str] = DEFAULT_SANDBOX_DIRS) -> None:
        self.store = store
        self.host_id = host_id
        self.advertise = advertise
        self.host = OverlayHost(host_kernel, host_id, advertise)
        self.host_kernel = host_kernel
        self.sandbox_dirs = tuple(dict.fromkeys(os.path.realpath(d) for d in sandbox_dirs))
        # Where a non-direct Join leaves the container end: the daemon's own namespace, as dockerd expects.
        self.home_netns = f"/proc/{os.getpid()}/ns/net"
        self._lock = threading.RLock()
        # Overlay records change only in their membership once written (what Join and
        # EndpointOperInfo need never changes): they read them from here, saving a store round
        # trip each on the attach path. The overlay agent forgets one on any event for it.
        self._overlays: dict[str, OverlayRecord] = {}

    # -- networks ---------------------------------------------------------------------------

    def validate(self, spec: NetworkSpec) -> list[str]:
        return list(VxlanConfig.parse(spec).unknown)

    def underlay(self) -> tuple[int, list[IPNetwork]]:
        """MTU and networks of the device carrying the advertise address (the tunnel's underlay)."""
        if not self.advertise:
            raise DriverError("advertise: this host has no --advertise address; the VXLAN tunnel needs one")
        link = self.host_kernel.device_of_address(self.advertise)
        if link is None:
            raise DriverError(f"advertise: no device on this host carries {self.advertise} "
                              "(the VXLAN underlay); check --advertise")
        return int(link["mtu"]), [IPNetwork(a) for a in self.host_kernel.addrs(str(link["name"]))]

    def create_network(self, spec: NetworkSpec) -> None:
        cfg = VxlanConfig.parse(spec)
        self._check_pools(spec, cfg.overlay)
        mtu, underlay_nets = self.underlay()
        for data in (*spec.ipv4, *spec.ipv6):
            clash = next((n for n in underlay_nets if n.version == data.pool.version
                          and (n.cidr in data.pool or data.pool in n.cidr)), None)
            if clash is not None:
                # Tunnelled packets to the other VTEPs would be routed into the overlay itself.
                raise InvalidOption("subnet", f"{data.pool.cidr} overlaps the underlay's own {clash.cidr} "
                                    f"(the network the tunnel runs over)")
        ov = self._register(spec, cfg, mtu)
        try:
            self.host.ensure(ov)
        except BaseException:
            self._leave(spec)
            self.host.teardown(ov.vni)
            raise

    def _check_pools(self, spec: NetworkSpec, overlay: str) -> None:
        if not spec.ipv4 and not spec.ipv6:
            raise InvalidOption(OVERLAY_OPTION, "an overlay needs a subnet (--subnet)")
        for data in (*spec.ipv4, *spec.ipv6):
            holders = overlay_pool_hosts(self.store, overlay, str(data.pool.cidr))
            if holders is None or (self.host_id and self.host_id not in holders):
                raise InvalidOption(OVERLAY_OPTION, f"pool {data.pool.cidr} is not overlay {shown(overlay)}'s: "
                                    f"add --ipam-driver cnmkit --ipam-opt cnmkit.overlay={overlay} so every "
                                    "host shares the overlay's pool")

    def _register(self, spec: NetworkSpec, cfg: VxlanConfig, underlay: int) -> OverlayRecord:
        """The overlay record: written by the first create (any host), matched by every later one,
        which adds its network to the membership (compare-and-swap)."""
        limit = underlay - VXLAN_OVERHEAD
        if cfg.mtu > limit:
            raise InvalidOption(OPT_MTU, f"{cfg.mtu} is larger than this host's underlay allows "
                                f"({underlay} - {VXLAN_OVERHEAD} = {limit})")
        pools = (*spec.ipv4, *spec.ipv6)
        subnets = tuple(str(p.pool.cidr) for p in pools)
        gateways = tuple(str(p.gateway) for p in pools if p.gateway is not None)
        key = records.overlay_key(cfg.overlay)
        for _ in range(_ATTEMPTS):
            kv = self.store.get(key)
            if kv is not None:
                ov = OverlayRecord.decode(kv.value)
                self._match(ov, cfg, subnets, gateways, spec.internal, limit)
                members = self._members(ov)
                if members.get(spec.network_id) == self.host_id:
                    return ov                            # a re-ensure (restart, retry): nothing to add
                joined = replace(ov, networks={**members, spec.network_id: self.host_id})
                if self.store.txn([Cmp(key, kv.mod_rev)], [Put(key, joined.encode())]).succeeded:
                    return joined
                continue                                 # another create or delete of the overlay won
            vni = cfg.vni or self._free_vni()
            ov = OverlayRecord(name=cfg.overlay, vni=vni, mtu=cfg.mtu or limit, subnets=subnets,
                               gateways=gateways, internal=spec.internal, networks={spec.network_id: self.host_id})
            claim = records.vni_claim_key(vni)
            result = self.store.txn([Cmp(key, 0), Cmp(claim, 0)],
                                    [Put(key, ov.encode()), Put(claim, cfg.overlay.encode())])
            if result.succeeded:
                return ov
            for failed, held in result.failed:
                if failed == claim and held is not None and cfg.vni:
                    raise Conflict(f"vni: {vni} is already used by overlay {shown(held.value.decode())}")
        raise Conflict(f"{OVERLAY_OPTION}: overlay {shown(cfg.overlay)}: other creates kept winning, try again")

    @staticmethod
    def _match(ov: OverlayRecord, cfg: VxlanConfig, subnets: tuple[str, ...], gateways: tuple[str, ...],
               internal: bool, limit: int) -> None:
        where = f"overlay {shown(ov.name)} exists with"
        if subnets != ov.subnets:
            raise Conflict(f"subnet: {where} {', '.join(ov.subnets)}, not {', '.join(subnets)}")
        if gateways != ov.gateways:
            raise Conflict(f"gateway: {where} {', '.join(ov.gateways)}, not {', '.join(gateways)}")
        if cfg.vni and cfg.vni != ov.vni:
            raise Conflict(f"vni: {where} VNI {ov.vni}, not {cfg.vni}")
        if cfg.mtu and cfg.mtu != ov.mtu:
            raise Conflict(f"{OPT_MTU}: {where} MTU {ov.mtu}, not {cfg.mtu}")
        if internal != ov.internal:
            raise Conflict(f"internal: {where} internal={str(ov.internal).lower()}")
        if ov.mtu > limit:
            raise InvalidOption(OPT_MTU, f"overlay {shown(ov.name)} has MTU {ov.mtu}, larger than this host's "
                                f"underlay allows ({limit})")

    def _free_vni(self) -> int:
        taken = {int(kv.key[len(records.VNI_CLAIMS):]) for kv in self.store.list(records.VNI_CLAIMS)[0]
                 if kv.key[len(records.VNI_CLAIMS):].isdigit()}
        vni = VNI_AUTO_FIRST
        while vni in taken:
            vni += 1
        if vni > VNI_MAX:
            raise Conflict("vni: every VNI of the automatic range is taken")
        return vni

    def _members(self, ov: OverlayRecord) -> dict[str, str]:
        """network id -> host of the overlay's networks: its record's membership, or (a record from
        before membership was kept) the network records of the overlay now."""
        if ov.networks is not None:
            return dict(ov.networks)
        return {rec.spec.network_id: rec.host or "" for rec in
                (NetworkRecord.decode(kv.value) for kv in self.store.list(records.NETWORKS)[0])
                if rec.driver == DRIVER_NAME and overlay_of(rec.spec) == ov.name}

    def _leave(self, spec: NetworkSpec) -> tuple[OverlayRecord, bool] | None:
        """Take the network out of its overlay's membership, and the record (with its VNI claim)
        away with the last network, in one compare-and-swap: of two deletes at once, on one host
        or two, exactly the one that leaves nothing removes it. Answers the overlay and whether
        another network of this host is still in it (None: no record)."""
        name = VxlanConfig.parse(spec).overlay
        key = records.overlay_key(name)
        for _ in range(_ATTEMPTS):
            kv = self.store.get(key)
            if kv is None:
                return None
            ov = OverlayRecord.decode(kv.value)
            members = self._members(ov)
            members.pop(spec.network_id, None)
            ops: list[Put | Delete] = [Put(key, replace(ov, networks=members).encode())]
            if not members:
                ops = [Delete(key)]
                claim = self.store.get(records.vni_claim_key(ov.vni))
                if claim is not None and claim.value.decode() == name:
                    ops.append(Delete(claim.key))
            if self.store.txn([Cmp(key, kv.mod_rev)], ops).succeeded:
                self.forget_overlay(name)
                return ov, any(host in (self.host_id, "") for host in members.values())
        raise Conflict(f"{OVERLAY_OPTION}: overlay {shown(name)}: other creates and deletes kept winning, try again")

    def overlay(self, name: str, *, cached: bool = False) -> OverlayRecord | None:
        """The overlay's record; ``cached``: from memory when this process has read it before."""
        if cached and name in self._overlays:
            return self._overlays[name]
        kv = self.store.get(records.overlay_key(name))
        if kv is None:
            self._overlays.pop(name, None)
            return None
        ov = self._overlays[name] = OverlayRecord.decode(kv.value)
        return ov

    def forget_overlay(self, name: str) -> None:
        """The overlay's record changed or went (a watch event): read it from the store next time."""
        self._overlays.pop(name, None)

    def _overlay_of(self, network: NetworkSpec, *, cached: bool = False) -> OverlayRecord:
        ov = self.overlay(VxlanConfig.parse(network).overlay, cached=cached)
        if ov is None:
            raise NotFound(f"{OVERLAY_OPTION}: overlay {shown(overlay_of(network))} of network "
                           f"{network.network_id[:12]} is not on record")
        return ov

    def delete_network(self, spec: NetworkSpec) -> None:
        """This host's namespace goes unless another of its networks is in the overlay; the overlay
        record and its VNI claim go with the last network of the overlay on any host (``_leave``)."""
        left = self._leave(spec)
        if left is not None and not left[1]:
            try:
                self.host.teardown(left[0].vni)
            except KernelError as exc:       # the record is settled: the overlay agent's next pass retries
                log.warning("overlay %s: removing this host's namespace failed: %s", left[0].name, exc)

    # -- endpoints --------------------------------------------------------------------------

    def create_endpoint(self, network: NetworkSpec, endpoint: EndpointSpec) -> EndpointResult:
        """A MAC derived from the address (unique in the overlay, as addresses are), else random."""
        return endpoint_mac(endpoint, naming.random_mac)

    def join(self, network: NetworkSpec, endpoint: EndpointSpec, request: JoinRequest) -> JoinResult:
        ov = self._overlay_of(network, cached=True)
        eid = endpoint.endpoint_id
        peer = naming.container_veth_name(eid)
        direct = request.direct and bool(request.sandbox_key)
        if direct:
            check_sandbox(request.sandbox_key, self.sandbox_dirs)
            direct = os.path.exists(request.sandbox_key)
        # The first endpoint of this host in an overlay created elsewhere (the CLI's) makes its namespace.
        if not self.host.ready(ov.vni):
            self.host.ensure(ov)
        with self.host.kernel(ov.vni) as k:
            k.ensure_veth(naming.host_veth_name(eid), peer, alias=naming.endpoint_alias(eid), mtu=ov.mtu,
                          peer_mac=endpoint.mac or None, master=BRIDGE,
                          peer_netns_path=request.sandbox_key if direct else self.home_netns)
        if network.internal:
            return JoinResult(src_name=peer, dst_prefix="eth", disable_gateway_service=True)
        gw4 = next((p.gateway.ip for p in network.ipv4 if p.gateway is not None), None)
        gw6 = next((p.gateway.ip for p in network.ipv6 if p.gateway is not None), None)
        return JoinResult(src_name=peer, dst_prefix="eth", gateway=gw4, gateway_v6=gw6)

    def leave(self, network: NetworkSpec, endpoint: EndpointSpec) -> None:
        """Nothing: dockerd moves the link back after Leave, as with the bridge."""

    def delete_endpoint(self, network: NetworkSpec, endpoint: EndpointSpec) -> None:
        ov = self.overlay(overlay_of(network), cached=True)
        if ov is None or not self.host.exists(ov.vni):
            return
        eid = endpoint.endpoint_id
        with self.host.kernel(ov.vni) as k:
            k.link_delete(naming.host_veth_name(eid), alias=naming.endpoint_alias(eid))

    def endpoint_info(self, network: NetworkSpec, endpoint: EndpointSpec) -> dict[str, object]:
        ov = self.overlay(overlay_of(network), cached=True)
        return {} if ov is None else {"overlay": ov.name, "vni": ov.vni, "namespace": self.host.name(ov.vni)}

    # -- convergence (agent/reconcile.py) ----------------------------------------------------

    def reconcile(self, known: Callable[[], tuple[set[str], set[str]]], *, dry_run: bool) -> list[str]:
        """Remove endpoint veths in this host's overlay namespaces that no record names (a crash
        between DeleteEndpoint's link delete and its record delete). The kernel is scanned before
        ``known()`` reads the store, so a Join in flight (record first, link after) is never taken
        for an orphan. Whole namespaces are the overlay agent's (agent/overlay.py)."""
        found: list[tuple[int, str, str]] = []
        for vni in sorted(self.host.local_vnis()):
            prefix = naming.ALIAS_ROOT + "ep:"
            with self.host.kernel(vni) as k:
                found += [(vni, name, alias) for name, alias in k.links_owned(prefix)]
        if not found:
            return []
        _, endpoints = known()
        actions: list[str] = []
        for vni, name, alias in found:
            owner = alias.rpartition(":")[2]
            if owner in endpoints:
                continue
            actions.append(f"delete link {name} in {self.host.name(vni)} (endpoint {owner[:12]} is not on record)")
            if not dry_run:
                with self.host.kernel(vni) as k:
                    k.link_delete(name, alias=alias)
        return actions

    def ensure_network(self, spec: NetworkSpec, *, dry_run: bool) -> list[str]:
        ov = self._overlay_of(spec)
        if dry_run:
            return [] if self.host.exists(ov.vni) else [f"create namespace {self.host.name(ov.vni)}"]
        return self.host.ensure(ov)

    def ensure_endpoints(self, network: NetworkSpec, endpoints: Sequence[EndpointState], *,
                         dry_run: bool) -> list[str]:
        """Joined endpoints whose host end is gone get a fresh pair, container end in this namespace."""
        ov = self.overlay(overlay_of(network))
        if ov is None or not self.host.exists(ov.vni):
            return []
        with self.host.kernel(ov.vni) as k:
            return self._ensure_endpoints_in(k, ov, endpoints, dry_run)

    def _ensure_endpoints_in(self, k: OverlayKernelOps, ov: OverlayRecord, endpoints: Sequence[EndpointState],
                             dry_run: bool) -> list[str]:
        todo: list[str] = []
        for state in endpoints:
            eid = state.spec.endpoint_id
            if not state.joined or k.link_get(naming.host_veth_name(eid)) is not None:
                continue
            todo.append(f"create veth {naming.host_veth_name(eid)} of joined endpoint {eid[:12]} in overlay {ov.name}")
            if not dry_run:
                k.ensure_veth(naming.host_veth_name(eid), naming.container_veth_name(eid),
                              alias=naming.endpoint_alias(eid), mtu=ov.mtu, peer_mac=state.spec.mac or None,
                              master=BRIDGE, peer_netns_path=self.home_netns)
        return todo
