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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drivers.errors import KernelError, LinkNotFound

if TYPE_CHECKING:
    from drivers.kernel_api import LabKernelOps, LinkInfo

HOST_NETNS = "/proc/thread-self/ns/net"            # the calling thread's: where the CLI runs
# pyroute2 requests are made from the calling thread only: a handle used from pool threads gets
# an asyncio loop per thread, which outlives the thread and, collected later in the main thread,
# prints "Exception ignored in BaseEventLoop.__del__" on the CLI's stderr. On 2 cores the
# requests gain little from threads anyway (the kernel serialises them on the RTNL lock).
_ONE_THREAD = True
BRIDGE_MTU = 1500


def alias_for(lab: str) -> str:
    return f"cnmkitlab:{lab}"


def kernel(netns: str | None) -> LabKernelOps:
    """A handle on ``netns`` (None: the host's, where the CLI runs); pyroute2 loads on first use."""
    from drivers.kernel import Kernel

    return Kernel.for_netns(netns) if netns else Kernel()


def make_bridge(lab: str, name: str) -> bool:
    """Make bridge ``name`` (up); False when a bridge not ours was there already and is used."""
    made = make_bridges(lab, [name])[0]
    if isinstance(made, BaseException):
        raise made
    return made


def make_bridges(lab: str, names: Sequence[str]) -> list[bool | KernelError]:
    """``make_bridge`` for each name: one dump of the host's links, then each missing bridge made
    up and marked (two requests) from one handle; per name, whether we made it, or the error
    (nothing left of that one)."""
    k = kernel(None)
    out: list[bool | KernelError] = [False] * len(names)
    try:
        found = {link["name"]: link for link in k.links()}
        missing = []
        for index, name in enumerate(names):
            link = found.get(name)
            if link is None:
                missing.append(index)
            elif link["alias"] == alias_for(lab):
                out[index] = True
            elif link["kind"] != "bridge":
                out[index] = KernelError(f"bridge {name}: a {link['kind'] or 'link'} of that name exists")

        def make(index: int) -> None:
            try:
                k.bridge_add(names[index], alias=alias_for(lab), mtu=BRIDGE_MTU)
                out[index] = True
            except KernelError as exc:
                out[index] = exc

        for index in missing:                       # one thread: see _ONE_THREAD
            make(index)
        return out
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


@dataclass(frozen=True)
class NewLink:
    """One link for ``make_links``: plan endpoints and the node namespaces (None: the host's)."""

    a: dict[str, Any]
    b: dict[str, Any]
    a_netns: str | None
    b_netns: str | None
    mtu: int | None


def batchable(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether ``make_links`` can make the link: node and bridge ends with at most one IPv4
    address each (set by ioctl, which replaces rather than adds; IPv6 wants netlink's NODAD).
    ``host:IFACE`` ends keep the one-by-one path, which marks the host's end."""
    for end in (a, b):
        if end["kind"] == "host" or len(end["addresses"]) > 1 or any(":" in x for x in end["addresses"]):
            return False
    return True


def make_links(lab: str, new: Sequence[NewLink], workers: int = 8) -> list[BaseException | None]:
    """Every link of ``new`` at once; per link, None or the error (a failed link leaves nothing).

    Each pair is one RTM_NEWLINK from one host-side handle with both ends born in their
    namespaces (no move, no socket per namespace); every end in the host's namespace (a bridge
    port) is enslaved, marked with the lab's alias and brought up in one request; the ends in
    each node are addressed and brought up from inside it with ioctls, one thread per node.
    This replaces two pyroute2 handles and six requests per link (issue 10 item 5).
    """
    from drivers.kernel import Kernel
    from runtime import batch

    errors: list[BaseException | None] = [None] * len(new)
    alias = alias_for(lab)

    def pair(index: int) -> None:
        link = new[index]
        # The main end is a bridge port when there is one: born enslaved and up in the request.
        main, peer = (link.b, link.b_netns), (link.a, link.a_netns)
        if link.a["kind"] == "bridge" or link.b["kind"] != "bridge":
            main, peer = peer, main
        try:
            host.veth_link(main[0]["ifname"], peer[0]["ifname"], netns_path=main[1] or HOST_NETNS,
                           peer_netns_path=peer[1] or HOST_NETNS, mtu=link.mtu,
                           master=main[0]["node"] if main[0]["kind"] == "bridge" else None)
        except (KernelError, OSError) as exc:
            errors[index] = exc
            return
        if peer[1] is not None:
            return                                  # the peer is a node's, addressed and up below
        try:                                        # two bridge ports: the peer's master, up, mark
            host.link_set(peer[0]["ifname"], master=peer[0]["node"], alias=alias, up=True)
        except (KernelError, OSError) as exc:
            errors[index] = exc
            with contextlib.suppress(KernelError, OSError):     # unmarked: the set failed whole
                remove_link(lab, peer[0]["ifname"], None, "")

    def _undo(link: NewLink) -> None:
        with contextlib.suppress(KernelError, OSError):
            remove_link(lab, *recorded_end(lab, link.a, link.b, link.a_netns, link.b_netns))

    with Kernel() as host:                          # one thread: see _ONE_THREAD
        for index in range(len(new)):
            pair(index)
    by_netns: dict[str, list[tuple[int, str, Sequence[str]]]] = {}
    for index, link in enumerate(new):
        if errors[index] is None:
            for end, netns in ((link.a, link.a_netns), (link.b, link.b_netns)):
                if netns is not None:
                    by_netns.setdefault(netns, []).append((index, end["ifname"], end["addresses"]))

    def configure(netns: str) -> None:
        ends = by_netns[netns]
        try:
            batch.configure_ends(netns, [(ifname, addresses) for _, ifname, addresses in ends])
        except (KernelError, OSError) as exc:
            for index, _, _ in ends:
                if errors[index] is None:
                    errors[index] = exc
                    undo.append(index)

    undo: list[int] = []
    batch._parallel(configure, list(by_netns), workers)
    for index in undo:                              # back in this thread for netlink
        _undo(new[index])
    return errors


def recorded_end(lab: str, a: dict[str, Any], b: dict[str, Any], a_netns: str | None,
                 b_netns: str | None) -> tuple[str, str | None, str]:
    """The end a ``make_links`` link is deleted by (ifname, netns, alias it carries): an end in a
    node if there is one (unmarked, in a namespace that is the lab's own), else the peer of two
    bridge ports (the one ``make_links`` marked with the lab's alias)."""
    for end, netns in ((a, a_netns), (b, b_netns)):
        if netns is not None:
            return end["ifname"], netns, ""
    return b["ifname"], None, alias_for(lab)


def _configure(k: LabKernelOps, end: dict[str, Any]) -> None:
    if end["kind"] == "bridge":
        k.link_set(end["ifname"], master=end["node"])
    for cidr in end["addresses"]:
        k.addr_add(end["ifname"], cidr)
    k.link_set(end["ifname"], up=True)


def remove_links(lab: str, ends: Sequence[tuple[str, str | None, str | None]]) -> list[KernelError | None]:
    """``remove_link`` for each (ifname, netns, alias); per link None or the error.

    Ends in the host's namespace are marked doomed (one cheap RTM_NEWLINK each) and deleted by
    one group RTM_DELLINK: one unregister batch, one RCU grace period for all, where a delete
    each costs ~10-20 ms of kernel time (perf-anchors §3). Ends inside a node: one by one.
    """
    from drivers.kernel import Kernel

    out: list[KernelError | None] = []
    host = Kernel()
    try:
        out = [None] * len(ends)

        def remove(index: int) -> None:
            ifname, netns, alias = ends[index]
            wanted = alias_for(lab) if alias is None else alias
            try:
                if netns is None:
                    host.link_doom(ifname, alias=wanted, doomed_alias=_doomed(lab, ifname))
                else:
                    remove_link(lab, ifname, netns, alias)
            except KernelError as exc:
                out[index] = exc

        for index in range(len(ends)):              # one thread: see _ONE_THREAD
            remove(index)
        host.reap_doomed()
        return out
    finally:
        host.close()


def host_links() -> list[LinkInfo]:
    """The links of the host's namespace (one dump)."""
    k = kernel(None)
    try:
        return k.links()
    finally:
        k.close()


def _doomed(lab: str, ifname: str) -> str:
    from drivers.naming import DOOMED_ALIAS_PREFIX

    return f"{DOOMED_ALIAS_PREFIX}lab:{lab}:{ifname}"


def remove_bridges(lab: str, names: Sequence[str]) -> list[KernelError | None]:
    """``remove_bridge`` for each name, all deleted in one group RTM_DELLINK (see remove_links);
    per bridge None or the error."""
    return remove_links(lab, [(name, None, None) for name in names]) if names else []


def remove_link(lab: str, ifname: str, netns: str | None, alias: str | None = None) -> None:
    """Delete end ``ifname`` (the peer goes with it) if it carries ``alias`` (default: the lab's;
    "" for an unmarked end inside one of the lab's nodes); a namespace or link already gone is fine."""
    try:
        k = kernel(netns)
    except (KernelError, OSError):
        return                                       # the node's namespace is gone: so is the link
    try:
        with contextlib.suppress(LinkNotFound):
            k.link_delete(ifname, alias=alias_for(lab) if alias is None else alias)
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
