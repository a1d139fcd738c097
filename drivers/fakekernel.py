"""In-memory stand-ins for the kernel and for iptables, for the unit tier (no root).

``FakeKernel`` keeps links and addresses in dicts and raises the same exceptions as
``drivers.kernel.Kernel`` for the same situations (a missing master, a name owned by someone
else, a link gone), so driver tests assert end state rather than call shapes. ``fail_on`` lets a
test make one verb fail, to exercise rollback. ``FakeIptables`` is a runner for
``drivers.firewall.Firewall`` that emulates the handful of iptables commands it uses, chains and
rule order included.
"""

from __future__ import annotations

import errno
import itertools
import shlex
import threading
from collections.abc import Sequence
from typing import Any

from drivers.errors import KernelError, LinkExists, LinkNotFound
from drivers.kernel import LinkInfo

HOST = "host"                                   # the namespace key of the fake's own netns


class FakeKernel:
    def __init__(self) -> None:
        self.links_by_ns: dict[str, dict[str, dict[str, Any]]] = {HOST: {}}
        self.addresses: dict[str, list[str]] = {}          # host-ns link name -> cidrs
        self.fail_on: dict[str, KernelError] = {}          # verb -> error to raise once
        self._index = itertools.count(2)
        self._lock = threading.Lock()

    # -- helpers ----------------------------------------------------------------------------

    @property
    def host(self) -> dict[str, dict[str, Any]]:
        return self.links_by_ns[HOST]

    def _maybe_fail(self, verb: str) -> None:
        err = self.fail_on.pop(verb, None)
        if err is not None:
            raise err

    def _new(self, name: str, kind: str, mtu: int, **extra: Any) -> dict[str, Any]:
        return {"name": name, "index": next(self._index), "kind": kind, "alias": "", "mtu": mtu,
                "mac": extra.pop("mac", None) or "02:00:00:00:00:01", "master": None, "up": False,
                "operstate": "DOWN", **extra}

    def _get(self, name: str) -> dict[str, Any]:
        link = self.host.get(name)
        if link is None:
            raise LinkNotFound(f"link {name}: No such device", errno.ENODEV)
        return link

    @staticmethod
    def _claim(link: dict[str, Any], alias: str, kind: str, adopt: bool) -> None:
        if link["alias"] == alias or (not link["alias"] and adopt and link["kind"] == kind):
            return
        raise LinkExists(f"link {link['name']} exists and is not ours", errno.EEXIST)

    @staticmethod
    def _public(link: dict[str, Any]) -> LinkInfo:
        return {k: v for k, v in link.items() if k != "peer"}

    def plant(self, name: str, kind: str, *, alias: str = "", mtu: int = 1500) -> None:
        """Put a link there that cnmkit did not make (a test's "somebody else")."""
        with self._lock:
            self.host[name] = {**self._new(name, kind, mtu), "alias": alias}

    # -- the KernelOps verbs ----------------------------------------------------------------

    def link_get(self, name: str) -> LinkInfo | None:
        with self._lock:
            link = self.host.get(name)
            return None if link is None else self._public(link)

    def links(self) -> list[LinkInfo]:
        with self._lock:
            return [self._public(link) for link in self.host.values()]

    def links_owned(self, alias_prefix: str) -> list[tuple[str, str]]:
        with self._lock:
            return [(n, link["alias"]) for n, link in self.host.items()
                    if link["alias"].startswith(alias_prefix)]

    def ensure_bridge(self, name: str, *, alias: str, mtu: int, mac: str | None = None,
                      adopt: bool = False) -> bool:
        with self._lock:
            self._maybe_fail("ensure_bridge")
            created = name not in self.host
            if created:
                self.host[name] = self._new(name, "bridge", mtu, mac=mac)
                self.addresses[name] = []
            link = self.host[name]
            self._claim(link, alias, "bridge", adopt or created)
            link.update(alias=alias, mtu=mtu)
            return created

    def ensure_veth(self, host_name: str, peer_name: str, *, alias: str, mtu: int, peer_mac: str | None,
                    master: str, peer_netns_path: str | None = None, adopt: bool = True) -> bool:
        with self._lock:
            self._maybe_fail("ensure_veth")
            self._get(master)
            existing = self.host.get(host_name)
            if existing is not None:
                self._claim(existing, alias, "veth", adopt)
                existing.update(alias=alias, mtu=mtu, master=master, up=True)
                return False
            ns = peer_netns_path or HOST
            if peer_name in self.links_by_ns.get(ns, {}):
                raise LinkExists(f"create veth {host_name}: peer {peer_name} exists", errno.EEXIST)
            host = self._new(host_name, "veth", mtu, master=master, up=True, peer=(ns, peer_name))
            host["alias"] = alias
            peer = self._new(peer_name, "veth", mtu, mac=peer_mac, peer=(HOST, host_name))
            self.host[host_name] = host
            self.links_by_ns.setdefault(ns, {})[peer_name] = peer
            self.addresses[host_name] = []
            return True

    def link_delete(self, name: str, *, alias: str) -> bool:
        with self._lock:
            self._maybe_fail("link_delete")
            link = self.host.get(name)
            if link is None:
                return False
            if link["alias"] != alias:
                raise LinkExists(f"refusing to delete {name}: not owned by {alias}", errno.EEXIST)
            del self.host[name]
            self.addresses.pop(name, None)
            if link.get("peer"):                              # a veth takes its peer with it
                ns, peer = link["peer"]
                self.links_by_ns.get(ns, {}).pop(peer, None)
            for other in self.host.values():                  # ports of a deleted bridge are freed
                if other["master"] == name:
                    other["master"] = None
            return True

    def set_up(self, name: str) -> None:
        with self._lock:
            self._maybe_fail("set_up")
            self._get(name).update(up=True, operstate="UP")

    def addr_ensure(self, name: str, cidr: str) -> None:
        with self._lock:
            self._maybe_fail("addr_ensure")
            self._get(name)
            if "/" not in cidr:
                raise KernelError(f"address {cidr!r} has no prefix length", errno.EINVAL)
            if cidr not in self.addresses.setdefault(name, []):
                self.addresses[name].append(cidr)

    def addrs(self, name: str) -> list[str]:
        with self._lock:
            self._get(name)
            return list(self.addresses.get(name, []))


class FakeIptables:
    """A runner for ``Firewall`` that emulates iptables' -N -S -C -A -I -D -F -X on dict chains."""

    BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
               "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.tables: dict[tuple[str, str], dict[str, list[tuple[str, ...]]]] = {}
        self.fail_on: set[str] = set()                       # operations ("-A", ...) that fail

    def chains(self, binary: str, table: str) -> dict[str, list[tuple[str, ...]]]:
        key = (binary, table)
        if key not in self.tables:
            self.tables[key] = {c: [] for c in self.BUILTIN[table]}
        return self.tables[key]

    def __call__(self, argv: Sequence[str]) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        binary, args = argv[0], [a for a in argv[1:] if a != "-w"]
        table = "filter"
        if args[:1] == ["-t"]:
            table, args = args[1], args[2:]
        op, chain, rest = args[0], args[1], tuple(args[2:])
        if op in self.fail_on:
            return 4, "", f"injected failure of {op}"
        chains = self.chains(binary, table)
        if op == "-N":
            if chain in chains:
                return 1, "", "iptables: Chain already exists."
            chains[chain] = []
            return 0, "", ""
        if chain not in chains:
            return 1, "", f"iptables: No chain/target/match by that name ({chain})."
        rules = chains[chain]
        if op == "-S":
            lines = [f"-N {chain}"] + [shlex.join(["-A", chain, *r]) for r in rules]
            return 0, "\n".join(lines) + "\n", ""
        if op in ("-C", "-D"):
            if rest not in rules:
                return 1, "", "iptables: Bad rule (does a matching rule exist in that chain?)."
            if op == "-D":
                rules.remove(rest)
            return 0, "", ""
        if op == "-A":
            rules.append(rest)
        elif op == "-I":
            rules.insert(int(rest[0]) - 1, rest[1:])
        elif op == "-F":
            rules.clear()
        elif op == "-X":
            del chains[chain]
        else:
            return 2, "", f"unsupported {op}"
        return 0, "", ""


class FakeSysctl:
    """Stands in for drivers.sysctl.Sysctl: a dict of keys."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {"net/ipv4/ip_forward": "0", "net/ipv6/conf/all/forwarding": "0"}

    def get(self, key: str) -> str:
        return self.values[key]

    def ensure(self, key: str, value: str) -> bool:
        changed = self.values.get(key) != value
        self.values[key] = value
        return changed
