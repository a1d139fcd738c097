"""Many rtnetlink link requests in one ``sendmsg``, and a light link dump: a lab's bulk path.

Why not pyroute2 (drivers/kernel.py) for this: its per-request cost in Python (message objects,
an asyncio loop turn, decoding every attribute of every reply) is 1-3 ms, several times the
kernel's work for a veth, a bridge or a group mark. A 200-node linear lab makes 400 links and 200
bridges and marks 600 links for deletion; that was most of its deploy and destroy time (issue 10
item 5). Here the requests are packed by hand (nlmsghdr + ifinfomsg + attributes, the layout of
linux/rtnetlink.h), sent in chunks of many messages per ``sendmsg`` (the kernel handles each
message in turn and acks each), and a dump decodes only the five attributes a lab looks at.

Link requests, plus the address and route requests that configure a container's interface
(``runtime/sandbox.configure``: rename, MAC, MTU, up, addresses and routes in one ``sendmsg``
after one look-up, where pyroute2 took nine requests and a fresh handle); only the attributes
listed. Anything richer stays with drivers/kernel.py.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.errors import KernelError, for_errno

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 18, 20, 24
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x4, 0x200, 0x400, 0x300, 0x10
IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_GROUP, IFLA_NET_NS_FD, IFLA_EXT_MASK = (
    3, 4, 10, 18, 20, 27, 28, 29)
IFLA_ADDRESS = 1
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFF_UP = 0x1
IFA_ADDRESS, IFA_LOCAL, IFA_F_NODAD = 1, 2, 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RTN_UNICAST = 254, 4, 0, 253, 1
NLA_F_NESTED = 0x8000
_HDR = struct.Struct("=IHHII")                  # nlmsghdr: len, type, flags, seq, pid
_IFI = struct.Struct("=BxHiII")                 # ifinfomsg: family, type, index, flags, change
_RTA = struct.Struct("=HH")                     # rtattr: len, type
_IFA = struct.Struct("=BBBBi")                  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTM = struct.Struct("=BBBBBBBBI")              # rtmsg: family, dst_len, src_len, tos, table, protocol,
                                                #        scope, type, flags
_CHUNK = 64                                     # requests per sendmsg: their acks fit any rcvbuf
_DUMP_RETRIES = 5


@dataclass(frozen=True)
class Request:
    """One message without its header's sequence number (``LinkBatch.run`` numbers them)."""

    type: int
    flags: int
    body: bytes
    what: str                                   # for error messages: "create veth x"


@dataclass(frozen=True)
class Link:
    """What a dump gives per link: the fields a lab's checks need."""

    index: int
    name: str
    alias: str
    group: int
    master: int
    kind: str
    flags: int = 0                              # ifi_flags: IFF_UP, ...


def _attr(kind: int, data: bytes) -> bytes:
    raw = _RTA.pack(_RTA.size + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def veth(name: str, peer: str, *, netns_fd: int | None = None, peer_netns_fd: int | None = None,
         mtu: int | None = None, master: int = 0, peer_mac: str = "") -> Request:
    """A veth pair, ``name`` born in ``netns_fd``'s namespace and ``peer`` in ``peer_netns_fd``'s
    (either None: the socket's own); with ``master`` (an ifindex in ``name``'s namespace)
    ``name`` is born enslaved and up."""
    flags = IFF_UP if master else 0
    peer_attrs = _str(IFLA_IFNAME, peer) + (_u32(IFLA_NET_NS_FD, peer_netns_fd) if peer_netns_fd is not None else b"") \
        + (_u32(IFLA_MTU, mtu) if mtu else b"") + (_attr(IFLA_ADDRESS, _mac(peer_mac)) if peer_mac else b"")
    info = _str(IFLA_INFO_KIND, "veth") + _attr(
        IFLA_INFO_DATA | NLA_F_NESTED, _attr(VETH_INFO_PEER | NLA_F_NESTED, _IFI.pack(0, 0, 0, 0, 0) + peer_attrs))
    attrs = (_str(IFLA_IFNAME, name) + (_u32(IFLA_NET_NS_FD, netns_fd) if netns_fd is not None else b"")
             + (_u32(IFLA_MTU, mtu) if mtu else b"")
             + (_u32(IFLA_MASTER, master) if master else b"") + _attr(IFLA_LINKINFO | NLA_F_NESTED, info))
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _IFI.pack(0, 0, 0, flags, flags) + attrs,
                   f"create veth {name}")


def bridge(name: str, *, mtu: int) -> Request:
    """A new bridge ``name``, up (IFF_UP applies on create); a name taken fails with EEXIST."""
    info = _str(IFLA_INFO_KIND, "bridge")
    attrs = _str(IFLA_IFNAME, name) + _u32(IFLA_MTU, mtu) + _attr(IFLA_LINKINFO | NLA_F_NESTED, info)
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _IFI.pack(0, 0, 0, IFF_UP, IFF_UP) + attrs,
                   f"create bridge {name}")


def set_link(*, index: int = 0, name: str = "", alias: str | None = None, group: int | None = None,
             master: int = 0, up: bool = False, down: bool = False, new_name: str = "", mac: str = "",
             mtu: int = 0) -> Request:
    """Change a link found by ``index`` (or by ``name``): alias, group, master, up; with
    ``index``, also its name, MAC and MTU. One message: the kernel renames and sets the MAC and
    MTU before it applies IFF_UP (``do_setlink``), so a down link can be renamed and brought up."""
    flags, change = (IFF_UP, IFF_UP) if up else (0, IFF_UP) if down else (0, 0)
    attrs = (_str(IFLA_IFNAME, name) if name and not index else b"") + \
        (_str(IFLA_IFNAME, new_name) if new_name and index else b"") + \
        (_attr(IFLA_ADDRESS, _mac(mac)) if mac else b"") + \
        (_u32(IFLA_MTU, mtu) if mtu else b"") + \
        (_str(IFLA_IFALIAS, alias) if alias is not None else b"") + \
        (_u32(IFLA_GROUP, group) if group is not None else b"") + (_u32(IFLA_MASTER, master) if master else b"")
    return Request(RTM_NEWLINK, 0, _IFI.pack(0, 0, index, flags, change) + attrs, f"change link {name or index}")


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _ip(text: str) -> tuple[int, bytes]:
    packed = ipaddress.ip_address(text).packed
    return (socket.AF_INET6 if len(packed) == 16 else socket.AF_INET), packed


def address(index: int, cidr: str) -> Request:
    """Add ``cidr`` (``10.0.0.2/24``, ``fd00::2/64``) to link ``index``; taken: EEXIST. IPv6
    addresses skip DAD (IFA_F_NODAD, as libnetwork's: IPAM made them unique already)."""
    text, _, plen = cidr.partition("/")
    if not plen:
        raise KernelError(f"address {cidr!r} has no prefix length", errno.EINVAL)
    family, packed = _ip(text)
    flags = IFA_F_NODAD if family == socket.AF_INET6 else 0
    body = _IFA.pack(family, int(plen), flags, RT_SCOPE_UNIVERSE, index) + _attr(IFA_LOCAL, packed) + \
        _attr(IFA_ADDRESS, packed)
    return Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, f"addr {cidr} on link {index}")


def route(dst: str = "default", *, gateway: str = "", oif: int = 0) -> Request:
    """Add a route to ``dst`` (``default`` or a CIDR) via ``gateway`` and/or out of link ``oif``
    (connected, scope link, when there is no gateway), as ``ip route add ... proto static``; taken: EEXIST."""
    net = None if dst == "default" else ipaddress.ip_network(dst, strict=False)
    family = _ip(gateway)[0] if gateway else (socket.AF_INET6 if net and net.version == 6 else socket.AF_INET)
    plen = net.prefixlen if net else 0
    attrs = (_attr(RTA_DST, net.network_address.packed) if net and plen else b"") + \
        (_attr(RTA_GATEWAY, _ip(gateway)[1]) if gateway else b"") + (_u32(RTA_OIF, oif) if oif else b"")
    scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
    body = _RTM.pack(family, plen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, scope, RTN_UNICAST, 0) + attrs
    return Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, f"route {dst}")


def delete_group(group: int) -> Request:
    """Every link of ``group`` in one RTM_DELLINK: one unregister batch, one RCU wait for all."""
    return Request(RTM_DELLINK, 0, _IFI.pack(0, 0, 0, 0, 0) + _u32(IFLA_GROUP, group), f"delete group {group}")


def delete(*, index: int = 0, name: str = "") -> Request:
    """Delete the link ``index`` (or ``name``), and a veth's peer with it."""
    attrs = _str(IFLA_IFNAME, name) if name and not index else b""
    return Request(RTM_DELLINK, 0, _IFI.pack(0, 0, index, 0, 0) + attrs, f"delete link {name or index}")


class LinkBatch:
    """A NETLINK_ROUTE socket in the caller's network namespace (the calling thread's)."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        """``sock``: a NETLINK_ROUTE socket made elsewhere (in another namespace), now owned here."""
        self._sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._seq = 0

    def __enter__(self) -> LinkBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def run(self, requests: Sequence[Request]) -> list[int]:
        """Send every request (acked, in order); the errno of each, 0 for success."""
        out: list[int] = []
        for start in range(0, len(requests), _CHUNK):
            chunk = requests[start:start + _CHUNK]
            first = self._seq + 1
            buf = bytearray()
            for request in chunk:
                self._seq += 1
                buf += _HDR.pack(_HDR.size + len(request.body), request.type, request.flags | NLM_F_REQUEST |
                                 NLM_F_ACK, self._seq, 0) + request.body
            self._sock.send(bytes(buf))
            codes: dict[int, int] = {}
            while len(codes) < len(chunk):
                for kind, _flags, seq, payload in self._messages():
                    if kind == NLMSG_ERROR and first <= seq <= self._seq:
                        codes[seq] = -struct.unpack_from("=i", payload)[0]
            out += [codes[first + i] for i in range(len(chunk))]
        return out

    def get(self, name: str) -> Link | None:
        """The link called ``name`` (without statistics), or None when there is none."""
        self._seq += 1
        seq = self._seq
        body = _IFI.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, name) + _u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
        self._sock.send(_HDR.pack(_HDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + body)
        while True:
            for kind, _flags, got, payload in self._messages():
                if got != seq:
                    continue
                if kind == RTM_NEWLINK:
                    return _parse_link(payload)
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code == errno.ENODEV:
                        return None
                    raise kernel_error(f"link {name}", code)

    def dump(self, group: int | None = None) -> list[Link]:
        """Every link of this namespace (index, name, alias, group, master, kind); with ``group``,
        only that group's, and the other links' attributes are not decoded past their group (the
        reaper asks for the doomed group among thousands of links before every group delete)."""
        for _ in range(_DUMP_RETRIES):
            self._seq += 1
            seq = self._seq
            body = _IFI.pack(0, 0, 0, 0, 0) + _u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
            self._sock.send(_HDR.pack(_HDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
            links: list[Link] = []
            interrupted = False
            while True:
                done = False
                for kind, flags, got, payload in self._messages():
                    if got != seq:
                        continue
                    interrupted |= bool(flags & NLM_F_DUMP_INTR)
                    if kind == NLMSG_DONE:
                        done = True
                    elif kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", payload)[0]
                        raise OSError(code, f"link dump: {os.strerror(code)}")
                    elif kind == RTM_NEWLINK and (group is None or _group_of(payload) == group):
                        links.append(_parse_link(payload))
                if done:
                    break
            if not interrupted:
                return links
        raise OSError(errno.EINTR, "link dump interrupted")

    def _messages(self) -> list[tuple[int, int, int, bytes]]:
        data = self._sock.recv(1 << 20)
        out = []
        offset = 0
        while offset + _HDR.size <= len(data):
            length, kind, flags, seq, _pid = _HDR.unpack_from(data, offset)
            if length < _HDR.size:
                break
            out.append((kind, flags, seq, data[offset + _HDR.size:offset + length]))
            offset += (length + 3) & ~3
        return out


def _attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    found = {}
    while offset + _RTA.size <= len(data):
        length, kind = _RTA.unpack_from(data, offset)
        if length < _RTA.size:
            break
        found[kind & ~NLA_F_NESTED] = data[offset + _RTA.size:offset + length]
        offset += (length + 3) & ~3
    return found


def _group_of(payload: bytes) -> int:
    """A link's IFLA_GROUP, reading its attributes only as far as that one."""
    offset = _IFI.size
    while offset + _RTA.size <= len(payload):
        length, kind = _RTA.unpack_from(payload, offset)
        if length < _RTA.size:
            break
        if kind & ~NLA_F_NESTED == IFLA_GROUP:
            return int(struct.unpack_from("=I", payload, offset + _RTA.size)[0])
        offset += (length + 3) & ~3
    return 0


def _text(raw: bytes | None) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace") if raw else ""


def _parse_link(payload: bytes) -> Link:
    _family, _type, index, flags, _change = _IFI.unpack_from(payload)
    attrs = _attrs(payload, _IFI.size)
    info = _attrs(attrs[IFLA_LINKINFO]) if IFLA_LINKINFO in attrs else {}
    return Link(index=index, name=_text(attrs.get(IFLA_IFNAME)), alias=_text(attrs.get(IFLA_IFALIAS)),
                group=struct.unpack("=I", attrs[IFLA_GROUP])[0] if IFLA_GROUP in attrs else 0,
                master=struct.unpack("=I", attrs[IFLA_MASTER])[0] if IFLA_MASTER in attrs else 0,
                kind=_text(info.get(IFLA_INFO_KIND)), flags=flags)


def kernel_error(what: str, code: int) -> KernelError:
    """A failed request's errno as drivers/kernel.py reports it (LinkNotFound, LinkExists, ...)."""
    return for_errno(f"{what}: {os.strerror(code)}", code)


@dataclass(frozen=True)
class Veth:
    """One pair for ``make_veths``: ``name`` in the netns at ``netns`` (a path), ``peer`` in
    ``peer_netns``'s; ``master`` an ifindex in ``name``'s namespace (0: none)."""

    name: str
    peer: str
    netns: str
    peer_netns: str
    mtu: int | None = None
    master: int = 0


def make_veths(nl: LinkBatch, pairs: Sequence[Veth]) -> list[KernelError | None]:
    """Every pair in one batch of requests, each namespace opened once; per pair None or the
    error (a failed pair leaves nothing: the kernel makes both ends or neither)."""
    out: list[KernelError | None] = [None] * len(pairs)
    fds: dict[str, int] = {}
    requests, sent = [], []
    try:
        for index, pair in enumerate(pairs):
            try:
                for path in (pair.netns, pair.peer_netns):
                    if path not in fds:
                        fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                out[index] = KernelError(f"netns {exc.filename}: {exc.strerror}", exc.errno)
                continue
            requests.append(veth(pair.name, pair.peer, netns_fd=fds[pair.netns], peer_netns_fd=fds[pair.peer_netns],
                                 mtu=pair.mtu, master=pair.master))
            sent.append(index)
        for index, code in zip(sent, nl.run(requests), strict=True):
            if code:
                out[index] = kernel_error(f"create veth {pairs[index].name}", code)
    finally:
        for fd in fds.values():
            os.close(fd)
    return out
