"""The one door to netlink: cnmkit's kernel verbs over pyroute2.

Only this module imports pyroute2 (ruff bans it elsewhere), so the library's quirks, its
exceptions and its 0.9 threading model stay here; drivers speak ``ensure_bridge`` /
``ensure_veth`` and get ``LinkNotFound`` / ``LinkExists`` / ``KernelError``.

Threads and namespaces. pyroute2 0.9's sync ``IPRoute`` keeps its socket, event loop and
transport in a ``threading.local``: one object shared by threads either opens a second socket
per thread (in whatever netns that thread happens to be in) or, when built on a ``fileno``, fails
with ENOTSOCK outside the creating thread. So a ``Kernel`` keeps one long-lived
``IPRoute(groups=0)`` per thread, opened lazily, and each is opened *in the Kernel's namespace*:
the thread setns()es into it, opens the netlink socket, and setns()es back. That costs ~1.4 ms
once per thread, against ~17 ms for ``IPRoute(netns=...)``, which forks a helper on every open
(perf-anchors §3, "pr-setns"). A Kernel built without a path is bound to the netns of the
thread that built it, so a worker thread that wanders elsewhere still talks to the right one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import (  # type: ignore[import-untyped]
    NetlinkDumpInterrupted,
    NetlinkError,
)

from drivers import rtbatch
from drivers.errors import KernelError, KernelFeatureMissing, LinkExists, LinkNotFound, for_errno
from drivers.kernel_api import LinkInfo
from drivers.naming import DOOMED_ALIAS_PREFIX, DOOMED_GROUP
from drivers.rtbatch import Link, LinkBatch

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
IFF_UP = 0x1
IFA_F_NODAD = 0x02
_DUMP_RETRIES = 5

T = TypeVar("T")

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise KernelError(f"setns: {os.strerror(err)}", err)


@contextlib.contextmanager
def entered_netns(path: str) -> Iterator[None]:
    """Run the body with the *current thread* inside the netns at ``path``, then come back.

    Python 3.11 has no os.setns, hence ctypes. Only this thread moves; processes it spawns
    meanwhile (iptables) start in the namespace too, which is how tests run the firewall there.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        os.close(home)
        raise KernelError(f"netns {path}: {exc.strerror}", exc.errno) from exc
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def _same_netns(fd: int) -> bool:
    here = os.stat("/proc/thread-self/ns/net")
    there = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


class Kernel:
    """Netlink verbs bound to one network namespace; safe to share between threads."""

    def __init__(self, netns_path: str | None = None) -> None:
        # An fd (not a path) pins the namespace even if its bind mount is removed meanwhile.
        self._ns_fd = os.open(netns_path or "/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.netns_path = netns_path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[Any] = []
        self._closed = False
        self._masters: dict[str, int] = {}          # bridge name -> ifindex (_master_index)

    @classmethod
    def for_netns(cls, path: str) -> Kernel:
        """A Kernel whose sockets live in the netns at ``path`` (/var/run/netns/X, /proc/PID/ns/net)."""
        return cls(path)

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            opened, self._opened = self._opened, []
        for ipr in opened:
            with contextlib.suppress(Exception):
                ipr.close()
        with contextlib.suppress(OSError):
            os.close(self._ns_fd)

    # -- plumbing ---------------------------------------------------------------------------

    def _ipr(self) -> Any:
        ipr = getattr(self._local, "ipr", None)
        if ipr is not None:
            return ipr
        self._check_open()
        if _same_netns(self._ns_fd):
            ipr = IPRoute(groups=0)
        else:
            ipr = IPRoute(fileno=self._netlink_socket().detach(), groups=0)
        self._local.ipr = ipr
        with self._lock:
            self._opened.append(ipr)
        return ipr

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one pyroute2 request, turning its exceptions into ours (and retrying dumps)."""
        try:
            for attempt in range(_DUMP_RETRIES):
                try:
                    return fn(*args, **kwargs)
                except NetlinkDumpInterrupted:
                    if attempt == _DUMP_RETRIES - 1:
                        raise KernelError(f"{what}: dump interrupted {_DUMP_RETRIES} times") from None
                except NetlinkError as exc:
                    raise _translate(what, exc.code, str(exc)) from None
                except OSError as exc:
                    raise _translate(what, exc.errno, exc.strerror or str(exc)) from None
            raise AssertionError("unreachable")
        finally:
            self._drop_strays()

    def _drop_strays(self) -> None:
        """Discard the replies no request is waiting for, so they cannot pile up.

        pyroute2 0.9 sends every ``get`` (``link get``, and the name lookup behind
        ``link set ifname=...``) with NLM_F_ACK: the kernel answers with the object *and then*
        an ACK. The request returns on the object and frees its sequence number; the ACK, read
        later, has no owner and lands in the socket's root queue (tag 0), which only a
        multicast listener would read. Our sockets join no group (``groups=0``), so everything
        there is such a stray: about 6 KB per Join+DeleteEndpoint, forever (issue 6).
        """
        ipr = getattr(self._local, "ipr", None)
        queue = None if ipr is None else stray_queue(ipr)
        if queue is None:
            return
        while not queue.empty():
            queue.get_nowait()
            queue.task_done()

    def _check_open(self) -> None:
        with self._lock:
            if self._closed:
                raise KernelError("kernel handle is closed", errno.EBADF)

    def _raw(self) -> rtbatch.LinkBatch:
        """This thread's hand-packed rtnetlink handle in this Kernel's netns (drivers/rtbatch.py).

        The hot requests of an endpoint's life (the veth's create and mark, the doom mark, the
        reaper's delete by name) go through it: pyroute2 costs ~0.5 ms of Python per request
        (message objects, an event loop turn, a decode of every attribute of the reply) where the
        kernel's part is a fraction of that, and what the reaper spends holding the GIL the
        request being answered waits for.
        """
        nl = getattr(self._local, "raw", None)
        if nl is not None:
            return nl
        self._check_open()
        try:
            nl = rtbatch.LinkBatch(self._netlink_socket())
        except OSError as exc:
            raise KernelError(f"netlink socket: {exc.strerror or exc}", exc.errno or errno.EIO) from exc
        self._local.raw = nl
        with self._lock:
            self._opened.append(nl)
        return nl

    def _raw_run(self, request: rtbatch.Request) -> None:
        """One hand-packed request, acked; its failure raised as ours (LinkNotFound, LinkExists, ...)."""
        try:
            (code,) = self._raw().run([request])
        except OSError as exc:
            raise KernelError(f"{request.what}: {exc.strerror or exc}", exc.errno or errno.EIO) from exc
        if code:
            raise rtbatch.kernel_error(request.what, code)

    def _raw_get(self, name: str) -> rtbatch.Link | None:
        try:
            return self._raw().get(name)
        except OSError as exc:
            raise KernelError(f"link {name}: {exc.strerror or exc}", exc.errno or errno.EIO) from exc

    def _index(self, name: str) -> int:
        msgs = self._call(f"link {name}", self._ipr().link, "get", ifname=name)
        return int(msgs[0]["index"])

    def _names_by_index(self) -> dict[int, str]:
        return {int(m["index"]): m.get("ifname") for m in self._dump_links()}

    def _netlink_socket(self) -> socket.socket:
        """A NETLINK_ROUTE socket in this Kernel's netns (made there, used from any thread's)."""
        if _same_netns(self._ns_fd):
            return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(self._ns_fd)
            try:
                return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
            finally:
                _setns(home)
        finally:
            os.close(home)

    def scan_links(self, group: int | None = None) -> list[Link]:
        """Index, name, group and alias of every link (of ``group`` only, when given): a dump
        without pyroute2's full decode (drivers/rtbatch.py; milliseconds where ``_dump_links``
        takes a second at 2,000 links, holding the GIL)."""
        try:
            with LinkBatch(self._netlink_socket()) as nl:
                return nl.dump(group)
        except OSError as exc:
            raise KernelError(f"link dump: {exc.strerror or exc}", exc.errno or errno.EIO) from exc

    def _dump_links(self) -> list[Any]:
        return list(self._call("link dump", lambda: list(self._ipr().link("dump"))))

    # -- reading ----------------------------------------------------------------------------

    def link_get(self, name: str) -> LinkInfo | None:
        """The link called ``name`` as a plain dict, or None when there is none."""
        try:
            msg = self._call(f"link {name}", self._ipr().link, "get", ifname=name)[0]
        except LinkNotFound:
            return None
        master = msg.get("master")
        master_name = None
        if master:
            with contextlib.suppress(LinkNotFound):
                master_name = self._call("link", self._ipr().link, "get", index=master)[0].get("ifname")
        return _link_info(msg, master_name)

    def link_exists(self, name: str) -> bool:
        """Whether a link called ``name`` is here: one hand-packed request (a Join asks it)."""
        return self._raw_get(name) is not None

    def links(self) -> list[LinkInfo]:
        msgs = self._dump_links()
        names = {int(m["index"]): m.get("ifname") for m in msgs}
        return [_link_info(m, names.get(m.get("master") or -1)) for m in msgs]

    def links_owned(self, alias_prefix: str) -> list[tuple[str, str]]:
        """(name, alias) of every link whose ifalias starts with ``alias_prefix``: the GC's view."""
        out = []
        for msg in self._dump_links():
            alias = msg.get("ifalias") or ""
            if alias.startswith(alias_prefix):
                out.append((msg.get("ifname"), alias))
        return out

    def addrs(self, name: str) -> list[str]:
        index = self._index(name)
        msgs = self._call("addr dump", lambda: list(self._ipr().addr("dump", index=index)))
        return [f"{m.get('address')}/{m['prefixlen']}" for m in msgs]

    def link_stats(self, name: str) -> dict[str, int]:
        msg = self._call(f"link {name}", self._ipr().link, "get", ifname=name)[0]
        stats = msg.get("stats64") or msg.get("stats") or {}
        return {k: int(v) for k, v in dict(stats).items() if isinstance(v, int)}

    # -- ensuring ---------------------------------------------------------------------------

    def ensure_bridge(self, name: str, *, alias: str, mtu: int, mac: str | None = None,
                      adopt: bool = False) -> bool:
        """Make bridge ``name`` owned by ``alias`` with ``mtu``; True when it was created now.

        An existing bridge is accepted only if it carries ``alias`` (or carries no alias and
        ``adopt`` is set: the remains of our own create interrupted before the alias was set,
        since the kernel ignores IFLA_IFALIAS on RTM_NEWLINK). Anything else is LinkExists.
        """
        existing = self.link_get(name)
        created = False
        if existing is None:
            spec: dict[str, Any] = {"ifname": name, "kind": "bridge", "mtu": mtu}
            if mac:
                spec["address"] = mac
            try:
                self._call(f"create bridge {name}", self._ipr().link, "add", **spec)
                created = True
            except LinkExists:
                pass
            existing = self.link_get(name)
            if existing is None:
                raise LinkNotFound(f"bridge {name} vanished while being created", errno.ENODEV)
        self._claim(existing, alias, "bridge", adopt or created)
        # Setting the MTU explicitly pins it: otherwise the bridge follows its smallest port.
        self._call(f"configure {name}", self._ipr().link, "set", index=existing["index"],
                   ifalias=alias, mtu=mtu)
        return created

    def bridge_add(self, name: str, *, alias: str, mtu: int) -> None:
        """A new bridge ``name``, up and marked ``alias``: one RTM_NEWLINK (IFF_UP applies on
        create) and the mark, where ``ensure_bridge`` looks first and last (a lab makes hundreds;
        the caller has listed the links once). A name taken raises LinkExists; a failed mark
        deletes the bridge again."""
        self._call(f"create bridge {name}", self._ipr().link, "add", ifname=name, kind="bridge", mtu=mtu,
                   flags=IFF_UP, change=IFF_UP)
        try:
            self._call(f"mark {name}", self._ipr().link, "set", ifname=name, ifalias=alias)
        except KernelError:
            with contextlib.suppress(KernelError):
                self._call(f"delete {name}", self._ipr().link, "del", ifname=name)
            raise

    def ensure_veth(self, host_name: str, peer_name: str, *, alias: str, mtu: int, peer_mac: str | None,
                    master: str, peer_netns_path: str | None = None, adopt: bool = True) -> bool:
        """Make a veth pair, host end enslaved to ``master`` and up; True when created now.

        With ``peer_netns_path`` the peer is born inside that netns (IFLA_NET_NS_FD on the peer):
        no move afterwards, which saves the ~18 ms RCU wait of a netns move. An existing host
        end carrying ``alias`` is reused (a retried Join, a restarted daemon) and re-attached.
        """
        # Create first and look only when a name is taken (a retried Join, a restarted daemon),
        # with the bridge's index remembered: the common case costs two netlink requests less.
        try:
            return self._add_veth(host_name, peer_name, alias=alias, mtu=mtu, peer_mac=peer_mac,
                                  master=master, peer_netns_path=peer_netns_path)
        except LinkExists:
            existing = self.link_get(host_name)
            if existing is None:
                raise                                # the peer's name is what is taken
        master_index = self._index(master)
        self._claim(existing, alias, "veth", adopt)
        self._call(f"configure {host_name}", self._ipr().link, "set", index=existing["index"],
                   ifalias=alias, mtu=mtu, master=master_index, state="up")
        peer = None if peer_netns_path else self.link_get(peer_name)
        if peer is not None and peer["kind"] == "veth":
            extra = {"address": peer_mac} if peer_mac else {}
            self._call(f"configure {peer_name}", self._ipr().link, "set", index=peer["index"],
                       mtu=mtu, **extra)
        return False

    def _master_index(self, name: str, *, fresh: bool = False) -> int:
        """The ifindex of bridge ``name``, remembered: indexes are not reused soon (cyclic), so a
        stale one (the bridge re-made) fails (EINVAL: no such master) and the caller looks again."""
        index = None if fresh else self._masters.get(name)
        if index is None:
            index = self._index(name)
            self._masters[name] = index
        return index

    def _add_veth(self, host_name: str, peer_name: str, *, alias: str, mtu: int, peer_mac: str | None,
                  master: str, peer_netns_path: str | None) -> bool:
        cached = master in self._masters
        try:
            return self._add_veth_at(host_name, peer_name, alias=alias, mtu=mtu, peer_mac=peer_mac,
                                     master_index=self._master_index(master), peer_netns_path=peer_netns_path)
        except KernelError as exc:
            # A remembered index of a bridge re-made since: the kernel says EINVAL (no such master).
            if not cached or isinstance(exc, LinkExists) or exc.errno not in (errno.EINVAL, errno.ENODEV):
                raise
            return self._add_veth_at(host_name, peer_name, alias=alias, mtu=mtu, peer_mac=peer_mac,
                                     master_index=self._master_index(master, fresh=True),
                                     peer_netns_path=peer_netns_path)

    def _add_veth_at(self, host_name: str, peer_name: str, *, alias: str, mtu: int, peer_mac: str | None,
                     master_index: int, peer_netns_path: str | None) -> bool:
        self._veth_create(host_name, peer_name, alias=alias, peer_netns_path=peer_netns_path, mtu=mtu,
                          master=master_index, peer_mac=peer_mac or "")
        return True

    def _veth_create(self, name: str, peer: str, *, alias: str, peer_netns_path: str | None,
                     mtu: int | None = None, master: int = 0, peer_mac: str = "") -> None:
        """One RTM_NEWLINK for a veth pair (the peer born in ``peer_netns_path`` when given; with
        ``master``, ``name`` born enslaved to that ifindex and up), then the ownership mark; a pair
        that cannot be marked is deleted again, so a failure leaves nothing. Every veth cnmkit
        makes (endpoints, overlay transits, lab links) goes through here, hand-packed (``_raw``)."""
        ns_fd = None
        if peer_netns_path:
            try:
                ns_fd = os.open(peer_netns_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise KernelError(f"netns {peer_netns_path}: {exc.strerror}", exc.errno) from exc
        try:
            self._raw_run(rtbatch.veth(name, peer, peer_netns_fd=ns_fd, mtu=mtu, master=master, peer_mac=peer_mac))
        finally:
            if ns_fd is not None:
                os.close(ns_fd)
        try:
            self._raw_run(rtbatch.set_link(name=name, alias=alias))
        except KernelError:
            with contextlib.suppress(KernelError):
                self._raw_run(rtbatch.delete(name=name))
            raise

    def veth_link(self, name: str, peer_name: str, *, netns_path: str, peer_netns_path: str,
                  mtu: int | None = None, master: str | None = None) -> None:
        """A point-to-point veth pair between two other namespaces, ``name`` in ``netns_path`` and
        ``peer_name`` in ``peer_netns_path``.

        Both ends are born in place (IFLA_NET_NS_FD on each), so a lab link costs one netlink
        request from this handle's socket, no netns move (perf-anchors §3) and no socket inside
        either namespace. They are born down: the kernel ignores IFF_UP in the peer's ifinfomsg,
        so the namespaces' owner brings both up from inside. With ``master`` (a bridge in
        ``netns_path``'s namespace, which must be this handle's), ``name`` is born enslaved to it
        and up, in the same request: a lab's bridge port costs nothing more.
        """
        fds: list[int] = []
        try:
            for path in (netns_path, peer_netns_path):
                try:
                    fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
                except OSError as exc:
                    raise KernelError(f"netns {path}: {exc.strerror}", exc.errno) from exc
            peer: dict[str, Any] = {"ifname": peer_name, "net_ns_fd": fds[1]}
            extra: dict[str, Any] = {"mtu": mtu} if mtu else {}
            if mtu:
                peer["mtu"] = mtu
            if master:
                extra.update(master=self._master_index(master), flags=IFF_UP, change=IFF_UP)
            self._call(f"create veth {name}", self._ipr().link, "add", ifname=name, kind="veth",
                       net_ns_fd=fds[0], peer=peer, **extra)
        finally:
            for fd in fds:
                os.close(fd)

    def _claim(self, link: LinkInfo, alias: str, kind: str, adopt: bool) -> None:
        if link["alias"] == alias:
            return
        if not link["alias"] and adopt and link["kind"] == kind:
            return
        raise LinkExists(f"link {link['name']} exists and is not ours "
                         f"(alias {link['alias']!r}, kind {link['kind']!r})", errno.EEXIST)

    def link_delete(self, name: str, *, alias: str) -> bool:
        """Delete ``name`` only if it carries ``alias``; True if deleted, False if already gone."""
        link = self._raw_get(name)
        if link is None:
            return False
        if link.alias != alias:
            raise LinkExists(f"refusing to delete {name}: alias {link.alias!r} is not {alias!r}", errno.EEXIST)
        try:
            self._raw_run(rtbatch.delete(index=link.index))
        except LinkNotFound:
            return False
        return True

    def vlan_add(self, name: str, parent: str, vid: int, *, alias: str, mtu: int) -> None:
        """Create the 802.1Q sub-interface ``name`` (VID ``vid`` on ``parent``), marked ``alias``, up.

        A name already taken raises LinkExists (the caller decides whether the link there may be
        used). A kernel without 802.1Q answers EOPNOTSUPP to ``type vlan``; so does a parent that
        cannot carry VLANs (loopback). When /proc/net/vlan is absent the 8021q code is not in
        the kernel at all (it would have been autoloaded by this very request): that becomes
        KernelFeatureMissing, one error naming the feature rather than "Operation not supported".
        """
        parent_index = self._index(parent)
        try:
            self._call(f"create vlan {name}", self._ipr().link, "add", ifname=name, kind="vlan",
                       link=parent_index, vlan_id=vid, mtu=mtu)
        except KernelError as exc:
            if exc.errno == errno.EOPNOTSUPP and not os.path.exists("/proc/net/vlan"):
                raise KernelFeatureMissing(
                    "8021q", f"cannot create VLAN sub-interface {name}: this kernel has no 802.1Q VLAN "
                    "support (the 8021q module, CONFIG_VLAN_8021Q); load it (modprobe 8021q) or use a "
                    "kernel that has it") from None
            if exc.errno == errno.EOPNOTSUPP:
                raise KernelError(f"cannot create VLAN sub-interface {name}: {parent} cannot carry "
                                  "VLANs", exc.errno) from None
            raise
        self._mark_up(name, alias)

    def vlan_info(self, name: str) -> tuple[str, int] | None:
        """(parent name, VID) of the 802.1Q link ``name``; None when it is missing or no VLAN."""
        try:
            msg = self._call(f"link {name}", self._ipr().link, "get", ifname=name)[0]
        except LinkNotFound:
            return None
        if msg.get(("linkinfo", "kind")) != "vlan":
            return None
        vid = msg.get(("linkinfo", "data", "IFLA_VLAN_ID"))
        parent = None
        if msg.get("link"):
            with contextlib.suppress(LinkNotFound):
                parent = self._call("link", self._ipr().link, "get", index=msg.get("link"))[0].get("ifname")
        return (str(parent or ""), int(vid or 0))

    def enslave(self, name: str, master: str) -> None:
        """Make ``name`` a port of bridge ``master`` and set it up (an uplink joining its bridge)."""
        master_index = self._index(master)
        self._call(f"enslave {name}", self._ipr().link, "set", ifname=name, master=master_index,
                   state="up")

    def ensure_macvlan(self, name: str, parent: str, *, alias: str, mtu: int, mac: str | None,
                       netns_path: str | None = None) -> bool:
        """A macvlan (bridge mode) on ``parent``, marked ``alias``; True when created now.

        Made in this netns, marked, then moved into ``netns_path`` when one is given (the
        kernel ignores IFLA_IFALIAS on RTM_NEWLINK, so the mark must be set before the move).
        An existing link carrying ``alias`` is reused; any other is LinkExists.
        """
        existing = self.link_get(name)
        if existing is not None:
            self._claim(existing, alias, "macvlan", False)
            return False
        spec: dict[str, Any] = {"ifname": name, "kind": "macvlan", "link": self._index(parent),
                                "macvlan_mode": "bridge", "mtu": mtu}
        if mac:
            spec["address"] = mac
        self._call(f"create macvlan {name}", self._ipr().link, "add", **spec)
        try:
            self._call(f"mark {name}", self._ipr().link, "set", ifname=name, ifalias=alias)
            if netns_path:
                try:
                    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise KernelError(f"netns {netns_path}: {exc.strerror}", exc.errno) from exc
                try:
                    self._call(f"move {name}", self._ipr().link, "set", ifname=name, net_ns_fd=fd)
                finally:
                    os.close(fd)
        except KernelError:
            with contextlib.suppress(KernelError):
                self._call(f"delete {name}", self._ipr().link, "del", ifname=name)
            raise
        return True

    def _mark_up(self, name: str, alias: str) -> None:
        """Set the ownership mark and bring ``name`` up; a link that cannot be marked is removed."""
        try:
            self._call(f"mark {name}", self._ipr().link, "set", ifname=name, ifalias=alias, state="up")
        except KernelError:
            with contextlib.suppress(KernelError):
                self._call(f"delete {name}", self._ipr().link, "del", ifname=name)
            raise

    def link_doom(self, name: str, *, alias: str, doomed_alias: str, down: bool = False) -> bool:
        """Mark ``name`` (carrying ``alias``) for the reaper: alias ``doomed_alias``, group DOOMED_GROUP.

        One RTM_NEWLINK (~1 ms), against ~20 ms for the delete itself (drivers/reaper.py). True
        when the link is (now or already) marked, False when it is gone; another alias raises.
        ``down`` also takes the link down in the same message: a doomed bridge then routes and
        answers nothing (its connected and local routes go with IFF_UP) while it awaits the reaper.
        """
        link = self._raw_get(name)
        if link is None:
            return False
        if link.alias not in (alias, doomed_alias):
            raise LinkExists(f"refusing to delete {name}: alias {link.alias!r} is not {alias!r}", errno.EEXIST)
        if link.alias == doomed_alias and link.group == DOOMED_GROUP and not (down and link.flags & IFF_UP):
            return True                          # marked already (Leave did, DeleteEndpoint comes after)
        try:
            self._raw_run(rtbatch.set_link(index=link.index, alias=doomed_alias, group=DOOMED_GROUP, down=down))
        except LinkNotFound:
            return False
        return True

    def reap_doomed(self) -> None:
        """Delete every link in DOOMED_GROUP with one RTM_DELLINK: one unregister batch for all.

        A group is only a number anybody may set, so the group is looked at first (one dump, off
        the request path, read by ``scan_links``: the GIL is not held for a full decode of every
        link, which stalled every request at 1,000 endpoints): when a link in it does not carry
        our doomed mark, ours are deleted one by one by index instead, and the stranger is left alone.
        """
        in_group = self.scan_links(DOOMED_GROUP)
        if not in_group:
            return
        if all(m.alias.startswith(DOOMED_ALIAS_PREFIX) for m in in_group):
            with contextlib.suppress(LinkNotFound):
                self._call("delete doomed links", self._ipr().link, "del", group=DOOMED_GROUP)
            return
        for m in in_group:
            if m.alias.startswith(DOOMED_ALIAS_PREFIX):
                with contextlib.suppress(LinkNotFound):
                    self._call(f"delete {m.name}", self._ipr().link, "del", index=m.index)

    def addr_ensure(self, name: str, cidr: str) -> None:
        """Add ``cidr`` (``10.0.0.1/24``) to ``name``; already present is fine."""
        with contextlib.suppress(LinkExists):
            self.addr_add(name, cidr)

    # -- plain verbs (the runtime's, inside a container netns) ------------------------------

    def set_up(self, name: str) -> None:
        self._call(f"up {name}", self._ipr().link, "set", ifname=name, state="up")

    def veth_pair(self, name: str, peer_name: str, *, alias: str, mtu: int | None = None,
                  peer_netns_path: str | None = None) -> None:
        """A lab's point-to-point link: ``name`` here, ``peer_name`` born in ``peer_netns_path``
        (here when None), both down; ``name`` carries ``alias`` so only its owner deletes it.

        The pair is made in one RTM_NEWLINK (no move afterwards), and deleted again if marking
        it fails, so a failure leaves nothing.
        """
        self._veth_create(name, peer_name, alias=alias, peer_netns_path=peer_netns_path, mtu=mtu)

    def link_set(self, name: str, *, mac: str | None = None, mtu: int | None = None,
                 up: bool | None = None, master: str | None = None, alias: str | None = None) -> None:
        spec: dict[str, Any] = {}
        if alias is not None:
            spec["ifalias"] = alias
        if master is not None:
            spec["master"] = self._index(master)
        if mac is not None:
            spec["address"] = mac
        if mtu is not None:
            spec["mtu"] = mtu
        if up is not None:
            spec["state"] = "up" if up else "down"
        if spec:
            self._call(f"set {name}", self._ipr().link, "set", ifname=name, **spec)

    def link_rename(self, name: str, new_name: str) -> None:
        """Rename a link (it must be down, as the kernel requires)."""
        index = self._index(name)
        self._call(f"rename {name}", self._ipr().link, "set", index=index, ifname=new_name)

    def addr_add(self, name: str, cidr: str) -> None:
        """Add ``cidr``; an address already there raises LinkExists (EEXIST), as netlink does.

        IPv6 addresses are added with IFA_F_NODAD, as libnetwork does for containers and bridge
        gateways: with duplicate address detection the address stays "tentative" for about a
        second and a half, so a container's first packets (``ping -6`` right after start) and a
        gateway's first replies are dropped. The addresses come from IPAM, which already
        guarantees they are unique on the network, so DAD has nothing left to detect.
        """
        address, _, plen = cidr.partition("/")
        if not plen:
            raise KernelError(f"address {cidr!r} has no prefix length", errno.EINVAL)
        index = self._index(name)
        extra: dict[str, Any] = {"flags": IFA_F_NODAD} if ":" in address else {}
        self._call(f"addr {cidr} on {name}", self._ipr().addr, "add", index=index, address=address,
                   prefixlen=int(plen), **extra)

    def route_add(self, dst: str = "default", *, gateway: str | None = None, oif: str | None = None) -> None:
        """Add a route: ``route_add(gateway="10.0.0.1")`` is the default route via 10.0.0.1."""
        self._route("add", dst, gateway, oif)

    def _route(self, verb: str, dst: str, gateway: str | None, oif: str | None) -> None:
        """``ip route VERB DST [via GATEWAY] [dev OIF]``, the family taken from the gateway or DST."""
        spec: dict[str, Any] = {"dst": dst}
        family = _family(gateway or dst)
        if family:
            spec["family"] = family
        if gateway:
            spec["gateway"] = gateway
        if oif:
            spec["oif"] = self._index(oif)
        self._call(f"route {dst}", self._ipr().route, verb, **spec)


def stray_queue(ipr: Any) -> asyncio.Queue[bytes] | None:
    """The calling thread's queue of unclaimed netlink messages on ``ipr`` (None if not open yet).

    pyroute2 internals (0.9: ``asyncore.local.msg_queue.root``); the kernel-tier test asserts it
    is found, so an upgrade that moves it fails there instead of leaking quietly.
    """
    msg_queue = getattr(getattr(getattr(ipr, "asyncore", None), "local", None), "msg_queue", None)
    root = getattr(msg_queue, "root", None)
    return root if isinstance(root, asyncio.Queue) else None


def _family(value: str) -> int | None:
    if ":" in value:
        return socket.AF_INET6
    if "." in value:
        return socket.AF_INET
    return None


def _link_info(msg: Any, master_name: str | None) -> LinkInfo:
    flags = int(msg.get("flags") or 0)
    return {
        "name": msg.get("ifname"),
        "index": int(msg["index"]),
        "kind": msg.get(("linkinfo", "kind")),
        "alias": msg.get("ifalias") or "",
        "mtu": msg.get("mtu"),
        "mac": msg.get("address"),
        "master": master_name,
        "up": bool(flags & IFF_UP),
        "operstate": msg.get("state"),
    }


def _translate(what: str, code: int | None, text: str) -> KernelError:
    return for_errno(f"{what}: {text}", code)


# -- overlays (drivers/vxlan.py): named namespaces, VXLAN devices, static FDB and neighbour entries --

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
ZERO_MAC = "00:00:00:00:00:00"
NETNS_DIR = "/run/netns"


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def netns_add(name: str) -> bool:
    """Create the named namespace ``/run/netns/<name>`` (``ip netns add``); True if made now.

    iproute2 does the unshare and the bind mount (and makes ``/run/netns`` a shared mount, so the
    name is visible to ``ip netns exec`` from every mount namespace that shares it). Its loopback
    is brought up: the overlay's own stack answers the gateway there.
    """
    if netns_exists(name):
        return False
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if proc.returncode != 0 and not netns_exists(name):
        raise KernelError(f"netns {name}: {proc.stderr.strip() or 'ip netns add failed'}", errno.EIO)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], capture_output=True, check=False)
    return proc.returncode == 0


def netns_delete(name: str) -> bool:
    """Delete the named namespace; its links (bridge, vxlan, host ends of veths) die with it."""
    if not netns_exists(name):
        return False
    proc = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True, check=False)
    if proc.returncode != 0 and netns_exists(name):
        raise KernelError(f"netns {name}: {proc.stderr.strip() or 'ip netns del failed'}", errno.EIO)
    return True


def netns_names(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


class OverlayKernel(Kernel):
    """``Kernel`` plus the verbs of an overlay: VXLAN devices, static FDB and neighbour entries."""

    def device_of_address(self, address: str) -> LinkInfo | None:
        """The link carrying ``address`` (the underlay of a VTEP), or None when no link has it."""
        msgs = self._call("addr dump", lambda: list(self._ipr().addr("dump")))
        for m in msgs:
            if m.get("address") == address or m.get("IFA_LOCAL") == address:
                index = int(m["index"])
                for link in self.links():
                    if link["index"] == index:
                        return link
        return None

    def ensure_vxlan(self, name: str, *, alias: str, vni: int, local: str, port: int, mtu: int,
                     netns_path: str | None = None) -> bool:
        """Make VXLAN device ``name`` (learning off, ARP/ND proxy on) in the netns at ``netns_path``.

        The request is made from *this* Kernel's namespace, so the device's UDP socket (bound to
        ``local``:``port``) lives here, in the host namespace that has the underlay, while the
        device itself is born in the overlay's namespace (IFLA_NET_NS_FD): Docker's overlay does
        the same in two steps (create, then move). ``proxy`` makes the device answer ARP and
        neighbour solicitations from its own neighbour table and drop the unanswered ones, so no
        ARP ever crosses the overlay: the store's entries are the only source of truth. Returns
        True when created now; an existing device is left alone (the caller checks it first).

        The kernel answers EEXIST for two different things: ``name`` already taken in the target
        namespace (our own device: False), or the VNI already used on ``port`` by *any* VXLAN
        device whose socket lives in this namespace, wherever that device sits (one in an overlay
        namespace that ``ip netns del`` unlinked but the kernel has not destroyed yet, or one that
        is not cnmkit's). The second is a KernelError naming the clash: treated as "already
        there", nothing would be made and the next step would fail with ENODEV.
        """
        spec: dict[str, Any] = {"ifname": name, "kind": "vxlan", "vxlan_id": vni, "vxlan_local": local,
                                "vxlan_port": port, "vxlan_learning": 0, "vxlan_proxy": 1, "mtu": mtu}
        ns_fd = None
        if netns_path:
            try:
                ns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise KernelError(f"netns {netns_path}: {exc.strerror}", exc.errno) from exc
            spec["net_ns_fd"] = ns_fd
        try:
            self._call(f"create vxlan {name}", self._ipr().link, "add", **spec)
        except LinkExists:
            there = OverlayKernel(netns_path) if netns_path else self
            try:
                have = there._vxlans().get(name)
            finally:
                if there is not self:
                    there.close()
            if have is not None and have[0] == vni:
                return False
            if have is not None:
                raise LinkExists(f"vxlan {name}: exists with VNI {have[0]}, not {vni}", errno.EEXIST) from None
            raise KernelError(self._vni_clash(name, vni, port), errno.EEXIST) from None
        finally:
            if ns_fd is not None:
                os.close(ns_fd)
        return True

    def _vxlans(self) -> dict[str, tuple[int, int]]:
        """name -> (VNI, UDP port) of every VXLAN device in this namespace."""
        out = {}
        for m in self._dump_links():
            if m.get(("linkinfo", "kind")) == "vxlan":
                data = ("linkinfo", "data")
                out[str(m.get("ifname"))] = (int(m.get((*data, "vxlan_id")) or 0),
                                             int(m.get((*data, "vxlan_port")) or 0))
        return out

    def _vni_clash(self, name: str, vni: int, port: int) -> str:
        holder = next((n for n, (v, p) in sorted(self._vxlans().items()) if v == vni and p == port), None)
        if holder is not None:
            return (f"vxlan {name}: VNI {vni} on UDP port {port} is already used by VXLAN device "
                    f"{holder} in this host's namespace")
        return (f"vxlan {name}: VNI {vni} on UDP port {port} is already used by a VXLAN device of this "
                f"host in another network namespace (not cnmkit's, or one still being destroyed)")

    def veth_add(self, name: str, peer: str, *, alias: str, mtu: int, peer_netns_path: str) -> None:
        """A plain veth pair (no master): ``name`` here, ``peer`` born in the netns at ``peer_netns_path``."""
        self._veth_create(name, peer, alias=alias, peer_netns_path=peer_netns_path, mtu=mtu)

    def link_configure(self, name: str, *, alias: str | None = None, master: str | None = None,
                       mtu: int | None = None, up: bool = True) -> None:
        spec: dict[str, Any] = {"state": "up" if up else "down"}
        if alias is not None:
            spec["ifalias"] = alias
        if master is not None:
            spec["master"] = self._index(master)
        if mtu is not None:
            spec["mtu"] = mtu
        self._call(f"configure {name}", self._ipr().link, "set", index=self._index(name), **spec)

    def fdb_entries(self, device: str) -> list[tuple[str, str]]:
        """(MAC, remote VTEP) of every entry with a remote destination on VXLAN ``device``."""
        index = self._index(device)
        msgs = self._call("fdb dump", lambda: list(self._ipr().fdb("dump", ifindex=index)))
        out = []
        for m in msgs:
            if int(m.get("ifindex") or 0) != index:
                continue
            dst = m.get("NDA_DST")
            if dst:
                out.append((str(m.get("NDA_LLADDR")).lower(), str(dst)))
        return out

    def fdb_add(self, device: str, mac: str, dst: str) -> None:
        """A static entry ``mac`` -> ``dst`` on the VXLAN device (``append``: the all-zeros MAC
        takes one entry per remote VTEP, head-end replication)."""
        index = self._index(device)
        with contextlib.suppress(LinkExists):
            self._call(f"fdb {mac} {dst}", self._ipr().fdb, "append", ifindex=index, lladdr=mac, dst=dst,
                       state=NUD_PERMANENT, flags=NTF_SELF)

    def fdb_del(self, device: str, mac: str, dst: str) -> None:
        index = self._index(device)
        with contextlib.suppress(LinkNotFound):
            self._call(f"fdb del {mac} {dst}", self._ipr().fdb, "del", ifindex=index, lladdr=mac, dst=dst,
                       flags=NTF_SELF)

    def neigh_entries(self, device: str) -> list[tuple[str, str]]:
        """(IP, MAC) of every permanent neighbour entry on ``device``."""
        index = self._index(device)
        msgs = self._call("neigh dump", lambda: list(self._ipr().neigh("dump", ifindex=index)))
        return [(str(m.get("NDA_DST")), str(m.get("NDA_LLADDR")).lower()) for m in msgs
                if int(m.get("ifindex") or 0) == index and m.get("NDA_DST") and m.get("NDA_LLADDR")
                and int(m.get("state") or 0) & NUD_PERMANENT]

    def neigh_set(self, device: str, ip: str, mac: str) -> None:
        index = self._index(device)
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self._call(f"neigh {ip}", self._ipr().neigh, "replace", ifindex=index, dst=ip, lladdr=mac,
                   state=NUD_PERMANENT, family=family)

    def neigh_del(self, device: str, ip: str) -> None:
        index = self._index(device)
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with contextlib.suppress(LinkNotFound):
            self._call(f"neigh del {ip}", self._ipr().neigh, "del", ifindex=index, dst=ip, family=family)

    def route_replace(self, dst: str, *, gateway: str | None = None, oif: str | None = None) -> None:
        self._route("replace", dst, gateway, oif)
