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
import errno
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drivers.errors import KernelError, LinkExists, LinkNotFound

if TYPE_CHECKING:
    from drivers import rtbatch
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
    """``make_bridge`` for each name: one dump of the host's links, every missing bridge made up
    in one batch of requests, then marked in a second (drivers/rtbatch.py); per name, whether we
    made it, or the error (nothing left of that one)."""
    from drivers import rtbatch

    out: list[bool | KernelError] = [False] * len(names)
    with rtbatch.LinkBatch() as nl:
        found = {link.name: link for link in nl.dump()}
        missing = []
        for index, name in enumerate(names):
            link = found.get(name)
            if link is None:
                missing.append(index)
            elif link.alias == alias_for(lab):
                out[index] = True
            elif link.kind != "bridge":
                out[index] = KernelError(f"bridge {name}: a {link.kind or 'link'} of that name exists")
        made = []
        for index, code in zip(missing, nl.run([rtbatch.bridge(names[i], mtu=BRIDGE_MTU) for i in missing]),
                               strict=True):
            if code:
                out[index] = rtbatch.kernel_error(f"create bridge {names[index]}", code)
            else:
                made.append(index)
        unmarked = []
        for index, code in zip(made, nl.run([rtbatch.set_link(name=names[i], alias=alias_for(lab)) for i in made]),
                               strict=True):
            out[index] = True if not code else rtbatch.kernel_error(f"mark {names[index]}", code)
            if code:
                unmarked.append(rtbatch.delete(name=names[index]))
        nl.run(unmarked)
    return out


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

    Each pair is one RTM_NEWLINK with both ends born in their namespaces (no move, no socket per
    namespace), all of them sent in batches from one socket (drivers/rtbatch.py: no pyroute2
    request per link); an end in the host's namespace (a bridge port) is born enslaved and up;
    the peer of two bridge ports is enslaved, marked with the lab's alias and brought up in a
    second batch; the ends in each node are addressed and brought up from inside it with ioctls,
    one thread per node. This replaces two pyroute2 handles and six requests per link (issue 10
    item 5).
    """
    from drivers import rtbatch
    from runtime import batch

    errors: list[BaseException | None] = [None] * len(new)
    alias = alias_for(lab)

    def ends(link: NewLink) -> tuple[tuple[dict[str, Any], str | None], tuple[dict[str, Any], str | None]]:
        """(main, peer): the main end is a bridge port when there is one."""
        main, peer = (link.b, link.b_netns), (link.a, link.a_netns)
        if link.a["kind"] == "bridge" or link.b["kind"] != "bridge":
            main, peer = peer, main
        return main, peer

    with rtbatch.LinkBatch() as nl:
        masters = {link.name: link.index for link in nl.dump() if link.kind == "bridge"}

        def master_of(end: dict[str, Any]) -> int:
            if end["kind"] != "bridge":
                return 0
            if end["node"] not in masters:
                raise LinkNotFound(f"bridge {end['node']}: no such bridge", errno.ENODEV)
            return masters[end["node"]]

        pairs, sent = [], []
        for index, link in enumerate(new):
            main, peer = ends(link)
            try:
                pairs.append(rtbatch.Veth(main[0]["ifname"], peer[0]["ifname"], main[1] or HOST_NETNS,
                                          peer[1] or HOST_NETNS, link.mtu, master_of(main[0])))
                sent.append(index)
            except KernelError as exc:
                errors[index] = exc
        for index, error in zip(sent, rtbatch.make_veths(nl, pairs), strict=True):
            errors[index] = error
        # Two bridge ports: the peer's master, the mark and up, in one request each.
        second = [i for i in sent if errors[i] is None and ends(new[i])[1][1] is None]
        for index, code in zip(second, nl.run([rtbatch.set_link(name=ends(new[i])[1][0]["ifname"],
                                                                master=master_of(ends(new[i])[1][0]),
                                                                alias=alias, up=True) for i in second]),
                               strict=True):
            if code:
                peer_name = ends(new[index])[1][0]["ifname"]
                errors[index] = rtbatch.kernel_error(f"link {peer_name}", code)
                with contextlib.suppress(KernelError, OSError):     # unmarked: the set failed whole
                    remove_link(lab, peer_name, None, "")
    by_netns: dict[str, list[tuple[int, str, Sequence[str]]]] = {}
    for index, link in enumerate(new):
        if errors[index] is None:
            for end, netns in ((link.a, link.a_netns), (link.b, link.b_netns)):
                if netns is not None:
                    by_netns.setdefault(netns, []).append((index, end["ifname"], end["addresses"]))

    def configure(netns: str) -> None:
        mine = by_netns[netns]
        try:
            batch.configure_ends(netns, [(ifname, addresses) for _, ifname, addresses in mine])
        except (KernelError, OSError) as exc:
            for index, _, _ in mine:
                if errors[index] is None:
                    errors[index] = exc
                    undo.append(index)

    undo: list[int] = []
    batch._parallel(configure, list(by_netns), workers)
    for index in undo:                              # back in this thread for netlink
        link = new[index]
        with contextlib.suppress(KernelError, OSError):
            remove_link(lab, *recorded_end(lab, link.a, link.b, link.a_netns, link.b_netns))
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

    Ends in the host's namespace are checked against one link dump, marked doomed in one batch
    of requests and deleted by one group RTM_DELLINK: one unregister batch, one RCU grace period
    for all, where a delete each costs ~10-20 ms of kernel time (perf-anchors §3), and no
    pyroute2 request per link (drivers/rtbatch.py). Ends inside a node: one by one.
    """
    from drivers import rtbatch
    from drivers.naming import DOOMED_GROUP

    out: list[KernelError | None] = [None] * len(ends)
    with rtbatch.LinkBatch() as nl:
        live = {link.name: link for link in nl.dump()} if any(netns is None for _, netns, _ in ends) else {}
        marks, marked = [], []
        for index, (ifname, netns, alias) in enumerate(ends):
            wanted = alias_for(lab) if alias is None else alias
            if netns is not None:
                try:
                    remove_link(lab, ifname, netns, alias)
                except KernelError as exc:
                    out[index] = exc
                continue
            link = live.get(ifname)
            if link is None:
                continue                                # gone already
            if link.alias not in (wanted, _doomed(lab, ifname)):
                out[index] = LinkExists(f"refusing to delete {ifname}: alias {link.alias!r} is not {wanted!r}",
                                        errno.EEXIST)
                continue
            marks.append(rtbatch.set_link(index=link.index, alias=_doomed(lab, ifname), group=DOOMED_GROUP))
            marked.append(index)
        for index, code in zip(marked, nl.run(marks), strict=True):
            if code and code != errno.ENODEV:
                out[index] = rtbatch.kernel_error(f"mark {ends[index][0]} for deletion", code)
        _reap_doomed(nl)
    return out


def _reap_doomed(nl: rtbatch.LinkBatch) -> None:
    """Delete the host's doomed group with one RTM_DELLINK (Kernel.reap_doomed's rule: when a link
    in the group does not carry a doomed mark, ours go one by one and the stranger stays)."""
    from drivers import rtbatch
    from drivers.naming import DOOMED_ALIAS_PREFIX, DOOMED_GROUP

    in_group = [link for link in nl.dump() if link.group == DOOMED_GROUP]
    if all(link.alias.startswith(DOOMED_ALIAS_PREFIX) for link in in_group):
        requests = [rtbatch.delete_group(DOOMED_GROUP)] if in_group else []
    else:
        requests = [rtbatch.delete(index=link.index) for link in in_group if link.alias.startswith(DOOMED_ALIAS_PREFIX)]
    failed = next((code for code in nl.run(requests) if code and code != errno.ENODEV), 0)
    if failed:
        raise rtbatch.kernel_error("delete doomed links", failed)


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
