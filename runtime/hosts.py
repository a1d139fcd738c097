"""Per-container /etc/hosts and /etc/resolv.conf.

Name resolution without a DNS server: each container gets a hosts file listing every container
it shares a network with (name, hostname, aliases on that network), rewritten whenever the set
of containers or their addresses changes. The file is bind-mounted over /etc/hosts inside the
container, and a bind mount pins the inode, so updates must rewrite the same file in place
(truncate + write), never replace it by rename.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from runtime.names import is_hosts_word

log = logging.getLogger(__name__)


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


# The CLI and the runtime refuse bad names where they come in (runtime/names.py). What follows is
# the last line: a record written by an older version or by hand must still not be able to add a
# line (newline) or an address (whitespace) to another container's hosts file, so every name and
# address is checked once, when its entry is built, and what fails is left out (and logged).

def _safe_names(names: Iterable[str]) -> tuple[str, ...]:
    out = []
    for n in names:
        if n and not is_hosts_word(n):
            log.warning("hosts: leaving out the name %r: not a valid host name", n[:64])
        elif n:
            out.append(n)
    return tuple(out)


def _canonical(ip: str) -> str | None:
    """``ip`` as ipaddress writes it, or None if it is not a plain address (a scope id can hold
    any character, whitespace included, so it is not accepted either)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        addr = None
    if addr is None or getattr(addr, "scope_id", None):
        log.warning("hosts: leaving out the address %r: not an IP address", ip[:64])
        return None
    return str(addr)


def _safe(entries: Iterable[HostEntry]) -> list[HostEntry]:
    out = []
    for e in entries:
        ip, names = _canonical(e.ip), _safe_names(e.names)
        if ip is not None and names:
            out.append(HostEntry(ip, names))
    return out


_HEADER = (
    "127.0.0.1\tlocalhost",
    "::1\tlocalhost ip6-localhost ip6-loopback",
    "fe00::0\tip6-localnet",
    "ff00::0\tip6-mcastprefix",
    "ff02::1\tip6-allnodes",
    "ff02::2\tip6-allrouters",
)


def _order(ip: str) -> tuple[int, int]:
    addr = ipaddress.ip_address(ip)
    return addr.version, int(addr)


def _render(own: Iterable[HostEntry], peers: Iterable[tuple[str, Iterable[str]]]) -> str:
    """Entries must already be checked (``_safe``); ``peers`` merged by address and sorted by ``_order``."""
    lines = list(_HEADER)
    lines += [f"{e.ip}\t{' '.join(_dedupe(e.names))}" for e in own]
    lines += [f"{ip}\t{' '.join(_dedupe(names))}" for ip, names in peers]
    return "\n".join(lines) + "\n"


def _merged(entries: Iterable[HostEntry]) -> list[tuple[str, list[str]]]:
    merged: dict[str, list[str]] = {}
    for entry in entries:
        merged.setdefault(entry.ip, []).extend(entry.names)
    return sorted(merged.items(), key=lambda item: _order(item[0]))


def render_hosts(own: Iterable[HostEntry], peers: Iterable[HostEntry]) -> str:
    """The container's own addresses first, then its peers, sorted so rewrites are stable."""
    return _render(_safe(own), _merged(_safe(peers)))


@dataclass(frozen=True)
class Member:
    """One container as name resolution sees it: its names and its attachments (Attachment dicts)."""

    name: str
    hostname: str
    attachments: tuple[dict, ...]


def _addresses(att: dict) -> list[str]:
    """The attachment's addresses in canonical form; what is not a plain address is left out."""
    found = (_canonical(str(att[k]).split("/")[0]) for k in ("address", "address_v6") if att.get(k))
    return [ip for ip in found if ip is not None]


def render_all(members: dict[str, Member]) -> dict[str, str]:
    """Every member's hosts file in one pass.

    Each network's entries are built, checked and sorted once, then every member's file is
    assembled from the lists of its networks: one refresh costs O(total entries), where rendering
    each file from scratch cost O(members x entries) address parses and sorts (the quadratic term
    that dominated bring-up at 100 containers).
    """
    by_net: dict[str, list[tuple[tuple[int, int], str, tuple[str, ...], str]]] = {}
    own_of: dict[str, list[HostEntry]] = {}
    for cid, m in members.items():
        own_names = _safe_names((m.hostname, m.name))
        own_of[cid] = []
        for att in m.attachments:
            names = _safe_names((m.name, m.hostname, *att.get("aliases", [])))
            for ip in _addresses(att):
                if own_names:
                    own_of[cid].append(HostEntry(ip, own_names))
                if names:
                    by_net.setdefault(att["network_id"], []).append((_order(ip), ip, names, cid))
    for entries in by_net.values():
        entries.sort()
    out: dict[str, str] = {}
    for cid, m in members.items():
        nets = list(dict.fromkeys(att["network_id"] for att in m.attachments))
        if len(nets) == 1:
            peers: list[tuple[str, Iterable[str]]] = [
                (ip, names) for _, ip, names, other in by_net.get(nets[0], []) if other != cid]
        else:
            peers = list(_merged(HostEntry(ip, names) for net in nets
                                 for _, ip, names, other in by_net.get(net, []) if other != cid))
        out[cid] = _render(own_of[cid], peers)
    return out


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
