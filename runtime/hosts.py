"""Per-container /etc/hosts and /etc/resolv.conf.

Name resolution without a DNS server: each container gets a hosts file listing every container
it shares a network with (name, hostname, aliases on that network), rewritten whenever the set
of containers or their addresses changes. The file is bind-mounted over /etc/hosts inside the
container, and a bind mount pins the inode, so updates must rewrite the same file in place
(truncate + write), never replace it by rename.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class HostEntry:
    ip: str
    names: tuple[str, ...]


def _dedupe(names: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for n in names:
        if n and n not in out:
            out.append(n)
    return tuple(out)


def render_hosts(own: Iterable[HostEntry], peers: Iterable[HostEntry]) -> str:
    """The container's own addresses first, then its peers, sorted so rewrites are stable."""
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ]
    for entry in own:
        lines.append(f"{entry.ip}\t{' '.join(_dedupe(entry.names))}")
    merged: dict[str, list[str]] = {}
    for entry in peers:
        merged.setdefault(entry.ip, []).extend(entry.names)
    for ip in sorted(merged, key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a))):
        lines.append(f"{ip}\t{' '.join(_dedupe(merged[ip]))}")
    return "\n".join(lines) + "\n"


def render_resolv(host_resolv: str) -> str:
    """The host's nameservers, search and options, minus loopback nameservers.

    A loopback resolver (systemd-resolved's 127.0.0.53, dnsmasq) is unreachable from the
    container's own network namespace, so copying it would only produce timeouts.
    """
    out: list[str] = []
    for raw in host_resolv.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        fields = line.split()
        if fields[0] == "nameserver":
            if len(fields) < 2:
                continue
            try:
                if ipaddress.ip_address(fields[1].split("%")[0]).is_loopback:
                    continue
            except ValueError:
                continue
        if fields[0] in ("nameserver", "search", "domain", "options"):
            out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def read_host_resolv(path: str = "/etc/resolv.conf") -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def write_in_place(path: str, text: str) -> None:
    """Rewrite ``path`` keeping its inode, so a bind mount of it sees the new content."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        data = text.encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
