"""cnmkit-bridge: a Linux bridge per network, a veth pair per endpoint, Docker-style NAT.

Shape follows libnetwork's bridge driver, minus its store: the manager persists every spec and
hands it back in, and every kernel object is found again by its derived name and ownership alias
(drivers/naming.py), so all calls are idempotent and a restarted daemon picks up where it was.

    create_network   bridge (alias, MTU, stable MAC) -> gateway addresses -> up -> firewall
    join             veth pair: host end on the bridge, container end with MAC/MTU, in the host
                     netns for dockerd to move, or born in the sandbox when the runtime asks
    leave            mark the host end doomed (as delete_endpoint): the pair goes while still in the
                     sandbox, so dockerd has no link to move back before DeleteEndpoint
    delete_endpoint  mark the host end doomed; the reaper deletes it (and so the peer, wherever it
                     is) off the request's path, in batches (drivers/reaper.py)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from netaddr import INET_PTON, AddrFormatError, IPAddress

from drivers import naming
from drivers.base import (
    EndpointResult,
    EndpointSpec,
    EndpointState,
    IPAMData,
    JoinRequest,
    JoinResult,
    NetworkSpec,
    PortBinding,
)
from drivers.errors import DriverError, InvalidOption, LinkExists, LinkNotFound
from drivers.firewall import NetworkRules
from drivers.kernel_api import KernelOps
from drivers.reaper import InlineReaper, Reaper
from plugin.quoting import shown

OPT_MTU = "com.docker.network.driver.mtu"
OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
OPT_MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
OPT_ICC = "com.docker.network.bridge.enable_icc"
OPT_HOST_BINDING = "com.docker.network.bridge.host_binding_ipv4"
OPT_NAME = "cnmkit.name"
CNMKIT_OPTION_PREFIX = "cnmkit."
DEFAULT_MTU = 1500
# Where engines and our runtime pin sandbox namespaces: dockerd's, and runtime/containers.py's
# <run_dir>/netns with the default run dir. A direct Join opens SandboxKey as a namespace, so
# any other path is refused (the daemon passes the runtime's actual dir with --sandbox-dir).
DEFAULT_SANDBOX_DIRS = ("/var/run/docker/netns", "/run/docker/netns", "/run/cnmkit/netns")


class FirewallOps(Protocol):
    def ensure_network(self, net: NetworkRules) -> None: ...
    def remove_network(self, network_id: str) -> int: ...
    def missing(self, net: NetworkRules) -> list[str]: ...
    def marks(self) -> set[tuple[str, str]]: ...
    def publish(self, net: NetworkRules, endpoint_id: str, container_ip: str,
                ports: Sequence[tuple[str, int, int, str]]) -> None: ...
    def unpublish(self, network_id: str, endpoint_id: str) -> int: ...


@dataclass(frozen=True)
class BridgeConfig:
    """The -o options of one bridge network, parsed and checked once."""

    bridge: str
    mtu: int
    custom_name: bool
    masquerade: bool = True            # Docker's defaults for the three options below
    icc: bool = True
    host_binding_ipv4: str = ""        # "" (or 0.0.0.0): every address of the host
    unknown: tuple[str, ...] = ()      # options kept with the network but not acted on
    host_gateway: bool = True          # the host holds the gateway addresses (False: a router outside does)

    @classmethod
    def parse(cls, spec: NetworkSpec) -> BridgeConfig:
        mtu = DEFAULT_MTU
        bridge = naming.bridge_name(spec.network_id)
        custom = False
        masquerade = icc = True
        host_binding = ""
        unknown: list[str] = []
        for key, value in spec.options.items():
            if key == OPT_MTU:
                mtu = _parse_mtu(str(value))
            elif key == OPT_MASQUERADE:
                masquerade = _parse_bool(key, value)
            elif key == OPT_ICC:
                icc = _parse_bool(key, value)
            elif key == OPT_HOST_BINDING:
                host_binding = _parse_host_binding(str(value))
            elif key == OPT_BRIDGE_NAME:
                if not naming.valid_ifname(str(value)):
                    raise InvalidOption(key, f"{shown(value)} is not a valid interface name (1..15 of "
                                             "letters, digits, '_', '.', '-'; not starting with '.' or '-')")
                bridge, custom = str(value), True
            elif key == OPT_NAME:
                continue
            elif key.startswith(CNMKIT_OPTION_PREFIX):
                # Our own namespace: a key we do not implement is a typo or a newer client.
                raise InvalidOption(key, "unknown cnmkit option for the cnmkit-bridge driver")
            else:
                # As Docker's bridge does: tools pass their own labels this way. Kept, and the
                # manager logs them, so a mistyped Docker option does not go unnoticed.
                unknown.append(key)
        return cls(bridge=bridge, mtu=mtu, custom_name=custom, masquerade=masquerade, icc=icc,
                   host_binding_ipv4=host_binding, unknown=tuple(unknown))



_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _parse_bool(option: str, value: object) -> bool:
    """Go's strconv.ParseBool, which Docker's bridge uses for its enable_* options."""
    if isinstance(value, bool):
        return value
    text = str(value)
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidOption(option, f"{shown(text)} is not a boolean (true or false)")


def _parse_host_binding(value: str) -> str:
    """The default host address of published ports; IPv4 only, as only IPv4 ports are published."""
    try:
        ip = IPAddress(value, flags=INET_PTON)
    except (AddrFormatError, ValueError, TypeError):
        raise InvalidOption(OPT_HOST_BINDING, f"{shown(value)} is not an IPv4 address") from None
    if ip.version != 4:
        raise InvalidOption(OPT_HOST_BINDING, f"{shown(value)} is not an IPv4 address "
                                              "(ports are published on IPv4 only)")
    return "" if ip.value == 0 else str(ip)


def _parse_mtu(value: str) -> int:
    try:
        mtu = int(value)
    except ValueError:
        raise InvalidOption(OPT_MTU, f"{shown(value)} is not an integer") from None
    if not 68 <= mtu <= 65535:
        raise InvalidOption(OPT_MTU, f"{mtu} is outside 68..65535")
    return mtu


def _gateway(pools: tuple[IPAMData, ...]) -> IPAddress | None:
    for pool in pools:
        if pool.gateway is not None:
            return pool.gateway.ip
    return None


def check_sandbox(key: str, sandbox_dirs: Sequence[str]) -> None:
    """A direct Join opens SandboxKey as a network namespace: only files directly inside the
    namespace directories engines and our runtime use, so a client on the socket cannot put
    an interface into any other process's namespace (``/proc/1/ns/net``, a path with ``..``,
    a symlink out of the directory)."""
    allowed = ", ".join(sandbox_dirs)
    if not os.path.isabs(key) or ".." in key.split("/"):
        raise DriverError(f"SandboxKey: {shown(key)} is not an absolute path without '..' "
                          f"(allowed: files in {allowed})")
    try:
        real = os.path.realpath(key)
    except (OSError, ValueError):                # an unreadable link on the way: not ours either
        real = ""
    if os.path.dirname(real) not in sandbox_dirs or os.path.basename(real) in ("", ".", ".."):
        raise DriverError(f"SandboxKey: {shown(key)} is not a namespace file directly inside one of "
                          f"{allowed}")


def endpoint_mac(endpoint: EndpointSpec, new_mac: Callable[[], str]) -> EndpointResult:
    """CreateEndpoint's answer: the MAC the engine did not choose. Derived from the address when
    there is one (unique wherever the address is, so also across an overlay's hosts), else random."""
    naming.check_id(endpoint.endpoint_id, "endpoint id")
    if endpoint.mac:
        return EndpointResult()
    if endpoint.address is not None:
        return EndpointResult(mac=naming.address_mac(str(endpoint.address.ip)))
    return EndpointResult(mac=new_mac())

class BridgeDriver:
    name = "cnmkit-bridge"
    scope: Literal["local", "global"] = "local"
    connectivity_scope: Literal["local", "global"] = "local"

    def __init__(self, kernel: KernelOps, firewall: FirewallOps, *,
                 mac_factory: Callable[[], str] = naming.random_mac,
                 sandbox_dirs: Sequence[str] = DEFAULT_SANDBOX_DIRS, reaper: Reaper | None = None) -> None:
        self.kernel = kernel
        self.reaper: Reaper = reaper or InlineReaper(kernel)
        self.firewall = firewall
        self._new_mac = mac_factory
        self.sandbox_dirs = tuple(dict.fromkeys(os.path.realpath(d) for d in sandbox_dirs))

    # -- networks ---------------------------------------------------------------------------

    # -- what a subclass changes: the config, the uplink (drivers/vlan.py, later vxlan) ------

    def _config(self, spec: NetworkSpec) -> BridgeConfig:
        """The network's bridge settings; a driver with its own options maps them onto these."""
        return BridgeConfig.parse(spec)

    def _ensure_uplink(self, spec: NetworkSpec, cfg: BridgeConfig, undo: contextlib.ExitStack) -> str | None:
        """Make (or find) the link that joins the bridge to the outside; None: no uplink.

        Runs before the bridge is made, so a kernel that lacks what the uplink needs fails the
        create with nothing made. Whatever this call made is undone through ``undo``.
        """
        return None

    def _release_uplink(self, spec: NetworkSpec, cfg: BridgeConfig) -> None:
        """Let go of the uplink after the bridge is gone (deleted only if it was made for us)."""

    def _uplink_todo(self, spec: NetworkSpec, cfg: BridgeConfig) -> list[str]:
        """What the reconciler would re-make about the uplink (ensure_network); empty: all there."""
        return []

    # -- networks ---------------------------------------------------------------------------

    def validate(self, spec: NetworkSpec) -> list[str]:
        """Refuse bad options; answer the keys accepted without being acted on (the manager warns)."""
        return list(self._config(spec).unknown)

    def create_network(self, spec: NetworkSpec) -> None:
        """Make (or re-ensure) the network's bridge and rules; a half-done create is undone.

        Rollback only applies to a bridge this call created: re-ensuring an existing network
        (daemon restart, retry) must never tear down what running containers use.
        """
        cfg = self._config(spec)
        alias = naming.network_alias(spec.network_id)
        with contextlib.ExitStack() as undo:
            uplink = self._ensure_uplink(spec, cfg, undo)
            try:
                created = self.kernel.ensure_bridge(cfg.bridge, alias=alias, mtu=cfg.mtu,
                                                    mac=naming.stable_mac(alias), adopt=not cfg.custom_name)
            except LinkExists:
                # The name is held by a deleted network's doomed bridge the reaper has not taken
                # yet (the same id again, or the same custom name): that one goes now.
                if not self._drop_doomed_link(cfg.bridge):
                    raise
                created = self.kernel.ensure_bridge(cfg.bridge, alias=alias, mtu=cfg.mtu,
                                                    mac=naming.stable_mac(alias), adopt=not cfg.custom_name)
            if created:
                undo.callback(self.kernel.link_delete, cfg.bridge, alias=alias)
                undo.callback(self.firewall.remove_network, spec.network_id)
            if cfg.host_gateway:
                for pool in (*spec.ipv4, *spec.ipv6):
                    if pool.gateway is not None:
                        self.kernel.addr_ensure(cfg.bridge, str(pool.gateway))
            if uplink is not None:
                self.kernel.enslave(uplink, cfg.bridge)
            self.kernel.set_up(cfg.bridge)
            self.firewall.ensure_network(self._rules(spec, cfg))
            undo.pop_all()

    def delete_network(self, spec: NetworkSpec) -> None:
        """Rules go now; the bridge is taken down and marked doomed, and the reaper deletes it.

        Deleting a bridge costs the kernel 30-40 ms of RCU grace periods that DeleteNetwork
        need not wait for: down, the bridge routes and answers nothing, and its name is free
        for the next create (``_drop_doomed_link``). A crash before the reaper leaves only the
        marked bridge, which the reconciler deletes (``remove_doomed``). An uplink still
        enslaved is released by the delete, or taken over by the next bridge that enslaves it.
        """
        cfg = self._config(spec)
        nid = spec.network_id
        self.firewall.remove_network(nid)
        doomed = naming.doomed_alias(nid)
        if self.kernel.link_doom(cfg.bridge, alias=naming.network_alias(nid), doomed_alias=doomed, down=True):
            self.reaper.submit(cfg.bridge, doomed)
        self._release_uplink(spec, cfg)

    @staticmethod
    def _rules(spec: NetworkSpec, cfg: BridgeConfig) -> NetworkRules:
        return NetworkRules(network_id=spec.network_id, bridge=cfg.bridge,
                            subnets_v4=tuple(str(p.pool) for p in spec.ipv4),
                            subnets_v6=tuple(str(p.pool) for p in spec.ipv6),
                            internal=spec.internal, icc=cfg.icc, masquerade=cfg.masquerade)

    # -- endpoints --------------------------------------------------------------------------

    def create_endpoint(self, network: NetworkSpec, endpoint: EndpointSpec) -> EndpointResult:
        """Only a MAC is ours to fill in (protocol §2); kernel work waits for Join."""
        return endpoint_mac(endpoint, self._new_mac)

    def join(self, network: NetworkSpec, endpoint: EndpointSpec, request: JoinRequest) -> JoinResult:
        cfg = self._config(network)
        eid = endpoint.endpoint_id
        peer = naming.container_veth_name(eid)
        direct = request.direct and bool(request.sandbox_key)
        if direct:
            self._check_sandbox(request.sandbox_key)
            direct = os.path.exists(request.sandbox_key)
        if direct and self.kernel.link_exists(peer):
            # A pair the reconciler re-made (container end in the host netns): a direct Join wants
            # the end born in the sandbox, so the pair is made again there.
            with contextlib.suppress(LinkExists):
                self.kernel.link_delete(naming.host_veth_name(eid), alias=naming.endpoint_alias(eid))
        def make() -> None:
            self.kernel.ensure_veth(naming.host_veth_name(eid), peer,
                                    alias=naming.endpoint_alias(eid), mtu=cfg.mtu,
                                    peer_mac=endpoint.mac or None, master=cfg.bridge,
                                    peer_netns_path=request.sandbox_key if direct else None)
        try:
            make()
        except LinkExists:
            # Our name is taken: by the doomed predecessor of an endpoint with this id (deleted a
            # moment ago, not yet reaped)? Then that one link goes now and the pair is made.
            if not self._drop_doomed_link(naming.host_veth_name(eid)):
                raise
            make()
        if network.internal:
            # No default route and no docker_gwbridge leg: an internal network reaches nothing.
            return JoinResult(src_name=peer, dst_prefix="eth", disable_gateway_service=True)
        return JoinResult(src_name=peer, dst_prefix="eth", gateway=_gateway(network.ipv4),
                          gateway_v6=_gateway(network.ipv6))

    def _check_sandbox(self, key: str) -> None:
        check_sandbox(key, self.sandbox_dirs)

    def leave(self, network: NetworkSpec, endpoint: EndpointSpec) -> None:
        """Mark the host end doomed, as DeleteEndpoint does: the reaper deletes the pair soon.

        dockerd's next step after Leave is to move the container end back to the host netns
        (down, rename, netns change: kernel work it waits for) only for DeleteEndpoint to delete
        it. A pair already deleted is skipped there (libnetwork logs the failed Remove at debug
        level and goes on); one it still finds is moved as before and deleted with its host end.
        Either way DeleteEndpoint finds the link marked or gone. A Join of the same endpoint
        after Leave (libnetwork's sandbox refresh) makes a fresh pair (``_drop_doomed_link``).
        """
        self.delete_endpoint(network, endpoint)

    def delete_endpoint(self, network: NetworkSpec, endpoint: EndpointSpec) -> None:
        """Mark the host end doomed and hand it to the reaper: the ~20 ms delete is not waited for."""
        eid = endpoint.endpoint_id
        host, doomed = naming.host_veth_name(eid), naming.doomed_alias(eid)
        if self.kernel.link_doom(host, alias=naming.endpoint_alias(eid), doomed_alias=doomed):
            self.reaper.submit(host, doomed)

    def _drop_doomed_link(self, name: str) -> bool:
        """Delete link ``name`` now if it carries a doomed mark (the reaper's, not yet deleted)."""
        link = self.kernel.link_get(name)
        if link is None or not link["alias"].startswith(naming.DOOMED_ALIAS_PREFIX):
            return False
        with contextlib.suppress(LinkNotFound):          # the reaper was quicker: fine
            self.kernel.link_delete(name, alias=link["alias"])
        return True

    def close(self) -> None:
        """Delete what is still marked (the reaper's last batch); the daemon calls it on stop."""
        self.reaper.close()

    def endpoint_info(self, network: NetworkSpec, endpoint: EndpointSpec) -> dict[str, object]:
        cfg = self._config(network)
        return {"hostIfName": naming.host_veth_name(endpoint.endpoint_id), "bridge": cfg.bridge}

    # -- published ports --------------------------------------------------------------------

    def publish(self, network: NetworkSpec, endpoint: EndpointSpec, ports: tuple[PortBinding, ...]) -> None:
        """DNAT the host ports to the endpoint's IPv4 address (``docker run -p``); IPv6 is not published."""
        if endpoint.address is None:
            return
        cfg = self._config(network)
        self.firewall.publish(self._rules(network, cfg), endpoint.endpoint_id, str(endpoint.address.ip),
                              [(p.proto, p.host_port, p.port, p.host_ip or cfg.host_binding_ipv4)
                               for p in ports])

    def default_host_ip(self, network: NetworkSpec) -> str:
        """``host_binding_ipv4``: the HostIP of a port whose request names none ("" = all addresses).

        The manager applies it before choosing host ports, so the port-conflict check and the
        bindings it answers (and records) carry the address the rules really use.
        """
        return self._config(network).host_binding_ipv4

    def unpublish(self, network: NetworkSpec, endpoint: EndpointSpec) -> None:
        self.firewall.unpublish(network.network_id, endpoint.endpoint_id)

    # -- convergence (agent/reconcile.py): look first, act only on what is missing ------------

    def ensure_network(self, spec: NetworkSpec, *, dry_run: bool) -> list[str]:
        """Re-make what the network's record implies and the kernel lacks: bridge, addresses, rules.

        A complete network is left untouched. Otherwise ``create_network`` runs, which is
        idempotent and never flaps an existing bridge (same alias and MTU set again, addresses
        added with EEXIST tolerated, rules checked with ``-C`` before ``-A``, nothing flushed).
        A link of that name that is not ours raises LinkExists: the caller skips the network.
        """
        cfg = self._config(spec)
        alias = naming.network_alias(spec.network_id)
        short = spec.network_id[:12]
        link = self.kernel.link_get(cfg.bridge)
        todo: list[str] = []
        if link is not None and link["alias"].startswith(naming.DOOMED_ALIAS_PREFIX):
            # Marked by a DeleteNetwork whose record removal never came (a crash in between):
            # the mark wins, the record wants a bridge, so create_network makes a fresh one.
            todo.append(f"delete doomed bridge {cfg.bridge}, network {short} is still on record")
            link = None
        if link is None:
            gateways = ", ".join(str(p.gateway) for p in (*spec.ipv4, *spec.ipv6) if p.gateway) or "none"
            todo.append(f"create bridge {cfg.bridge} of network {short} (mtu {cfg.mtu}, gateways {gateways})")
        else:
            if link["alias"] != alias:
                # Our derived name without any alias: a create killed between link add and the
                # alias (the kernel ignores IFLA_IFALIAS on RTM_NEWLINK). The record names it, so
                # it is ours; a custom name or any other alias could be somebody else's bridge.
                if link["alias"] or cfg.custom_name or link["kind"] != "bridge":
                    raise LinkExists(f"link {cfg.bridge} of network {short} is not ours (alias "
                                     f"{shown(link['alias'])}, kind {shown(link['kind'])}): left alone")
                todo.append(f"adopt bridge {cfg.bridge} of network {short} (our name, no alias: a create cut short)")
            if link["mtu"] != cfg.mtu:
                todo.append(f"set mtu {cfg.mtu} on bridge {cfg.bridge} (was {link['mtu']})")
            if not link["up"]:
                todo.append(f"set bridge {cfg.bridge} up")
            have = set(self.kernel.addrs(cfg.bridge))
            todo += [f"add gateway {p.gateway} to bridge {cfg.bridge}" for p in (*spec.ipv4, *spec.ipv6)
                     if cfg.host_gateway and p.gateway is not None and str(p.gateway) not in have]
        todo += self._uplink_todo(spec, cfg)
        missing = self.firewall.missing(self._rules(spec, cfg))
        if missing:
            todo.append(f"add {len(missing)} iptables rule(s) of network {short} (first: {missing[0]})")
        if todo and not dry_run:
            self.create_network(spec)
        return todo

    def ensure_endpoints(self, network: NetworkSpec, endpoints: Sequence[EndpointState], *,
                         dry_run: bool) -> list[str]:
        """Host-side veths of joined endpoints, half-made veths adopted, published ports re-programmed.

        A joined endpoint whose link is gone (a reboot, its netns died) gets a fresh pair with the
        container end left in the host netns: the next Join finds it and dockerd moves it, as
        after any Join. A link with our derived name and no alias is adopted because a record
        names it (a Join killed between link add and alias); any other alias is left alone.
        """
        cfg = self._config(network)
        published: set[str] = set()
        if any(state.ports for state in endpoints):
            published = {ep for net, ep in self.firewall.marks() if net == network.network_id and ep}
        actions: list[str] = []
        for state in endpoints:
            try:
                actions += self._ensure_endpoint(network, cfg, state, state.spec.endpoint_id in published,
                                                 dry_run=dry_run)
            except DriverError as exc:           # one endpoint's trouble does not stop the others
                actions.append(f"error: endpoint {state.spec.endpoint_id[:12]}: {exc}")
        return actions

    def _ensure_endpoint(self, network: NetworkSpec, cfg: BridgeConfig, state: EndpointState,
                         published: bool, *, dry_run: bool) -> list[str]:
        eid = state.spec.endpoint_id
        host, alias = naming.host_veth_name(eid), naming.endpoint_alias(eid)
        link = self.kernel.link_get(host)
        todo: list[str] = []
        dropped = 0                              # actions that delete rather than make
        if link is not None and link["alias"] == naming.doomed_alias(eid):
            # Marked by a DeleteEndpoint whose record removal never came (a crash in between):
            # the mark wins, the record decides below whether a fresh pair is needed.
            todo.append(f"delete doomed veth {host} of endpoint {eid[:12]}")
            if not dry_run:
                self.kernel.link_delete(host, alias=link["alias"])
            link, dropped = None, 1
        if link is None:
            if state.joined:
                todo.append(f"create veth {host} of joined endpoint {eid[:12]} on bridge {cfg.bridge}")
        elif link["alias"] != alias:
            if link["alias"] or link["kind"] != "veth":
                raise LinkExists(f"link {host} is not ours (alias {shown(link['alias'])}, "
                                 f"kind {shown(link['kind'])}): left alone")
            todo.append(f"adopt veth {host} of endpoint {eid[:12]} (our name, no alias: a join cut short)")
        elif link["master"] != cfg.bridge or not link["up"]:
            todo.append(f"attach veth {host} of endpoint {eid[:12]} to bridge {cfg.bridge} and set it up")
        if len(todo) > dropped and not dry_run:      # a left endpoint's doomed pair is not re-made
            self.kernel.ensure_veth(host, naming.container_veth_name(eid), alias=alias, mtu=cfg.mtu,
                                    peer_mac=state.spec.mac or None, master=cfg.bridge)
        if state.ports and not published:
            todo.append(f"publish {len(state.ports)} port(s) of endpoint {eid[:12]}")
            if not dry_run:
                self.publish(network, state.spec, state.ports)
        return todo

    # -- reconciliation ---------------------------------------------------------------------

    def remove_doomed(self, *, dry_run: bool) -> list[str]:
        """Delete the links a DeleteEndpoint marked doomed and no reaper deleted (a crash between).

        Needs no record: the mark itself is the decision, taken when the endpoint's record went.
        So the agent runs this even when it leaves the other orphans alone (a store that looks
        empty may be the wrong store; a doomed link is garbage whichever store is right).
        """
        return self._delete_doomed(self.kernel.links_owned(naming.ALIAS_ROOT + "doomed:"), dry_run=dry_run)

    def _delete_doomed(self, links: list[tuple[str, str]], *, dry_run: bool) -> list[str]:
        actions: list[str] = []
        for name, alias in sorted(links):
            if not alias.startswith(naming.ALIAS_ROOT + "doomed:"):
                continue
            owner = alias[len(naming.ALIAS_ROOT + "doomed:"):]
            what = "endpoint" if name.startswith(naming.HOST_VETH_PREFIX) else "network"
            actions.append(f"delete link {name} ({what} {owner[:12]} was deleted, its link marked doomed)")
            if not dry_run:
                with contextlib.suppress(LinkNotFound):     # the reaper was quicker: fine
                    self.kernel.link_delete(name, alias=alias)
        return actions

    def reconcile(self, known: Callable[[], tuple[set[str], set[str]]], *, dry_run: bool) -> list[str]:
        """Remove links and rules that carry our mark but belong to no network or endpoint on record.

        Only objects with a cnmkit mark are ever considered, so nothing of anybody else's is at risk.
        """
        links = self.kernel.links_owned(naming.ALIAS_ROOT)
        marks = self.firewall.marks()
        networks, endpoints = known()                      # after the scan: see drivers/base.py
        actions = self._delete_doomed(links, dry_run=dry_run)
        for name, alias in sorted(links, key=lambda link: link[1].startswith(naming.ALIAS_ROOT + "net:")):
            kind, _, owner = alias[len(naming.ALIAS_ROOT):].partition(":")
            if kind == "doomed":
                continue
            on_record = {"net": networks, "ep": endpoints}.get(kind)
            if on_record is None or owner in on_record:
                continue
            what = "network" if kind == "net" else "endpoint"
            actions.append(f"delete link {name} ({what} {owner[:12]} is not on record)")
            if not dry_run:
                self.kernel.link_delete(name, alias=alias)
        # Marks carry whole ids and are compared whole. A short mark (an older cnmkit's 12-digit
        # prefix) is left alone while it could belong to a network on record: it cannot be told apart.
        def unknown(mark_id: str, on_record: set[str]) -> bool:
            return not any(k == mark_id or (len(mark_id) < 64 and k.startswith(mark_id)) for k in on_record)

        for net in sorted(n for n in {n for n, _ in marks} if unknown(n, networks)):
            actions.append(f"remove iptables rules marked {naming.ALIAS_ROOT}{net} (network not on record)")
            if not dry_run:
                self.firewall.remove_network(net)
        for net, ep in sorted(m for m in marks if not unknown(m[0], networks) and m[1] and unknown(m[1], endpoints)):
            actions.append(f"remove published ports marked {naming.ALIAS_ROOT}{net}:{ep} (endpoint not on record)")
            if not dry_run:
                self.firewall.unpublish(net, ep)
        return actions
