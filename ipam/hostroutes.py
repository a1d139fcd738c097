"""The host's routed networks, so that automatic pools never shadow a LAN or a VPN route.

Read from /proc rather than netlink: it is a cheap, dependency-free snapshot, and only
consulted when a pool is picked automatically.
"""

from __future__ import annotations

import socket
import struct

from netaddr import IPAddress, IPNetwork


def host_networks(proc: str = "/proc/net") -> list[IPNetwork]:
    nets: list[IPNetwork] = []
    try:
        with open(f"{proc}/route") as f:
            next(f, None)
            for line in f:
                cols = line.split()
                dest, mask = (int(c, 16) for c in (cols[1], cols[7]))
                if mask == 0:
                    continue                            # the default route covers everything; ignore it
                addr = socket.inet_ntoa(struct.pack("<I", dest))
                nets.append(IPNetwork(f"{addr}/{bin(mask).count('1')}"))
    except OSError:
        pass
    try:
        with open(f"{proc}/ipv6_route") as f:
            for line in f:
                cols = line.split()
                plen = int(cols[1], 16)
                if plen == 0 or cols[0].startswith("fe80") or cols[0].startswith("ff"):
                    continue
                nets.append(IPNetwork(f"{IPAddress(int(cols[0], 16), 6)}/{plen}"))
    except OSError:
        pass
    return nets
