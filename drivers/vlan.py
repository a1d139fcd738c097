"""cnmkit-vlan: a network on one VLAN of a trunk, sharing its L2 segment with the world outside.

A bridge network whose uplink is the 802.1Q sub-interface ``PARENT.VID`` (drivers/bridge.py does
the bridge, veths, firewall; this module adds the uplink and the options), or, with
``-o mode=macvlan``, macvlan endpoints straight on the sub-interface and no bridge at all.

    -o parent=IFACE        the trunk (required): exists, and is none of cnmkit's own links
    -o vlan=VID            1..4094; without it a VID comes from ``-o vlan_range=A-B`` (or the
                           daemon's default range), one no network of the cluster uses
    -o mode=bridge|macvlan bridge (default): the host sees the traffic (iptables, tcpdump on the
                           bridge, host_gateway possible); macvlan: no bridge hop, but the host
                           cannot reach its own containers through the parent
    -o host_gateway=true   the host takes the gateway address (bridge mode only); by default the
                           gateway is a router outside on the VLAN and the host holds no address,
                           so two VLANs may carry the same subnet on one host
    com.docker.network.driver.mtu   at most the parent's MTU (the default)

The sub-interface is made if missing, marked ``cnmkit:uplink:<name>``, reference-counted in the
store (drivers/vlan_store.py) and deleted with its last network; one that existed before is used
and left alone. A kernel without 802.1Q fails the create with one error naming the feature,
before anything is made: validate() asks drivers/capabilities.py's probe, before the manager
records anything; should the probe not tell, netlink's refusal gives the same error and the
store binding is undone (the manager drops the record).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from drivers import capabilities, naming
from drivers.base import (
    EndpointSpec,
    EndpointState,
    JoinRequest,
    JoinResult,
    NetworkSpec,
)
from drivers.bridge import (
    CNMKIT_OPTION_PREFIX,
    DEFAULT_SANDBOX_DIRS,
    OPT_MTU,
    OPT_NAME,
    BridgeConfig,
    BridgeDriver,
    FirewallOps,
    _gateway,
    _parse_bool,
    _parse_mtu,
)
from drivers.capabilities import NO_8021Q
from drivers.errors import Conflict, DriverError, InvalidOption, KernelFeatureMissing
from drivers.firewall import NetworkRules
from drivers.kernel_api import VlanKernelOps
from drivers.vlan_store import Binding, VlanClaims
from plugin.quoting import shown
from store.base import Store

OPT_PARENT = "parent"
OPT_VLAN = "vlan"
OPT_VLAN_RANGE = "vlan_range"
OPT_MODE = "mode"
OPT_HOST_GATEWAY = "host_gateway"
OWN_OPTIONS = (OPT_PARENT, OPT_VLAN, OPT_VLAN_RANGE, OPT_MODE, OPT_HOST_GATEWAY)
DEFAULT_VID_RANGE = (2, 4094)     # VID 1 is the default/native VLAN of most switches
_RANGE = re.compile(r"(\d{1,4})-(\d{1,4})")


def parse_vid(option: str, value: object) -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise InvalidOption(option, f"{shown(value)} is not a VLAN id (an integer in 1..4094)")
    vid = int(text)
    if not 1 <= vid <= 4094:
        raise InvalidOption(option, f"{vid} is outside 1..4094 (0 and 4095 are reserved by 802.1Q)")
    return vid


def parse_vid_range(option: str, value: object) -> tuple[int, int]:
    found = _RANGE.fullmatch(str(value).strip())
    if not found:
        raise InvalidOption(option, f"{shown(value)} is not a VID range A-B")
    first, last = parse_vid(option, found.group(1)), parse_vid(option, found.group(2))
    if first > last:
        raise InvalidOption(option, f"{shown(value)}: {first} is above {last}")
    return first, last


@dataclass(frozen=True)
class VlanConfig:
    """The -o options of one VLAN network, parsed and checked without the kernel."""

    parent: str
    vid: int | None
    vid_range: tuple[int, int] | None
    mode: Literal["bridge", "macvlan"]
    host_gateway: bool
    mtu: int | None                     # None: the parent's
    unknown: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: NetworkSpec) -> VlanConfig:
        opts = spec.options
        parent = str(opts.get(OPT_PARENT, ""))
        if not parent:
            raise InvalidOption(OPT_PARENT, "required: the trunk interface, e.g. -o parent=eth1")
        if not naming.valid_ifname(parent):
            raise InvalidOption(OPT_PARENT, f"{shown(parent)} is not a valid interface name")
        vid = parse_vid(OPT_VLAN, opts[OPT_VLAN]) if OPT_VLAN in opts else None
        vid_range = parse_vid_range(OPT_VLAN_RANGE, opts[OPT_VLAN_RANGE]) if OPT_VLAN_RANGE in opts else None
        mode = str(opts.get(OPT_MODE, "bridge"))
        if mode not in ("bridge", "macvlan"):
            raise InvalidOption(OPT_MODE, f"{shown(mode)} is not bridge or macvlan")
        host_gateway = _parse_bool(OPT_HOST_GATEWAY, opts.get(OPT_HOST_GATEWAY, "false"))
        if host_gateway and mode == "macvlan":
            raise InvalidOption(OPT_HOST_GATEWAY, "needs mode=bridge: a macvlan parent cannot reach "
                                "its own macvlan endpoints, so the host could not be their gateway")
        mtu = _parse_mtu(str(opts[OPT_MTU])) if OPT_MTU in opts else None
        unknown: list[str] = []
        for key in opts:
            if key in OWN_OPTIONS or key in (OPT_MTU, OPT_NAME):
                continue
            if key.startswith(CNMKIT_OPTION_PREFIX) or "." not in key:
                # Ours (cnmkit.*) or a short key like ours: a typo of parent/vlan must not pass.
                raise InvalidOption(key, "unknown option for the cnmkit-vlan driver (known: "
                                    + ", ".join(OWN_OPTIONS) + f", {OPT_MTU})")
            unknown.append(key)                   # a tool's label, kept as Docker keeps them
        return cls(parent=parent, vid=vid, vid_range=vid_range, mode="macvlan" if mode == "macvlan" else "bridge",
                   host_gateway=host_gateway, mtu=mtu, unknown=tuple(unknown))


class VlanDriver(BridgeDriver):
    name = "cnmkit-vlan"
    scope: Literal["local", "global"] = "local"
    connectivity_scope: Literal["local", "global"] = "global"    # the segment reaches beyond the host

    def __init__(self, kernel: VlanKernelOps, firewall: FirewallOps, store: Store, *, host_id: str = "",
                 vid_range: tuple[int, int] = DEFAULT_VID_RANGE,
                 mac_factory: Callable[[], str] = naming.random_mac,
                 sandbox_dirs: Sequence[str] = DEFAULT_SANDBOX_DIRS,
                 probe_8021q: Callable[[], bool | None] | None = None) -> None:
        super().__init__(kernel, firewall, mac_factory=mac_factory, sandbox_dirs=sandbox_dirs)
        self.vkernel = kernel
        self.claims = VlanClaims(store, host_id)
        self.vid_range = vid_range
        # drivers/capabilities.py's probe (what ``cnmkit doctor`` shows): a VLAN in a throwaway netns.
        self._probe_8021q = probe_8021q or capabilities.probe_8021q
        self._has_8021q = False                 # only a yes is kept: a module may be loaded later

    def _require_8021q(self) -> None:
        """Refuse at validate, before the manager records anything, when the kernel has no 802.1Q.

        Asked once per daemon while the answer is yes. An answer of "could not tell" lets the
        create go on: netlink's own refusal then gives the same error (drivers/kernel.py vlan_add).
        """
        if self._has_8021q:
            return
        found = self._probe_8021q()
        if found is False:
            raise KernelFeatureMissing("8021q", NO_8021Q)
        self._has_8021q = found is True

    # -- options ----------------------------------------------------------------------------

    def _vlan(self, spec: NetworkSpec) -> VlanConfig:
        return VlanConfig.parse(spec)

    def _mtu(self, vcfg: VlanConfig, *, check: bool = False) -> int:
        """The network's MTU: at most the parent's (a bigger frame cannot leave by the trunk).

        Checked at validate only: a delete must work whatever the parent's MTU became since.
        """
        link = self.kernel.link_get(vcfg.parent)
        parent_mtu = int(link["mtu"]) if link is not None and link.get("mtu") else 1500
        if check and vcfg.mtu is not None and vcfg.mtu > parent_mtu:
            raise InvalidOption(OPT_MTU, f"{vcfg.mtu} is above the MTU {parent_mtu} of parent {vcfg.parent}")
        return vcfg.mtu if vcfg.mtu is not None else parent_mtu

    def _config(self, spec: NetworkSpec) -> BridgeConfig:
        vcfg = self._vlan(spec)
        return BridgeConfig(bridge=naming.bridge_name(spec.network_id), mtu=self._mtu(vcfg), custom_name=False,
                            masquerade=vcfg.host_gateway, unknown=vcfg.unknown, host_gateway=vcfg.host_gateway)

    def validate(self, spec: NetworkSpec) -> list[str]:
        """Options, the parent and the MTU, before the manager records anything."""
        vcfg = self._vlan(spec)
        link = self.kernel.link_get(vcfg.parent)
        if link is None:
            raise InvalidOption(OPT_PARENT, f"interface {shown(vcfg.parent)} does not exist on this host")
        if naming.is_ours(link.get("alias") or "") or vcfg.parent.startswith(
                (naming.BRIDGE_PREFIX, naming.HOST_VETH_PREFIX, naming.CONTAINER_VETH_PREFIX)):
            raise InvalidOption(OPT_PARENT, f"{shown(vcfg.parent)} is one of cnmkit's own links "
                                f"(alias {shown(link.get('alias') or '')}): a VLAN needs a real trunk")
        if link.get("kind") == "vlan":
            raise InvalidOption(OPT_PARENT, f"{shown(vcfg.parent)} is itself a VLAN sub-interface "
                                "(stacked 802.1Q is not supported)")
        self._mtu(vcfg, check=True)
        self._require_8021q()
        return list(vcfg.unknown)

    # -- the uplink: the sub-interface, bound in the store, made if missing ------------------

    def _ensure_uplink(self, spec: NetworkSpec, cfg: BridgeConfig, undo: contextlib.ExitStack) -> str:
        vcfg = self._vlan(spec)
        binding, new = self.claims.bind(spec.network_id, vcfg.parent, vcfg.vid,
                                        vcfg.vid_range or self.vid_range, naming.vlan_link_name)
        if new:
            undo.callback(self.claims.unbind, spec.network_id)
        if self._ensure_sublink(binding, cfg.mtu):
            undo.callback(self.kernel.link_delete, binding.link, alias=naming.uplink_alias(binding.link))
        return binding.link

    def _ensure_sublink(self, binding: Binding, mtu: int) -> bool:
        """Make the sub-interface, or accept the one there; True when made now."""
        link = self.kernel.link_get(binding.link)
        if link is None:
            self.vkernel.vlan_add(binding.link, binding.parent, binding.vid,
                                  alias=naming.uplink_alias(binding.link), mtu=mtu)
            return True
        if link.get("alias") == naming.uplink_alias(binding.link):
            return False
        info = self.vkernel.vlan_info(binding.link)
        if info != (binding.parent, binding.vid):
            raise Conflict(f"link {binding.link} exists and is not VLAN {binding.vid} of {binding.parent} "
                           f"(kind {shown(link.get('kind'))}, alias {shown(link.get('alias') or '')}): "
                           "not cnmkit's, left alone; remove or rename it")
        if naming.is_ours(link.get("alias") or ""):
            raise Conflict(f"link {binding.link} is marked {shown(link.get('alias'))} by cnmkit for another use")
        if link.get("master"):
            raise Conflict(f"sub-interface {binding.link} (not cnmkit's) is already a port of {link['master']}")
        return False                            # the operator's own: used, never deleted

    def _release_uplink(self, spec: NetworkSpec, cfg: BridgeConfig) -> None:
        binding = self.claims.binding(spec.network_id)
        if binding is None:
            return
        if self.claims.users(binding.link) in ([], [spec.network_id]):
            # The last user: ours goes; somebody else's stays (and its master is already gone).
            link = self.kernel.link_get(binding.link)
            if link is not None and link.get("alias") == naming.uplink_alias(binding.link):
                self.kernel.link_delete(binding.link, alias=naming.uplink_alias(binding.link))
        self.claims.unbind(spec.network_id)

    def _uplink_todo(self, spec: NetworkSpec, cfg: BridgeConfig) -> list[str]:
        binding = self.claims.binding(spec.network_id)
        if binding is None:
            return [f"bind network {spec.network_id[:12]} to a VLAN of {self._vlan(spec).parent}"]
        link = self.kernel.link_get(binding.link)
        if link is None:
            return [f"create sub-interface {binding.link} (VLAN {binding.vid} of {binding.parent})"]
        if self._vlan(spec).mode == "bridge" and (link.get("master") != cfg.bridge or not link.get("up")):
            return [f"attach sub-interface {binding.link} to bridge {cfg.bridge}"]
        return []

    # -- macvlan mode: no bridge, no firewall; the rest is the bridge's ------------------------

    def create_network(self, spec: NetworkSpec) -> None:
        if self._vlan(spec).mode == "bridge":
            super().create_network(spec)
            return
        cfg = self._config(spec)
        with contextlib.ExitStack() as undo:
            self._ensure_uplink(spec, cfg, undo)
            undo.pop_all()

    def delete_network(self, spec: NetworkSpec) -> None:
        if self._vlan(spec).mode == "bridge":
            super().delete_network(spec)
            return
        self._release_uplink(spec, self._config(spec))

    @staticmethod
    def _rules(spec: NetworkSpec, cfg: BridgeConfig) -> NetworkRules:
        # The bridge's rules; without a host gateway nothing is NATed (the host routes nothing).
        return replace(BridgeDriver._rules(spec, cfg), masquerade=cfg.host_gateway)

    def join(self, network: NetworkSpec, endpoint: EndpointSpec, request: JoinRequest) -> JoinResult:
        vcfg = self._vlan(network)
        if vcfg.mode == "bridge":
            return super().join(network, endpoint, request)
        binding = self.claims.binding(network.network_id)
        if binding is None:
            raise DriverError(f"network {network.network_id[:12]} has no VLAN binding: recreate it")
        eid = endpoint.endpoint_id
        direct = request.direct and bool(request.sandbox_key)
        if direct:
            self._check_sandbox(request.sandbox_key)
        name = naming.host_veth_name(eid)
        self.vkernel.ensure_macvlan(name, binding.link, alias=naming.endpoint_alias(eid),
                                    mtu=self._mtu(vcfg), mac=endpoint.mac or None,
                                    netns_path=request.sandbox_key if direct else None)
        if network.internal:
            return JoinResult(src_name=name, dst_prefix="eth", disable_gateway_service=True)
        return JoinResult(src_name=name, dst_prefix="eth", gateway=_gateway(network.ipv4),
                          gateway_v6=_gateway(network.ipv6))

    def endpoint_info(self, network: NetworkSpec, endpoint: EndpointSpec) -> dict[str, object]:
        binding = self.claims.binding(network.network_id)
        info: dict[str, object] = {"hostIfName": naming.host_veth_name(endpoint.endpoint_id)}
        if binding is not None:
            info.update(parent=binding.parent, vlan=binding.vid, uplink=binding.link)
        if self._vlan(network).mode == "bridge":
            info["bridge"] = naming.bridge_name(network.network_id)
        return info

    def ensure_network(self, spec: NetworkSpec, *, dry_run: bool) -> list[str]:
        if self._vlan(spec).mode == "bridge":
            return super().ensure_network(spec, dry_run=dry_run)
        todo = self._uplink_todo(spec, self._config(spec))
        if todo and not dry_run:
            self.create_network(spec)
        return todo

    def ensure_endpoints(self, network: NetworkSpec, endpoints: Sequence[EndpointState], *,
                         dry_run: bool) -> list[str]:
        # A macvlan endpoint lives only in its sandbox: the host has nothing of it to re-make.
        if self._vlan(network).mode == "macvlan":
            return []
        return super().ensure_endpoints(network, endpoints, dry_run=dry_run)

    # -- the manager's overlap check (drivers/manager.py: HostRouting) ----------------------

    def routes_on_host(self, spec: NetworkSpec) -> bool:
        """Whether the host routes this network's subnets: only with ``host_gateway=true``.

        Without a host address the subnet is never in the host's routing table, so it cannot
        clash with another network's there: the same subnet on two VLANs is fine.
        """
        return self._vlan(spec).host_gateway

    # -- orphans (agent/reconcile.py) --------------------------------------------------------

    def reconcile(self, known: Callable[[], tuple[set[str], set[str]]], *, dry_run: bool) -> list[str]:
        """Delete sub-interfaces marked ours that no network on record uses (a crash mid-delete).

        Bridges, veths and rules are the bridge driver's to judge (it scans every cnmkit mark), so
        they are not reported twice; only ``cnmkit:uplink:`` links are looked at here, listed
        before the store is read (see drivers/base.py: Reconciler).
        """
        prefix = naming.uplink_alias("")
        links = self.kernel.links_owned(prefix)
        networks, _ = known()
        actions: list[str] = []
        for name, alias in sorted(links):
            users = [u for u in self.claims.users(name) if u in networks]
            if users or alias != naming.uplink_alias(name):
                continue
            actions.append(f"delete sub-interface {name} (no VLAN network on record uses it)")
            if not dry_run:
                self.kernel.link_delete(name, alias=alias)
        return actions
