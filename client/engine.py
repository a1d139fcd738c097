"""The engine side of the protocol, shared by the CLI and the embedded runtime.

It drives the plugin through the very call sequences dockerd 20.10 uses (protocol.md §5):
pools and gateway before CreateNetwork; RequestAddress, CreateEndpoint, Join and
EndpointOperInfo to attach; Leave, DeleteEndpoint and ReleaseAddress to detach. So every
CLI and runtime operation also exercises the protocol, and a multi-step sequence that fails
half-way is unwound call by call, leaving no address or endpoint behind.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from netaddr import AddrFormatError, IPAddress, IPNetwork

from client.transport import DaemonUnavailable, PluginError, PluginTransport
from store.records import NAMES_OPTION

__all__ = ["NAMES_OPTION", "Attachment", "DaemonUnavailable", "Engine", "PluginError", "ensure_daemon"]

GATEWAY_OPTION = {"RequestAddressType": "com.docker.network.gateway"}
MTU_OPTION = "com.docker.network.driver.mtu"
DEFAULT_MTU = 1500
SPACE_OPTION = "cnmkit.space"            # ipam/service.py: the pool's own address space
_SPACE_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def vlan_space(options: dict[str, str], name: str) -> str:
    """The address space of a VLAN network's pools: one per VLAN segment, so two VLANs may carry
    the same subnet on one host (IPAM refuses overlaps only within a space). ``vlan.eth1.100``
    when the VID is given, else one of the network's own (its VID is chosen later, by the driver).
    """
    parent, vid = options.get("parent", ""), options.get("vlan", "")
    label = f"{parent}.{vid}" if parent and vid else f"net.{name}"
    return ("vlan." + _SPACE_UNSAFE.sub("-", label))[:128]


@dataclass
class Attachment:
    """One container interface on one network, as the plugin granted it; persisted by the runtime."""

    network_id: str
    network_name: str
    endpoint_id: str
    address: str = ""
    address_v6: str = ""
    mac: str = ""
    src_name: str = ""
    dst_prefix: str = "eth"
    gateway: str = ""
    gateway_v6: str = ""
    static_routes: list[dict[str, Any]] = field(default_factory=list)
    mtu: int = DEFAULT_MTU
    pool_v4: str = ""
    pool_v6: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Attachment:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class _Undo:
    """Steps to unwind if a sequence fails; run newest first, each tolerated on its own."""

    def __init__(self) -> None:
        self.steps: list[Callable[[], object]] = []

    def push(self, step: Callable[[], object]) -> None:
        self.steps.append(step)

    def run(self) -> None:
        for step in reversed(self.steps):
            try:
                step()
            except (PluginError, DaemonUnavailable):
                pass
        self.steps.clear()


def _family(cidr: str, what: str) -> int:
    try:
        return IPNetwork(cidr).version
    except (AddrFormatError, ValueError):
        raise PluginError(f"{what}: {cidr!r} is not a valid CIDR") from None


class Engine:
    def __init__(self, plugin_dir: str = "/run/docker/plugins", timeout: float = 120.0) -> None:
        self.plugin_dir = plugin_dir
        self.timeout = timeout
        self.ipam = PluginTransport(os.path.join(plugin_dir, "cnmkit.sock"), timeout)
        self._drivers: dict[str, PluginTransport] = {}
        # Set by a caller that attaches many endpoints to the same networks at once (runtime/batch.py):
        # the pool ids do not change under it, so PoolList is asked once, not once per endpoint.
        self.pool_ids: dict[tuple[str, str], str] | None = None

    def driver(self, name: str) -> PluginTransport:
        name = name if name.startswith("cnmkit-") else f"cnmkit-{name}"
        if name not in self._drivers:
            self._drivers[name] = PluginTransport(os.path.join(self.plugin_dir, f"{name}.sock"), self.timeout)
        return self._drivers[name]

    def close(self) -> None:
        for t in (self.ipam, *self._drivers.values()):
            t.close()

    # -- inspection ---------------------------------------------------------------------------

    def list_networks(self) -> list[dict[str, Any]]:
        return list(self.ipam.call("Cnmkit.NetworkList", {})["Networks"])

    def inspect_network(self, ref: str, *, overlay: bool = False) -> dict[str, Any]:
        """``overlay``: with ``OverlayEndpointList``, every host's endpoints of the network's overlay."""
        body: dict[str, Any] = {"Network": ref, "Overlay": True} if overlay else {"Network": ref}
        return dict(self.ipam.call("Cnmkit.NetworkInspect", body)["Network"])

    def list_pools(self) -> list[dict[str, Any]]:
        return list(self.ipam.call("Cnmkit.PoolList", {})["Pools"])

    def list_hosts(self) -> list[dict[str, Any]]:
        """The live hosts sharing the daemon's store (agent/hosts.py)."""
        return list(self.ipam.call("Cnmkit.HostList", {})["Hosts"])

    def cleanup(self, dry_run: bool = False) -> list[str]:
        """Kernel objects carrying cnmkit's mark that no record explains (left by a crash): removed."""
        return [str(a) for a in self.ipam.call("Cnmkit.Cleanup", {"DryRun": dry_run})["Actions"]]

    def reconcile(self, dry_run: bool = False, cleanup: bool = True) -> list[str]:
        """Make the kernel match the store now (agent/reconcile.py); the actions taken or planned."""
        body = {"DryRun": dry_run, "Cleanup": cleanup}
        return [str(a) for a in self.ipam.call("Cnmkit.Reconcile", body)["Actions"]]

    def _pool_id(self, cidr: str, space: str) -> str:
        if self.pool_ids is not None and (cidr, space) in self.pool_ids:
            return self.pool_ids[(cidr, space)]
        found = self._find_pool_id(cidr, space)
        if self.pool_ids is not None:
            self.pool_ids[(cidr, space)] = found
        return found

    def _find_pool_id(self, cidr: str, space: str) -> str:
        for pool in self.list_pools():
            if pool.get("Pool") == cidr and (not space or pool.get("AddressSpace") == space):
                return str(pool["PoolID"])
        raise PluginError(f"no IPAM pool {cidr} is held for this network")

    # -- networks -----------------------------------------------------------------------------

    def create_network(self, name: str, *, driver: str = "bridge", subnets: Sequence[str] = (),
                       gateways: Sequence[str] = (), ip_ranges: Sequence[str] = (),
                       aux_addresses: dict[str, str] | None = None, ipv6: bool = False, internal: bool = False,
                       options: dict[str, str] | None = None, ipam_options: dict[str, str] | None = None) -> str:
        """``docker network create`` with cnmkit as both drivers; returns the new network id."""
        if not name:
            raise PluginError("name: a network needs a name")
        try:
            found = self.inspect_network(name)
        except PluginError:
            found = {}
        # Only an exact name clashes: inspect also resolves id prefixes, and a random id of
        # another network may well start with the new name ("b", "cafe").
        if found.get("Name") == name:
            raise PluginError(f"network name {name!r} is already in use")
        options, ipam_options = dict(options or {}), dict(ipam_options or {})
        if driver in ("vxlan", "cnmkit-vxlan"):
            # One overlay, named after the network, its pool in the overlay's shared address
            # space (drivers/vxlan.py): the network is created once and used from every host.
            overlay = options.setdefault("cnmkit.overlay", name)
            ipam_options.setdefault("cnmkit.overlay", overlay)
        elif driver in ("vlan", "cnmkit-vlan"):
            # Every caller (CLI, lab) gets the same per-segment space: two VLANs, one subnet.
            ipam_options.setdefault(SPACE_OPTION, vlan_space(options, name))
        transport = self.driver(driver)
        transport.call("Plugin.Activate")
        spaces = self.ipam.call("IpamDriver.GetDefaultAddressSpaces")
        space = str(spaces.get("LocalDefaultAddressSpace", ""))
        undo = _Undo()
        try:
            data4 = self._request_pools(4, subnets, gateways, ip_ranges, aux_addresses or {}, space,
                                        ipam_options or {}, undo)
            data6 = self._request_pools(6, subnets, gateways, ip_ranges, aux_addresses or {}, space,
                                        ipam_options or {}, undo) if ipv6 else []
            if not ipv6 and any(_family(s, "subnet") == 6 for s in subnets):
                raise PluginError("subnet: an IPv6 subnet needs --ipv6")
            network_id = secrets.token_hex(32)
            generic = {**(options or {}), "cnmkit.name": name}
            net_options: dict[str, Any] = {"com.docker.network.generic": generic,
                                           "com.docker.network.enable_ipv6": ipv6}
            if internal:
                net_options["com.docker.network.internal"] = True
            transport.call("NetworkDriver.CreateNetwork", {"NetworkID": network_id, "Options": net_options,
                                                          "IPv4Data": data4, "IPv6Data": data6})
        except BaseException:
            undo.run()
            raise
        return network_id

    def _request_pools(self, version: int, subnets: Sequence[str], gateways: Sequence[str],
                       ip_ranges: Sequence[str], aux: dict[str, str], space: str,
                       ipam_options: dict[str, str], undo: _Undo) -> list[dict[str, Any]]:
        mine = [s for s in subnets if _family(s, "subnet") == version] or [""]
        gws = [g for g in gateways if IPAddress(g).version == version]
        ranges = [r for r in ip_ranges if _family(r, "ip-range") == version]
        out = []
        for i, subnet in enumerate(mine):
            reply = self.ipam.call("IpamDriver.RequestPool", {
                "AddressSpace": space, "Pool": subnet, "SubPool": ranges[i] if i < len(ranges) else "",
                "Options": ipam_options, "V6": version == 6})
            pool_id, pool = reply["PoolID"], reply["Pool"]
            undo.push(partial(self.ipam.call, "IpamDriver.ReleasePool", {"PoolID": pool_id}))
            # The space the pool really lives in: an ipam option may name one (cnmkit.space), and
            # later calls find the pool by (space, subnet) when two spaces hold the same subnet.
            entry: dict[str, Any] = {"AddressSpace": pool_id.partition("/")[0] or space, "Pool": pool}
            data_gw = (reply.get("Data") or {}).get("com.docker.network.gateway")
            gw = gws[i] if i < len(gws) else ""
            if data_gw and not gw:
                entry["Gateway"] = data_gw
            else:
                granted = self.ipam.call("IpamDriver.RequestAddress",
                                         {"PoolID": pool_id, "Address": gw, "Options": GATEWAY_OPTION})
                entry["Gateway"] = granted["Address"]
                undo.push(partial(self._release, pool_id, granted["Address"]))
            net = IPNetwork(pool)
            aux_here = {k: v for k, v in aux.items() if IPAddress(v).version == version and IPAddress(v) in net}
            if aux_here:
                entry["AuxAddresses"] = {}
            for key, addr in aux_here.items():
                granted = self.ipam.call("IpamDriver.RequestAddress",
                                         {"PoolID": pool_id, "Address": addr, "Options": None})
                entry["AuxAddresses"][key] = granted["Address"]
                undo.push(partial(self._release, pool_id, granted["Address"]))
            out.append(entry)
        return out

    def _release(self, pool_id: str, cidr: str) -> None:
        self.ipam.call("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": cidr.split("/")[0]})

    def remove_network(self, ref: str) -> str:
        net = self.inspect_network(ref)
        if net["EndpointList"]:
            raise PluginError(f"network {net['Name'] or net['Id'][:12]} has active endpoints")
        self.driver(net["Driver"]).call("NetworkDriver.DeleteNetwork", {"NetworkID": net["Id"]})
        for entry in (*net["IPv4"], *net["IPv6"]):
            try:
                pool_id = self._pool_id(entry["Pool"], entry.get("AddressSpace", ""))
            except PluginError:
                continue                                 # a pool not ours (another IPAM): nothing to free
            for addr in (entry.get("Gateway"), *entry.get("AuxAddresses", {}).values()):
                if addr:
                    self._release(pool_id, addr)
            self.ipam.call("IpamDriver.ReleasePool", {"PoolID": pool_id})
        return str(net["Id"])

    # -- endpoints ----------------------------------------------------------------------------

    def attach(self, network: str, sandbox_key: str, *, ip: str | None = None, ip6: str | None = None,
               mac: str | None = None, direct: bool = False, net: dict[str, Any] | None = None,
               names: Sequence[str] = ()) -> Attachment:
        """``docker run --network``/``network connect``: address, endpoint, join; unwound on failure.

        ``net`` is the network as ``inspect_network`` gave it, when the caller (a batch of nodes on
        the same network) asked once for all: the reply lists every endpoint, so asking per node
        costs O(n) per node. ``names`` (the container's name, hostname and aliases) go with the
        endpoint, so runtimes on other hosts of an overlay can resolve them.
        """
        net = net or self.inspect_network(network)
        transport = self.driver(net["Driver"])
        att = Attachment(network_id=net["Id"], network_name=net["Name"], endpoint_id=secrets.token_hex(32))
        mtu = net.get("Options", {}).get(MTU_OPTION)
        att.mtu = int(mtu) if mtu and str(mtu).isdigit() else DEFAULT_MTU
        if not mtu and net["Driver"] == "cnmkit-vxlan":
            att.mtu = 0                       # the overlay's (underlay minus 50), set by the driver: kept
        undo = _Undo()
        try:
            options = {"com.docker.network.endpoint.macaddress": mac} if mac else None
            att.address, att.pool_v4 = self._request_endpoint_address(net["IPv4"], ip, options, undo, "ip")
            if net.get("EnableIPv6") and net["IPv6"]:
                att.address_v6, att.pool_v6 = self._request_endpoint_address(net["IPv6"], ip6, options, undo,
                                                                             "ip6")
            elif ip6:
                raise PluginError(f"ip6: network {net['Name'] or net['Id'][:12]} has no IPv6")
            reply = transport.call("NetworkDriver.CreateEndpoint", {
                "NetworkID": att.network_id, "EndpointID": att.endpoint_id,
                "Interface": {"Address": att.address, "AddressIPv6": att.address_v6, "MacAddress": mac or ""},
                # The container's names ride on the endpoint record, so the runtime on another host
                # can list them in its containers' hosts files (a multi-host network has no DNS).
                "Options": {NAMES_OPTION: ",".join(names)} if names else {}})
            undo.push(lambda: transport.call("NetworkDriver.DeleteEndpoint",
                                             {"NetworkID": att.network_id, "EndpointID": att.endpoint_id}))
            att.mac = mac or (reply.get("Interface") or {}).get("MacAddress", "")
            joined = transport.call("NetworkDriver.Join", {
                "NetworkID": att.network_id, "EndpointID": att.endpoint_id, "SandboxKey": sandbox_key,
                "Options": {"com.docker.network.portmap": [], "com.docker.network.endpoint.exposedports": [],
                            "cnmkit.direct": direct}})
            undo.push(lambda: transport.call("NetworkDriver.Leave",
                                             {"NetworkID": att.network_id, "EndpointID": att.endpoint_id}))
            ifnames = joined.get("InterfaceName") or {}
            att.src_name, att.dst_prefix = ifnames.get("SrcName", ""), ifnames.get("DstPrefix") or "eth"
            att.gateway, att.gateway_v6 = joined.get("Gateway", ""), joined.get("GatewayIPv6", "")
            att.static_routes = list(joined.get("StaticRoutes") or [])
            transport.call("NetworkDriver.EndpointOperInfo",
                           {"NetworkID": att.network_id, "EndpointID": att.endpoint_id})
        except BaseException:
            undo.run()
            raise
        return att

    def _request_endpoint_address(self, pools: list[dict[str, Any]], wanted: str | None,
                                  options: dict[str, str] | None, undo: _Undo, what: str) -> tuple[str, str]:
        if not pools:
            return "", ""
        entry = pools[0]
        if wanted:
            try:
                addr = IPAddress(wanted)
            except (AddrFormatError, ValueError):
                raise PluginError(f"{what}: {wanted!r} is not a valid IP address") from None
            inside = [p for p in pools if addr in IPNetwork(p["Pool"])]
            if not inside:
                raise PluginError(f"{what}: {wanted} is outside the network's subnets "
                                  f"({', '.join(p['Pool'] for p in pools)})")
            entry = inside[0]
        pool_id = self._pool_id(entry["Pool"], entry.get("AddressSpace", ""))
        granted = self.ipam.call("IpamDriver.RequestAddress",
                                 {"PoolID": pool_id, "Address": wanted or "", "Options": options})
        address = str(granted["Address"])
        undo.push(lambda: self._release(pool_id, address))
        return address, pool_id

    def detach(self, att: Attachment, driver: str | None = None) -> None:
        """``docker network disconnect``/stop: every step runs even if an earlier one failed.

        ``driver`` is the network's driver when the caller knows it (a batch asks once per network).
        """
        ref = {"NetworkID": att.network_id, "EndpointID": att.endpoint_id}
        errors: list[str] = []
        try:
            transport: PluginTransport | None = self.driver(driver or self.inspect_network(att.network_id)["Driver"])
        except PluginError:
            transport = None                            # the network is gone: its endpoints went with it
        steps: list[Callable[[], object]] = []
        if transport is not None:
            steps += [lambda: transport.call("NetworkDriver.Leave", ref),
                      lambda: transport.call("NetworkDriver.DeleteEndpoint", ref)]
        for pool_id, addr in ((att.pool_v4, att.address), (att.pool_v6, att.address_v6)):
            if pool_id and addr:
                steps.append(partial(self._release, pool_id, addr))
        for step in steps:
            try:
                step()
            except PluginError as exc:
                errors.append(str(exc))
        if errors:
            raise PluginError("; ".join(errors))


def ensure_daemon(plugin_dir: str, state_dir: str, store_url: str, wait: float = 15.0,
                  sandbox_dirs: Sequence[str] = ()) -> None:
    """Start ``cnmkit daemon`` in the background unless one already answers on the socket.

    ``sandbox_dirs`` are passed as ``--sandbox-dir``: the daemon opens a direct Join's sandbox
    only there, so a runtime with its own ``--run-dir`` must name its netns dir to the daemon.
    """
    probe = PluginTransport(os.path.join(plugin_dir, "cnmkit.sock"), timeout=5)
    try:
        probe.call("Plugin.Activate")
        return
    except DaemonUnavailable:
        pass
    finally:
        probe.close()
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    log_path = os.path.join(state_dir, "daemon.log")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    with open(log_path, "ab") as log:
        subprocess.Popen([sys.executable, "-m", "cli.main", "--plugin-dir", plugin_dir, "--state-dir", state_dir,
                          "--store", store_url, "daemon",
                          *(arg for d in sandbox_dirs for arg in ("--sandbox-dir", d))],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True, close_fds=True, cwd="/", env=env)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        probe = PluginTransport(os.path.join(plugin_dir, "cnmkit.sock"), timeout=5)
        try:
            probe.call("Plugin.Activate")
            return
        except DaemonUnavailable:
            time.sleep(0.1)
        finally:
            probe.close()
    raise DaemonUnavailable(f"the daemon did not come up within {wait:.0f} s; see {log_path}")
