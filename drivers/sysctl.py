"""Forwarding switches, read and flipped the way dockerd does it.

A bridge network with NAT is useless while ``net.ipv4.ip_forward`` is 0, and dockerd turns it
on itself rather than asking the admin. These files are per network namespace and are resolved
against the calling *thread's* namespace, so code running in a setns()ed thread changes that
namespace's switches. The root directory is injectable for the unit tier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

IPV4_FORWARD = "net/ipv4/ip_forward"
IPV6_FORWARD = "net/ipv6/conf/all/forwarding"


class SysctlOps(Protocol):
    def get(self, key: str) -> str: ...
    def ensure(self, key: str, value: str) -> bool: ...


class Sysctl:
    def __init__(self, root: str | Path = "/proc/sys") -> None:
        self.root = Path(root)

    def get(self, key: str) -> str:
        return (self.root / key).read_text().strip()

    def ensure(self, key: str, value: str) -> bool:
        """Write ``value`` unless already set; True when it changed something."""
        if self.get(key) == value:
            return False
        (self.root / key).write_text(value + "\n")
        return True
