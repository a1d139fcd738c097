"""Address spaces and the predefined pools handed out when RequestPool names no Pool.

Docker checks an automatically chosen pool against host routes and, on overlap, asks again
*while keeping* the pool it got (protocol.md section 3): returning the same pool twice makes it loop
forever. Choosing "the first candidate that overlaps nothing held and nothing the host routes"
answers that naturally, because the rejected pool is still held when Docker re-asks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

from netaddr import IPAddress, IPNetwork

from ipam.allocator import find_overlap
from ipam.errors import PoolExhausted

LOCAL_ADDRESS_SPACE = "cnmkit-local"
GLOBAL_ADDRESS_SPACE = "cnmkit-global"
DEFAULT_ADDRESS_SPACES = {
    "LocalDefaultAddressSpace": LOCAL_ADDRESS_SPACE,
    "GlobalDefaultAddressSpace": GLOBAL_ADDRESS_SPACE,
}

# A VXLAN overlay's pools live in an address space of their own, named after the overlay and shared
# by every host (like the global space): ``docker network create --ipam-opt cnmkit.overlay=blue``
# on two hosts then gets the same pool, one allocator and one gateway (drivers/vxlan.py).
OVERLAY_OPTION = "cnmkit.overlay"
OVERLAY_SPACE_PREFIX = "cnmkit-overlay."
OVERLAY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def overlay_space(overlay: str) -> str:
    return OVERLAY_SPACE_PREFIX + overlay


def is_overlay_space(space: str) -> bool:
    return space.startswith(OVERLAY_SPACE_PREFIX)


def is_shared_space(space: str) -> bool:
    """Spaces whose pools are one record for every host: the global one and each overlay's."""
    return space == GLOBAL_ADDRESS_SPACE or is_overlay_space(space)


# 10.200.0.0/13 gives 2048 /24s away from Docker's own 172.17-31/16 and 192.168/20 defaults; the
# IPv6 ULA /48 spells "cnmk" (63 6e 6d 6b) so an operator recognises our pools in `ip -6 route`.
PREDEFINED_V4 = (IPNetwork("10.200.0.0/13"), 24)
PREDEFINED_V6 = (IPNetwork("fd63:6e6d:6b00::/48"), 64)

Avoid = Callable[[], list[IPNetwork]]


def candidates(v6: bool) -> Iterator[IPNetwork]:
    """Predefined pools in order, lazily: the v6 parent holds 65536 /64s."""
    parent, prefixlen = PREDEFINED_V6 if v6 else PREDEFINED_V4
    step = 1 << ((128 if v6 else 32) - prefixlen)
    base = int(parent.network)
    for i in range(1 << (prefixlen - parent.prefixlen)):
        yield IPNetwork(f"{IPAddress(base + i * step, parent.version)}/{prefixlen}")


def pick_predefined(v6: bool, held: Iterable[IPNetwork], avoid: Iterable[IPNetwork]) -> IPNetwork:
    """The first predefined pool that overlaps neither a held pool nor a network to avoid.

    ``held`` and ``avoid`` are small (pools on this store, routes of this host), so a linear scan
    per candidate stays cheap; the candidate list itself is walked lazily and stops at the first fit.
    """
    family = 6 if v6 else 4
    blocked = [("", n) for n in [*held, *avoid] if n.version == family]
    for cand in candidates(v6):
        if find_overlap(cand, blocked) is None:
            return cand
    parent, prefixlen = PREDEFINED_V6 if v6 else PREDEFINED_V4
    raise PoolExhausted(str(parent.cidr),
                        f"no predefined /{prefixlen} left that avoids held pools and host routes")
