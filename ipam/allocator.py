"""Pure address arithmetic for IPAM: parsing, validation, ranges and offsets. No I/O.

Every address is handled as an *offset* from its pool's network address. Offsets are plain ints,
so a /64 costs no more than a /24: nothing here (or in the service) is sized by the pool. The
store keeps a cursor offset and a set of released offsets; this module supplies the conversions
and the fixed-width key text that makes the store's key order equal numeric order.

Usable addresses follow Docker's built-in IPAM: in IPv4 the network and broadcast addresses are
never handed out (except in /31 and /32, RFC 3021), in IPv6 the subnet-router anycast address
(offset 0) is skipped (except in /127 and /128, RFC 6164). A sub-pool (``--ip-range``) restricts
only dynamic allocation; its addresses are still judged against the *pool's* network and
broadcast, as Docker does, so 10.0.0.128 is allocatable from range 10.0.0.128/25 of 10.0.0.0/24.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from netaddr import AddrFormatError, IPAddress, IPNetwork

from ipam.errors import AddressOutOfPool, InvalidRequest
from plugin.quoting import shown

# 2**128 - 1 is 32 hex digits: one width for both families keeps every key the same length.
OFFSET_WIDTH = 32
_PREFIX_RE = re.compile(r"[0-9]{1,3}")
# Shortest pool prefix per IP version. A /0 overlaps every network and NATs the whole world;
# nothing shorter than a /8 (IPv4) or a /16 (IPv6) is a plausible container network either.
MIN_POOL_PREFIX = {4: 8, 6: 16}


def parse_address(field: str, text: object) -> IPAddress:
    """A plain IP (no prefix, no zone, no shorthand such as 127.1), or InvalidRequest naming ``field``."""
    if not isinstance(text, str) or not text:
        raise InvalidRequest(field, f"{shown(text)} is not an IP address")
    try:
        return IPAddress(text)
    except (AddrFormatError, ValueError, TypeError):
        raise InvalidRequest(field, f"{shown(text)} is not a valid IP address") from None


def parse_cidr(field: str, text: object) -> IPNetwork:
    """A network in strict CIDR form with no host bits set, or InvalidRequest naming ``field``.

    netaddr alone is too lenient (it accepts "10.0.0.0" as /32 and "10.0.0.0/ 24"), and a pool
    with host bits set is almost always a typo for a different network, so both are refused.
    """
    if not isinstance(text, str) or "/" not in text:
        raise InvalidRequest(field, f"{shown(text)} is not a valid CIDR")
    addr_text, _, prefix_text = text.partition("/")
    if not _PREFIX_RE.fullmatch(prefix_text):
        raise InvalidRequest(field, f"{shown(text)} is not a valid CIDR")
    try:
        addr = IPAddress(addr_text)
        net = IPNetwork(f"{addr}/{int(prefix_text)}")
    except (AddrFormatError, ValueError, TypeError):
        raise InvalidRequest(field, f"{shown(text)} is not a valid CIDR") from None
    if net.ip != net.network:
        raise InvalidRequest(field, f"{shown(text)} has host bits set (did you mean {net.cidr}?)")
    return net


def usable_offsets(net: IPNetwork) -> tuple[int, int]:
    """First and last offset (inclusive) of the addresses of ``net`` that may be handed out."""
    size = net.size
    if net.version == 4:
        return (0, size - 1) if net.prefixlen >= 31 else (1, size - 2)
    return (0, size - 1) if net.prefixlen >= 127 else (1, size - 1)


def offset_key(offset: int) -> str:
    """Fixed-width hex so that lexical key order is numeric order, up to 2**128."""
    return f"{offset:0{OFFSET_WIDTH}x}"


def parse_offset_key(text: str) -> int:
    return int(text, 16)


@dataclass(frozen=True)
class PoolSpec:
    """A validated pool: its network, optional sub-pool and the derived allocation range."""

    pool: IPNetwork
    sub_pool: IPNetwork | None = None

    @property
    def v6(self) -> bool:
        return self.pool.version == 6

    @property
    def base(self) -> int:
        return int(self.pool.network)

    def usable(self) -> tuple[int, int]:
        """Offsets any address (static, aux, gateway) must lie within."""
        return usable_offsets(self.pool)

    def range(self) -> tuple[int, int]:
        """Offsets of dynamic allocation: the sub-pool clipped to the pool's usable addresses."""
        lo, hi = self.usable()
        if self.sub_pool is None:
            return lo, hi
        first = int(self.sub_pool.network) - self.base
        last = first + self.sub_pool.size - 1
        return max(lo, first), min(hi, last)

    def capacity(self) -> int:
        lo, hi = self.usable()
        return hi - lo + 1

    def range_capacity(self) -> int:
        lo, hi = self.range()
        return max(0, hi - lo + 1)

    def address_at(self, offset: int) -> IPAddress:
        return IPAddress(self.base + offset, self.pool.version)

    def offset_of(self, addr: IPAddress) -> int:
        """Offset of an address that lies in the pool's usable range, else AddressOutOfPool."""
        if addr.version != self.pool.version or addr not in self.pool:
            raise AddressOutOfPool(str(addr), str(self.pool.cidr))
        offset = int(addr) - self.base
        lo, hi = self.usable()
        if not lo <= offset <= hi:
            what = "subnet-router anycast" if self.v6 else ("network" if offset == 0 else "broadcast")
            raise AddressOutOfPool(str(addr), str(self.pool.cidr), f"is the {what} address of")
        return offset

    def in_range(self, offset: int) -> bool:
        lo, hi = self.range()
        return lo <= offset <= hi

    def with_prefix(self, addr: IPAddress) -> str:
        """The form Docker needs in RequestAddress replies: the pool's prefix, which becomes the netmask."""
        return f"{addr}/{self.pool.prefixlen}"


def make_pool_spec(pool: str, sub_pool: str, v6: bool) -> PoolSpec:
    """Validate a RequestPool's Pool/SubPool/V6 triple; errors name the offending field."""
    net = parse_cidr("Pool", pool)
    if net.prefixlen < MIN_POOL_PREFIX[net.version]:
        raise InvalidRequest("Pool", f"{shown(pool)}: a pool must be a /{MIN_POOL_PREFIX[net.version]} or longer")
    if (net.version == 6) != v6:
        fam = "IPv6" if net.version == 6 else "IPv4"
        raise InvalidRequest("V6", f"is {str(v6).lower()} but Pool {pool} is {fam}")
    if not sub_pool:
        return PoolSpec(net)
    sub = parse_cidr("SubPool", sub_pool)
    if sub.version != net.version or sub not in net:
        raise InvalidRequest("SubPool", f"{sub_pool} is not inside Pool {pool}")
    spec = PoolSpec(net, sub)
    if spec.range_capacity() == 0:
        raise InvalidRequest("SubPool", f"{sub_pool} holds no usable address of Pool {pool}")
    return spec


def find_overlap(net: IPNetwork, existing: Iterable[tuple[str, IPNetwork]]) -> tuple[str, IPNetwork] | None:
    """The first ``(pool_id, network)`` of ``existing`` that shares an address with ``net``."""
    for pool_id, other in existing:
        if other.version == net.version and other.first <= net.last and net.first <= other.last:
            return pool_id, other
    return None
