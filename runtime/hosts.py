"""Per-container /etc/hosts and /etc/resolv.conf.

Name resolution without a DNS server: each container gets a hosts file listing every container
it shares a network with (name, hostname, aliases on that network), rewritten whenever the set
of containers or their addresses changes. The file is bind-mounted over /etc/hosts inside the
container, and a bind mount pins the inode, so updates must rewrite the same file in place
(truncate + write), never replace it by rename.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Callable, Iterable
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


def render_all(members: dict[str, Member], only: Iterable[str] | None = None) -> dict[str, str]:
    """Every member's hosts file in one pass (or the files of the members in ``only``).

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
    for cid in (members if only is None else only):
        m = members[cid]
        nets = list(dict.fromkeys(att["network_id"] for att in m.attachments))
        if len(nets) == 1:
            peers: list[tuple[str, Iterable[str]]] = [
                (ip, names) for _, ip, names, other in by_net.get(nets[0], []) if other != cid]
        else:
            peers = list(_merged(HostEntry(ip, names) for net in nets
                                 for _, ip, names, other in by_net.get(net, []) if other != cid))
        out[cid] = _render(own_of[cid], peers)
    return out


def _lines_by_network(members: dict[str, Member]) -> dict[str, list[str]]:
    """The hosts lines each member adds to its peers' files, per network (checked as render_all
    checks them)."""
    out: dict[str, list[str]] = {}
    for m in members.values():
        for att in m.attachments:
            names = _safe_names((m.name, m.hostname, *att.get("aliases", [])))
            if names:
                out.setdefault(att["network_id"], []).extend(
                    f"{ip}\t{' '.join(_dedupe(names))}" for ip in _addresses(att))
    return out


def _networks(m: Member) -> set[str]:
    return {att["network_id"] for att in m.attachments}


class Index:
    """Who is in whose hosts file, kept in one file so that a change costs what it changes.

    Rewriting every container's hosts file from every record after each start cost O(n) record
    reads per container (73 ms at 100 containers; issue 10 item 5). With the members in one
    index file, a batch that joins k containers renders the k new files and *appends* the new
    lines to each peer's file (an O_APPEND write keeps the bind-mounted inode); a removal drops
    the gone addresses' lines from the peers' files. The records stay the truth: the index is
    rebuilt from them (``ContainerService._refresh_hosts``) whenever it is missing, and entries
    whose record is gone are dropped when it is read. The caller holds the state lock.
    """

    def __init__(self, path: str, members: dict[str, Member]) -> None:
        self.path = path
        self.members = members

    @classmethod
    def load(cls, path: str, alive: Callable[[str], bool]) -> Index | None:
        try:
            with open(path) as fh:
                raw = json.load(fh)
        except (OSError, ValueError):
            return None
        members = {cid: Member(m["name"], m["hostname"], tuple(m["attachments"]))
                   for cid, m in raw.items() if alive(cid)}
        return cls(path, members)

    def save(self) -> None:
        data = {cid: {"name": m.name, "hostname": m.hostname, "attachments": list(m.attachments)}
                for cid, m in self.members.items()}
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, self.path)

    def add(self, new: dict[str, Member], path_of: Callable[[str], str]) -> None:
        """Join ``new``: their files in full, one appended block per peer that shares a network."""
        self.members.update(new)
        for cid, text in render_all(self.members, only=new).items():
            write_in_place(path_of(cid), text)
        lines = _lines_by_network(new)
        for cid, m in self.members.items():
            if cid in new:
                continue
            block = [line for net in _networks(m) for line in lines.get(net, [])]
            if block:
                _append(path_of(cid), "\n".join(block) + "\n")
        self.save()

    def remove(self, gone: Iterable[str], path_of: Callable[[str], str]) -> None:
        """Leave: the peers' files lose the lines of the gone members' addresses."""
        removed = {cid: self.members.pop(cid) for cid in gone if cid in self.members}
        if not removed:
            return
        lines = _lines_by_network(removed)
        still = _lines_by_network(self.members)
        for cid, m in self.members.items():
            nets = _networks(m)
            drop = {line.split("\t", 1)[0] for net in nets for line in lines.get(net, [])}
            if not drop:
                continue
            if any(line.split("\t", 1)[0] in drop for net in nets for line in still.get(net, [])):
                write_in_place(path_of(cid), render_all(self.members, only=[cid])[cid])   # a shared address
                continue
            with contextlib.suppress(OSError):
                with open(path_of(cid)) as fh:
                    old = fh.read().splitlines()
                own = {ip for att in m.attachments for ip in _addresses(att)}
                kept = [ln for ln in old if ln.split("\t", 1)[0] not in drop or ln.split("\t", 1)[0] in own]
                write_in_place(path_of(cid), "\n".join(kept) + "\n")
        self.save()


def _append(path: str, text: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


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
