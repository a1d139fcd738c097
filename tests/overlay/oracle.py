"""What the kernel of a lab host says about its VXLAN devices: the tier's independent oracle.

Read with ``bridge -j fdb`` and ``ip -j neigh`` (iproute2), never with cnmkit's code. A host's
VTEP for one VNI is found by what it is, not by a name the driver chose: a ``vxlan`` link with
that id whose local address is the host's underlay address. It is looked for in the host's own
namespace and in every pinned network namespace (named ones and nsfs bind mounts), since an
overlay may keep its bridge and VXLAN device in a namespace of its own (Docker's overlay does,
to let two overlays share a subnet on one host).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from tests.overlay.harness import OverlayHost, run

ZERO_MAC = "00:00:00:00:00:00"


@dataclass(frozen=True)
class Vtep:
    netns: str                          # a path nsenter --net= accepts
    ifname: str
    master: str                         # the bridge it is a port of ("" if none)


def _pinned_netns() -> list[str]:
    """Every namespace pinned by a file: /run/netns/* and nsfs bind mounts, one path per inode."""
    paths = [f"/run/netns/{n}" for n in sorted(os.listdir("/run/netns"))] if os.path.isdir("/run/netns") else []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype == "nsfs" and fields[4] not in paths:
                paths.append(fields[4])
    seen: set[tuple[int, int]] = set()
    out: list[str] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            out.append(path)
    return out


def _json(netns: str, *cmd: str) -> list[dict]:
    out = run("nsenter", f"--net={netns}", *cmd, check=False)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []


def vteps(host: OverlayHost, vni: int) -> list[Vtep]:
    found: list[Vtep] = []
    for ns in [f"/run/netns/{host.netns}", *(p for p in _pinned_netns() if p != f"/run/netns/{host.netns}")]:
        for link in _json(ns, "ip", "-j", "-d", "link", "show", "type", "vxlan"):
            data = (link.get("linkinfo") or {}).get("info_data") or {}
            if data.get("id") == vni and data.get("local") == host.address:
                found.append(Vtep(ns, str(link["ifname"]), str(link.get("master", ""))))
    return found


def vtep(host: OverlayHost, vni: int) -> Vtep | None:
    found = vteps(host, vni)
    assert len(found) <= 1, f"{host.name} has {len(found)} VTEPs for VNI {vni}: {found}"
    return found[0] if found else None


def _fdb_on(netns: str, ifname: str) -> set[tuple[str, str]]:
    return {(str(e["mac"]), str(e["dst"])) for e in _json(netns, "bridge", "-j", "fdb", "show", "dev", ifname)
            if e.get("dst")}


def fdb(host: OverlayHost, vni: int) -> set[tuple[str, str]]:
    """(MAC, remote VTEP) of the static entries on the host's VXLAN device for ``vni``."""
    dev = vtep(host, vni)
    return set() if dev is None else _fdb_on(dev.netns, dev.ifname)


def fdb_in(netns: str) -> set[tuple[str, str]]:
    """(MAC, remote VTEP) of the entries on ``vxlan0`` of the named namespace (an overlay's)."""
    return _fdb_on(f"/run/netns/{netns}", "vxlan0")


def neigh_in(netns: str) -> set[tuple[str, str]]:
    """(IP, MAC) of every neighbour entry on ``vxlan0`` of the named namespace, whatever its state."""
    return {(str(e["dst"]), str(e.get("lladdr", ""))) for e in
            _json(f"/run/netns/{netns}", "ip", "-j", "neigh", "show", "dev", "vxlan0")}


def neigh(host: OverlayHost, vni: int) -> set[tuple[str, str]]:
    """(IP, MAC) of the permanent neighbour entries on the overlay's devices on ``host``."""
    dev = vtep(host, vni)
    if dev is None:
        return set()
    devices = {dev.ifname, dev.master} - {""}
    return {(str(e["dst"]), str(e["lladdr"])) for e in _json(dev.netns, "ip", "-j", "neigh", "show")
            if e.get("dev") in devices and e.get("lladdr") and "PERMANENT" in (e.get("state") or [])}


def flood(host: OverlayHost, vni: int) -> set[str]:
    """The remote VTEPs the host replicates broadcast to (its all-zeros FDB entries)."""
    return {dst for mac, dst in fdb(host, vni) if mac == ZERO_MAC}
