"""One VXLAN overlay on one host: a network namespace holding its bridge, VXLAN device and egress.

Why a namespace per overlay per host (as Docker's own overlay does): every host gives the
overlay's containers the *same* gateway address, and two overlays may use the same subnet on one
host (issue 8, items 4 and 6). In the host namespace those would be two bridges with one address,
or one subnet routed twice. Inside ``cnmkit-ov<VNI>-<host>`` each overlay has the whole address
plan to itself:

    host ns                              overlay ns (cnmkit-ov<VNI>-<host>)
    underlay dev (advertise address)     ovbr0   bridge: gateway address(es), MAC from the overlay name
      UDP 4789 socket of vxlan0  <----   vxlan0  VNI, local = advertise, learning off, ARP/ND proxy on
    ovt<VNI>  169.254.a.b+1/30  <------> ovtr0   transit (absent when internal), default route
    cni<ep>   container end (dockerd     cnv<ep>  host end of each local container's veth
              moves it, or born in the sandbox)

- The VXLAN device is created from the host namespace with IFLA_NET_NS_FD, so its UDP socket
  stays in the host namespace (where the underlay is) while the device sits in the overlay's.
- No ARP crosses the overlay: ``proxy`` makes vxlan0 answer ARP/ND from its neighbour table (the
  store's entries, agent/overlay.py) and drop what it cannot answer, so a container's ARP for the
  gateway is answered by its own host's bridge only; an ebtables OUTPUT rule keeps the overlay
  namespace's own stack (the gateway) from sending anything over vxlan0, and frames arriving with
  the gateway's MAC as source are dropped: each host's gateway serves its own containers.
- Egress: the overlay namespace masquerades its subnets out of ``ovtr0``; the host namespace
  masquerades the transit address out of its own devices, as the bridge driver does for bridges.
  Transit addresses come from 169.254.128.0/17, a /30 per overlay with egress on the host: the
  VNI modulo 8192 when that slot is free, else the first free one (``_transit_slot``).

Every step is idempotent, found again by name; a namespace made by a failed ``ensure`` is removed
again. The overlay goes with ``ip netns del``, after its vxlan0 is deleted (``_release_vni``).
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from netaddr import IPAddress, IPNetwork

from drivers import naming
from drivers.errors import KernelError
from drivers.kernel import (
    OverlayKernel,
    netns_add,
    netns_delete,
    netns_exists,
    netns_names,
    netns_path,
)
from drivers.kernel_api import OverlayKernelOps
from store.records import OverlayRecord

BRIDGE = "ovbr0"
VXLAN = "vxlan0"
TRANSIT = "ovtr0"
VXLAN_PORT = 4789
NS_PREFIX = "cnmkit-ov"
TRANSIT_NET = IPNetwork("169.254.128.0/17")
TRANSIT_SLOTS = TRANSIT_NET.size // 4


def ns_name(vni: int, host_id: str) -> str:
    return f"{NS_PREFIX}{vni}-{host_id}"


def transit_host_link(vni: int) -> str:
    return f"ovt{vni}"


def transit_addresses(slot: int) -> tuple[str, str]:
    """(host end, overlay end) of transit /30 number ``slot`` in TRANSIT_NET."""
    base = int(TRANSIT_NET.network) + 4 * slot
    return str(IPAddress(base + 1)), str(IPAddress(base + 2))


def transit_slot_of(cidrs: list[str]) -> int | None:
    """The transit slot a link's addresses hold (its address in TRANSIT_NET), or None."""
    for cidr in cidrs:
        addr = IPNetwork(cidr)
        if addr.version == 4 and addr.ip in TRANSIT_NET:
            return (int(addr.ip) - int(TRANSIT_NET.network)) // 4
    return None


def gateway_mac(overlay: str) -> str:
    """The gateway bridge's MAC: derived from the overlay's name, so identical on every host."""
    return naming.stable_mac(f"cnmkit:overlay:{overlay}")


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False)


def _must(*cmd: str) -> None:
    proc = _run(*cmd)
    if proc.returncode != 0:
        raise KernelError(f"{' '.join(cmd[:6])}...: {proc.stderr.strip() or proc.stdout.strip()}")


def _ensure_rule(prefix: tuple[str, ...], table: str, chain: str, rule: tuple[str, ...]) -> None:
    """``-C`` then ``-A``: a rule already there is not added twice (iptables and ebtables alike)."""
    if _run(*prefix, "-t", table, "-C", chain, *rule).returncode != 0:
        _must(*prefix, "-t", table, "-A", chain, *rule)


class NamespaceWatcher(Protocol):
    """Told when a namespace is complete, and before one goes (agent/dns.py keeps sockets there)."""

    def made(self, ov: OverlayRecord) -> None: ...      # must not block: ensure holds the lock

    def removing(self, vni: int) -> None: ...           # returns once nothing of the watcher's pins it


class OverlayHost:
    """This host's side of every overlay: make, find, sync and remove the per-overlay namespaces."""

    def __init__(self, host_kernel: OverlayKernelOps, host_id: str, advertise: str, *,
                 kernel_for: Callable[[str], OverlayKernelOps] = OverlayKernel) -> None:
        self.host = host_kernel
        self.host_id = host_id
        self.advertise = advertise
        self._kernel_for = kernel_for           # a namespace's kernel verbs, by netns path
        self._complete: set[int] = set()      # VNIs whose ensure() ran to the end in this process
        self._epochs: dict[int, int] = {}      # VNI -> bumped whenever its vxlan0 may be new or gone
        self.lock = threading.RLock()           # one overlay's make/remove at a time, per daemon
        self.watchers: list[NamespaceWatcher] = []

    # -- finding ---------------------------------------------------------------------------------

    def name(self, vni: int) -> str:
        return ns_name(vni, self.host_id)

    def exists(self, vni: int) -> bool:
        return netns_exists(self.name(vni))

    def local_vnis(self) -> set[int]:
        """VNIs of the overlays with a namespace on this host (from their names)."""
        prefix, suffix = NS_PREFIX, f"-{self.host_id}"
        out = set()
        for name in netns_names(prefix):
            middle = name[len(prefix):]
            if middle.endswith(suffix) and middle[:-len(suffix)].isdigit():
                out.add(int(middle[:-len(suffix)]))
        return out

    def ready(self, vni: int) -> bool:
        """Made completely by this process and still there: a Join or a watch event need not
        redo the dozen subprocesses of ``ensure`` (the periodic resync still does)."""
        return vni in self._complete and self.exists(vni)

    def epoch(self, vni: int) -> int:
        """Changes whenever the overlay's vxlan0 (and so its entries) may have been made anew or
        removed in this process: entries the agent remembers writing are only good for one epoch."""
        return self._epochs.get(vni, 0)

    def _bump(self, vni: int) -> None:
        self._epochs[vni] = self._epochs.get(vni, 0) + 1

    @contextlib.contextmanager
    def kernel(self, vni: int) -> Iterator[OverlayKernelOps]:
        """The overlay namespace's kernel verbs, opened and closed in the calling thread.

        Not cached: a netlink socket opened in a namespace pins it, and pyroute2's per-thread
        sockets can only be closed safely by their own thread, so a cached handle either kept a
        removed namespace alive (its vxlan0 still holding the VNI) or hung closing another
        thread's socket. An open costs about 1.5 ms (setns, socket, setns back).
        """
        k = self._kernel_for(netns_path(self.name(vni)))
        try:
            yield k
        finally:
            k.close()

    # -- making ----------------------------------------------------------------------------------

    def ensure(self, ov: OverlayRecord) -> list[str]:
        """Make (or complete) the overlay's namespace here; answers what was missing."""
        if not self.advertise:
            raise KernelError("this host has no --advertise address: it cannot be a VXLAN tunnel endpoint")
        with self.lock:
            todo: list[str] = []
            name = self.name(ov.vni)
            made = netns_add(name)
            if made:
                self._bump(ov.vni)
                todo.append(f"create namespace {name}")
            try:
                with self.kernel(ov.vni) as k:
                    todo += self._ensure_in(k, name, ov)
            except BaseException:
                if made:                        # a namespace made now and left half-made: gone again
                    with contextlib.suppress(KernelError):
                        self.teardown(ov.vni)
                raise
            self._complete.add(ov.vni)
            for watcher in self.watchers:
                watcher.made(ov)
            return todo

    def _ensure_in(self, k: OverlayKernelOps, name: str, ov: OverlayRecord) -> list[str]:
        todo: list[str] = []
        alias = f"{naming.ALIAS_ROOT}overlay:{ov.name}"
        if k.link_get(BRIDGE) is None:
            todo.append(f"create bridge {BRIDGE} of overlay {ov.name}")
        k.ensure_bridge(BRIDGE, alias=alias, mtu=ov.mtu, mac=gateway_mac(ov.name), adopt=True)
        for gw in ov.gateways:
            k.addr_ensure(BRIDGE, gw)
        k.set_up(BRIDGE)
        if k.link_get(VXLAN) is None:
            self._bump(ov.vni)
            todo.append(f"create {VXLAN} (VNI {ov.vni}, local {self.advertise}) of overlay {ov.name}")
            self.host.ensure_vxlan(VXLAN, alias=alias, vni=ov.vni, local=self.advertise, port=VXLAN_PORT,
                                   mtu=ov.mtu, netns_path=netns_path(name))
        k.link_configure(VXLAN, alias=alias, master=BRIDGE, mtu=ov.mtu)
        self._isolate_gateway(name, ov)
        if not ov.internal:
            todo += self._egress(k, name, ov, alias)
        return todo

    def _isolate_gateway(self, name: str, ov: OverlayRecord) -> None:
        """The gateway (this namespace's own stack) talks to local containers only, never over vxlan0."""
        eb = ("ip", "netns", "exec", name, "ebtables")
        mac = gateway_mac(ov.name)
        _ensure_rule(eb, "filter", "OUTPUT", ("-o", VXLAN, "-j", "DROP"))
        _ensure_rule(eb, "filter", "INPUT", ("-i", VXLAN, "-s", mac, "-j", "DROP"))
        _ensure_rule(eb, "filter", "FORWARD", ("-i", VXLAN, "-s", mac, "-j", "DROP"))

    def _transit_slot(self, k: OverlayKernelOps, ov: OverlayRecord) -> int:
        """The overlay's transit /30 on this host: the one its pair already holds, else a free one.

        Free means held by no other overlay's transit link here (the kernel is the record: the
        caller holds ``lock``, under which every pair of this host is made and removed). The
        VNI's own slot (VNI modulo TRANSIT_SLOTS) is taken when free, so addresses stay what they
        were; two VNIs equal modulo TRANSIT_SLOTS get two slots (they shared one, and the second
        overlay was refused egress).
        """
        outer = transit_host_link(ov.vni)
        for kernel, link in ((self.host, outer), (k, TRANSIT)):
            if kernel.link_get(link) is not None:
                held = transit_slot_of(kernel.addrs(link))
                if held is not None:
                    return held
        used = {transit_slot_of(self.host.addrs(str(link["name"]))) for link in self.host.links()
                if str(link["name"]).startswith("ovt") and link["name"] != outer
                and str(link["alias"]).startswith(f"{naming.ALIAS_ROOT}overlay:")}
        preferred = ov.vni % TRANSIT_SLOTS
        if preferred not in used:
            return preferred
        free = next((slot for slot in range(TRANSIT_SLOTS) if slot not in used), None)
        if free is None:
            raise KernelError(f"overlay {ov.name}: all {TRANSIT_SLOTS} transit slots of {TRANSIT_NET} are used "
                              f"on this host (one per overlay with egress)")
        return free

    def _egress(self, k: OverlayKernelOps, name: str, ov: OverlayRecord, alias: str) -> list[str]:
        todo: list[str] = []
        host_end, ns_end = transit_addresses(self._transit_slot(k, ov))
        outer = transit_host_link(ov.vni)
        if k.link_get(TRANSIT) is None:
            todo.append(f"create transit {outer} <-> {TRANSIT} of overlay {ov.name}")
            with contextlib.suppress(KernelError):
                self.host.link_delete(outer, alias=alias)       # a half-made pair's host end
            self.host.veth_add(outer, TRANSIT, alias=alias, mtu=ov.mtu, peer_netns_path=netns_path(name))
        self.host.addr_ensure(outer, f"{host_end}/30")
        self.host.set_up(outer)
        k.addr_ensure(TRANSIT, f"{ns_end}/30")
        k.set_up(TRANSIT)
        k.route_replace("0.0.0.0/0", gateway=host_end)
        _must("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        _must("sysctl", "-qw", "net.ipv4.ip_forward=1")
        ipt_ns = ("ip", "netns", "exec", name, "iptables", "-w")
        for subnet in ov.subnets:
            if ":" not in subnet:
                _ensure_rule(ipt_ns, "nat", "POSTROUTING", ("-s", subnet, "-o", TRANSIT, "-j", "MASQUERADE"))
        ipt = ("iptables", "-w")
        tag = ("-m", "comment", "--comment", f"cnmkit:ov:{ov.vni}")
        _ensure_rule(ipt, "nat", "POSTROUTING", ("-s", f"{ns_end}/32", "!", "-o", outer, *tag, "-j", "MASQUERADE"))
        _ensure_rule(ipt, "filter", "FORWARD", ("-i", outer, *tag, "-j", "ACCEPT"))
        _ensure_rule(ipt, "filter", "FORWARD", ("-o", outer, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                                                *tag, "-j", "ACCEPT"))
        return todo

    # -- removing --------------------------------------------------------------------------------

    def teardown(self, vni: int) -> bool:
        """Remove the overlay's namespace (and with it every link in it) and its host-side rules."""
        with self.lock:
            for watcher in self.watchers:
                watcher.removing(vni)
            self._complete.discard(vni)
            self._bump(vni)
            self._remove_host_rules(vni)
            # The transit pair would go with the namespace, but only once the kernel's netns
            # cleanup runs (a workqueue, later): its host end is deleted here, so a removed overlay
            # leaves nothing in the host namespace when this returns.
            outer = transit_host_link(vni)
            link = self.host.link_get(outer)
            if link is not None and str(link["alias"]).startswith(f"{naming.ALIAS_ROOT}overlay:"):
                with contextlib.suppress(KernelError):
                    self.host.link_delete(outer, alias=str(link["alias"]))
            self._release_vni(vni)
            return netns_delete(self.name(vni))

    def _release_vni(self, vni: int) -> None:
        """Delete the overlay's vxlan0 now, so its VNI and UDP socket are free when this returns.

        ``ip netns del`` only unlinks the name: the namespace (and the vxlan0 in it, which keeps
        the VNI claimed in the host namespace) is destroyed by the kernel's netns cleanup
        workqueue later, or never while anything still holds it open. The same VNI made again
        meanwhile (a network removed and re-created, on any host) got EEXIST from the kernel.
        """
        if not self.exists(vni):
            return
        with contextlib.suppress(KernelError), self.kernel(vni) as k:
            link = k.link_get(VXLAN)
            if link is not None:
                k.link_delete(VXLAN, alias=str(link["alias"]))

    @staticmethod
    def _remove_host_rules(vni: int) -> None:
        mark = f"cnmkit:ov:{vni}"
        for table in ("nat", "filter"):
            listing = _run("iptables", "-w", "-t", table, "-S").stdout.splitlines()
            for line in listing:
                if f'"{mark}"' in line or f" {mark} " in line or line.endswith(f" {mark}"):
                    parts = line.split()
                    if parts and parts[0] == "-A":
                        args = [p.strip('"') for p in parts[1:]]
                        _run("iptables", "-w", "-t", table, "-D", *args)

    # -- entries (agent/overlay.py decides them) -------------------------------------------------

    def entries(self, vni: int) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """(FDB (MAC, VTEP), neighbour (IP, MAC)) entries now on the overlay's vxlan0."""
        with self.kernel(vni) as k:
            return set(k.fdb_entries(VXLAN)), set(k.neigh_entries(VXLAN))

    def apply(self, vni: int, *, fdb_add: set[tuple[str, str]], fdb_del: set[tuple[str, str]],
              neigh_add: set[tuple[str, str]], neigh_del: set[tuple[str, str]]) -> None:
        """Removals first: a reused IP's old MAC, a moved MAC's old VTEP go before the new ones come."""
        with self.kernel(vni) as k:
            for ip, _ in sorted(neigh_del):
                k.neigh_del(VXLAN, ip)
            for mac, dst in sorted(fdb_del):
                k.fdb_del(VXLAN, mac, dst)
            for mac, dst in sorted(fdb_add):
                k.fdb_add(VXLAN, mac, dst)
            for ip, mac in sorted(neigh_add):
                k.neigh_set(VXLAN, ip, mac)
