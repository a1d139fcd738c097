"""A VXLAN overlay built by hand with iproute2, the shape the cnmkit-vxlan driver builds.

Why: it is the baseline the overlay is measured against (bench/overlay_throughput.py) and the
proof that the lab's underlay carries VXLAN at all, independent of cnmkit. Per host: a bridge,
a VXLAN device on it (learning off, UDP 4789, the host's underlay address as local VTEP, MTU
underlay - 50), a "container" namespace whose eth0 is a veth on the bridge; per remote host a
static FDB entry for the remote container's MAC and an all-zeros entry for flooding (head-end
replication), exactly the entries the driver derives from the store.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from tests.overlay.harness import UNDERLAY_MTU, Lab, OverlayHost, run

VXLAN_OVERHEAD = 50                     # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
VXLAN_PORT = 4789


@dataclass(frozen=True)
class HandEndpoint:
    host: OverlayHost
    netns: str                          # the "container": a namespace the lab removes by name
    ip: str
    mac: str

    def exec(self, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.netns, *cmd], capture_output=True, text=True,
                              check=check, timeout=120)

    def popen(self, *cmd: str) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.netns, *cmd], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)


def build(lab: Lab, hosts: list[OverlayHost], *, vni: int = 4242, subnet: str = "10.98.0",
          bridge: str = "hvbr", vxlan: str = "hvx") -> list[HandEndpoint]:
    """One endpoint per host on one hand-built VXLAN; ``lab.close()`` removes it with the namespaces."""
    mtu = UNDERLAY_MTU - VXLAN_OVERHEAD
    eps: list[HandEndpoint] = []
    for i, host in enumerate(hosts, start=1):
        ns = host.netns
        run("ip", "-n", ns, "link", "add", bridge, "mtu", str(mtu), "type", "bridge")
        run("ip", "-n", ns, "link", "add", vxlan, "mtu", str(mtu), "type", "vxlan", "id", str(vni),
            "local", host.address, "dstport", str(VXLAN_PORT), "dev", "eth0", "nolearning")
        run("ip", "-n", ns, "link", "set", vxlan, "master", bridge, "up")
        run("ip", "-n", ns, "link", "set", bridge, "up")
        cns = lab._netns(f"{lab.tag}hv{i}")
        mac = f"02:42:98:00:00:{i:02x}"
        veth = f"{vxlan}{i}"
        run("ip", "-n", ns, "link", "add", veth, "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
            "mtu", str(mtu), "address", mac, "netns", cns)
        run("ip", "-n", ns, "link", "set", veth, "master", bridge, "up")
        run("ip", "-n", cns, "addr", "add", f"{subnet}.{i}/24", "dev", "eth0")
        run("ip", "-n", cns, "link", "set", "eth0", "up")
        eps.append(HandEndpoint(host, cns, f"{subnet}.{i}", mac))
    for ep in eps:
        for other in eps:
            if other is ep:
                continue
            ns = ep.host.netns
            run("bridge", "-n", ns, "fdb", "append", "00:00:00:00:00:00", "dev", vxlan, "dst", other.host.address)
            run("bridge", "-n", ns, "fdb", "add", other.mac, "dev", vxlan, "dst", other.host.address, "self",
                "permanent")
            run("ip", "-n", ep.netns, "neigh", "replace", other.ip, "lladdr", other.mac, "dev", "eth0",
                "nud", "permanent")
    return eps


def remove(lab: Lab, eps: list[HandEndpoint], *, bridge: str = "hvbr", vxlan: str = "hvx") -> None:
    """Remove what ``build`` made, by name (the lab would at its end; a test cleans up after itself)."""
    for ep in eps:
        run("ip", "-n", ep.host.netns, "link", "del", vxlan, check=False)
        run("ip", "-n", ep.host.netns, "link", "del", bridge, check=False)
        run("ip", "netns", "del", ep.netns, check=False)
        if ep.netns in lab.namespaces:
            lab.namespaces.remove(ep.netns)
