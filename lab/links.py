"""A lab's kernel objects outside the runtime: point-to-point veths and Linux bridges.

Containers and their multi-access networks go through the runtime and the daemon; what
containerlab calls links (a veth pair between two nodes, a node and the host, a node and a
``kind: bridge`` node) are made here through the kernel verbs (drivers/kernel_api.LabKernelOps).
Every end we make in the host's namespace, and the first end of every pair, carries the alias
``cnmkitlab:<lab>``: a link is deleted only if it carries it, and the alias is outside the
daemon's ``cnmkit:`` space, whose orphan sweep must not take lab links for its own.

A bridge that already existed (containerlab's ``kind: bridge`` expects one) is used and left
in place; one we made carries the alias and goes with the lab.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from drivers.errors import KernelError, LinkNotFound

if TYPE_CHECKING:
    from drivers.kernel_api import LabKernelOps

HOST_NETNS = "/proc/thread-self/ns/net"            # the calling thread's: where the CLI runs
BRIDGE_MTU = 1500


def alias_for(lab: str) -> str:
    return f"cnmkitlab:{lab}"


def kernel(netns: str | None) -> LabKernelOps:
    """A handle on ``netns`` (None: the host's, where the CLI runs); pyroute2 loads on first use."""
    from drivers.kernel import Kernel

    return Kernel.for_netns(netns) if netns else Kernel()


def make_bridge(lab: str, name: str) -> bool:
    """Make bridge ``name`` (up); False when a bridge not ours was there already and is used."""
    k = kernel(None)
    try:
        found = k.link_get(name)
        if found is not None:
            if found["alias"] == alias_for(lab):
                return True
            if found["kind"] != "bridge":
                raise KernelError(f"bridge {name}: a {found['kind'] or 'link'} of that name exists")
            return False
        k.ensure_bridge(name, alias=alias_for(lab), mtu=BRIDGE_MTU)
        k.link_set(name, up=True)
        return True
    finally:
        k.close()


def remove_bridge(lab: str, name: str) -> None:
    k = kernel(None)
    try:
        k.link_delete(name, alias=alias_for(lab))
    finally:
        k.close()


def make_link(lab: str, a: dict[str, Any], b: dict[str, Any], a_netns: str | None, b_netns: str | None,
              mtu: int | None) -> None:
    """The veth pair ``a``--``b`` with each end's master, addresses, and up; nothing left on failure.

    ``a``/``b`` are plan endpoints (kind, node, ifname, addresses); ``*_netns`` the node's
    namespace path, None for the host's (host and bridge endpoints).
    """
    alias = alias_for(lab)
    ka = kernel(a_netns)
    try:
        ka.veth_pair(a["ifname"], b["ifname"], alias=alias, mtu=mtu, peer_netns_path=b_netns or HOST_NETNS)
        try:
            kb = kernel(b_netns)
            try:
                _configure(kb, b)
            finally:
                kb.close()
            _configure(ka, a)
        except BaseException:
            with contextlib.suppress(KernelError):
                ka.link_delete(a["ifname"], alias=alias)
            raise
    finally:
        ka.close()


def _configure(k: LabKernelOps, end: dict[str, Any]) -> None:
    if end["kind"] == "bridge":
        k.link_set(end["ifname"], master=end["node"])
    for cidr in end["addresses"]:
        k.addr_add(end["ifname"], cidr)
    k.link_set(end["ifname"], up=True)


def remove_link(lab: str, ifname: str, netns: str | None) -> None:
    """Delete end ``ifname`` (the peer goes with it); a namespace or link already gone is fine."""
    try:
        k = kernel(netns)
    except (KernelError, OSError):
        return                                       # the node's namespace is gone: so is the link
    try:
        with contextlib.suppress(LinkNotFound):
            k.link_delete(ifname, alias=alias_for(lab))
    finally:
        k.close()


def interfaces(netns: str | None) -> list[dict[str, Any]]:
    """Name, kind, MAC, MTU, state and addresses of every interface but lo, from the kernel."""
    k = kernel(netns)
    try:
        out = []
        for link in k.links():
            if link["name"] == "lo":
                continue
            out.append({"name": link["name"], "kind": link["kind"], "mac": link["mac"], "mtu": link["mtu"],
                        "up": link["up"], "master": link["master"], "addresses": k.addrs(link["name"])})
        return sorted(out, key=lambda i: str(i["name"]))
    finally:
        k.close()
