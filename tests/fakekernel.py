"""In-memory stand-ins for the kernel and for iptables, for the unit tier (no root).

``FakeKernel`` keeps links and addresses in dicts and raises the same exceptions as
``drivers.kernel.Kernel`` for the same situations (a missing master, a name owned by someone
else, a link gone), so driver tests assert end state rather than call shapes. ``fail_on`` lets a
test make one verb fail, to exercise rollback. ``FakeIptables`` is a runner for
``drivers.firewall.Firewall`` that emulates the iptables and iptables-restore commands it uses,
chains, rule order and the exact ``-S`` text included.
"""

from __future__ import annotations

import copy
import errno
import ipaddress
import itertools
import threading
from collections.abc import Sequence
from typing import Any

from drivers.errors import KernelError, KernelFeatureMissing, LinkExists, LinkNotFound
from drivers.kernel_api import LinkInfo
from drivers.naming import DOOMED_GROUP

HOST = "host"                                   # the namespace key of the fake's own netns


class FakeKernel:
    def __init__(self) -> None:
        self.links_by_ns: dict[str, dict[str, dict[str, Any]]] = {HOST: {}}
        self.addresses: dict[str, list[str]] = {}          # host-ns link name -> cidrs
        self.fail_on: dict[str, KernelError] = {}          # verb -> error to raise once
        self._index = itertools.count(2)
        self._lock = threading.Lock()
        self.has_8021q = True                              # False: a kernel like this machine's

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

    def link_exists(self, name: str) -> bool:
        with self._lock:
            return name in self.host

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

    def link_doom(self, name: str, *, alias: str, doomed_alias: str, down: bool = False) -> bool:
        with self._lock:
            self._maybe_fail("link_doom")
            link = self.host.get(name)
            if link is None:
                return False
            if link["alias"] not in (alias, doomed_alias):
                raise LinkExists(f"refusing to delete {name}: not owned by {alias}", errno.EEXIST)
            link.update(alias=doomed_alias, group=DOOMED_GROUP)
            if down:
                link["up"] = False
            return True

    def reap_doomed(self) -> None:
        self._maybe_fail("reap_doomed")
        with self._lock:
            doomed = [(name, link["alias"]) for name, link in self.host.items()
                      if link.get("group") == DOOMED_GROUP]
        for name, alias in doomed:
            self.link_delete(name, alias=alias)

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

    # -- the VLAN driver's verbs (VlanKernelOps) ---------------------------------------------

    def vlan_add(self, name: str, parent: str, vid: int, *, alias: str, mtu: int) -> None:
        with self._lock:
            self._maybe_fail("vlan_add")
            self._get(parent)
            if not self.has_8021q:
                raise KernelFeatureMissing("8021q", f"cannot create VLAN sub-interface {name}: this "
                                           "kernel has no 802.1Q VLAN support (fake)")
            if name in self.host:
                raise LinkExists(f"create vlan {name}: File exists", errno.EEXIST)
            self.host[name] = {**self._new(name, "vlan", mtu, parent=parent, vlan_id=vid),
                               "alias": alias, "up": True}
            self.addresses[name] = []

    def vlan_info(self, name: str) -> tuple[str, int] | None:
        with self._lock:
            link = self.host.get(name)
            if link is None or link["kind"] != "vlan":
                return None
            return str(link.get("parent", "")), int(link.get("vlan_id", 0))

    def enslave(self, name: str, master: str) -> None:
        with self._lock:
            self._maybe_fail("enslave")
            self._get(master)
            self._get(name).update(master=master, up=True)

    def ensure_macvlan(self, name: str, parent: str, *, alias: str, mtu: int, mac: str | None,
                       netns_path: str | None = None) -> bool:
        with self._lock:
            self._maybe_fail("ensure_macvlan")
            existing = self.host.get(name)
            if existing is not None:
                self._claim(existing, alias, "macvlan", False)
                return False
            self._get(parent)
            link = {**self._new(name, "macvlan", mtu, mac=mac, parent=parent), "alias": alias}
            self.links_by_ns.setdefault(netns_path or HOST, {})[name] = link
            return True

    def plant_vlan(self, name: str, parent: str, vid: int, *, alias: str = "") -> None:
        """A sub-interface somebody else made (the operator's own ``eth0.100``)."""
        with self._lock:
            self.host[name] = {**self._new(name, "vlan", 1500, parent=parent, vlan_id=vid), "alias": alias}


class FakeIptables:
    """A runner for ``Firewall`` that emulates iptables and iptables-restore --noflush on dict chains.

    Faithful where the firewall looks: rules are stored in the canonical form iptables itself
    keeps (``-s -d -i -o -p`` first, addresses with a prefix length, the implicit ``-m tcp``), so
    ``-C``/``-D`` by spec compare as the kernel does, and ``-S`` prints exactly what iptables
    prints (comments quoted by xtables_save_string, interface names raw). The kernel tier's
    tests/kernel/test_firewall_parity.py feeds the same commands to both and compares ``-S``.
    """

    BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
               "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.stdins: list[str] = []
        self.tables: dict[tuple[str, str], dict[str, list[tuple[str, ...]]]] = {}
        self.fail_on: set[str] = set()                       # operations ("-A", ...) that fail
        self._lock = threading.Lock()

    def chains(self, binary: str, table: str) -> dict[str, list[tuple[str, ...]]]:
        key = (binary, table)
        if key not in self.tables:
            self.tables[key] = {c: [] for c in self.BUILTIN[table]}
        return self.tables[key]

    def __call__(self, argv: Sequence[str], stdin: str | None = None, timeout: float | None = None,
                 ) -> tuple[int, str, str]:
        with self._lock:
            self.calls.append(list(argv))
            binary, args = argv[0], _strip_wait(list(argv[1:]))
            if binary.endswith("-restore"):
                self.stdins.append(stdin or "")
                return self._restore(binary[:-len("-restore")], args, stdin or "")
            table = "filter"
            if args[:1] == ["-t"]:
                table, args = args[1], args[2:]
            return self._command(binary, table, args)

    # -- iptables ---------------------------------------------------------------------------

    def _command(self, binary: str, table: str, args: list[str],
                 tables: dict[tuple[str, str], dict[str, list[tuple[str, ...]]]] | None = None,
                 ) -> tuple[int, str, str]:
        if tables is None:
            chains = self.chains(binary, table)
        else:
            chains = tables.setdefault((binary, table), {c: [] for c in self.BUILTIN[table]})
        op, chain, rest = args[0], args[1] if len(args) > 1 else "", list(args[2:])
        if op in self.fail_on:
            return 4, "", f"injected failure of {op}"
        if op == "-N":
            if chain in chains:
                return 1, "", "iptables: Chain already exists."
            chains[chain] = []
            return 0, "", ""
        if op == "-S" and not chain:                          # the whole table, in iptables' order
            builtin = [c for c in chains if self._builtin(c)]
            user = sorted(c for c in chains if not self._builtin(c))       # iptables sorts them
            text = "".join(f"-P {c} ACCEPT\n" for c in builtin) + "".join(f"-N {c}\n" for c in user)
            text += "".join(f"-A {c} {save_rule(r)}\n" for c in builtin + user for r in chains[c])
            return 0, text, ""
        if chain not in chains:
            return 1, "", f"iptables: No chain/target/match by that name ({chain})."
        rules = chains[chain]
        if op == "-S":
            return 0, self._save(binary, chain, rules), ""
        if op == "-D" and len(rest) == 1 and rest[0].isdigit():
            n = int(rest[0])
            if not 1 <= n <= len(rules):
                return 1, "", "iptables: Index of deletion too big."
            del rules[n - 1]
            return 0, "", ""
        if op in ("-C", "-D"):
            rule = canonical(binary, rest)
            if rule not in rules:
                return 1, "", "iptables: Bad rule (does a matching rule exist in that chain?)."
            if op == "-D":
                rules.remove(rule)
            return 0, "", ""
        if op == "-A":
            rules.append(canonical(binary, rest))
        elif op == "-I":
            at = 1
            if rest and rest[0].isdigit():
                at, rest = int(rest[0]), rest[1:]
            if not 1 <= at <= len(rules) + 1:
                return 1, "", "iptables: Index of insertion too big."
            rules.insert(at - 1, canonical(binary, rest))
        elif op == "-F":
            rules.clear()
        elif op == "-X":
            if rules:
                return 1, "", "iptables: Directory not empty."
            del chains[chain]
        else:
            return 2, "", f"unsupported {op}"
        return 0, "", ""

    def _builtin(self, chain: str) -> bool:
        return chain in self.BUILTIN["filter"] or chain in self.BUILTIN["nat"]

    def _save(self, binary: str, chain: str, rules: list[tuple[str, ...]]) -> str:
        head = f"-P {chain} ACCEPT\n" if self._builtin(chain) else f"-N {chain}\n"
        return head + "".join(f"-A {chain} {save_rule(r)}\n" for r in rules)

    # -- iptables-restore --noflush -----------------------------------------------------------

    def _restore(self, binary: str, args: list[str], text: str) -> tuple[int, str, str]:
        if "--noflush" not in args and "-n" not in args:
            return 2, "", "FakeIptables emulates only iptables-restore --noflush"
        work = copy.deepcopy(self.tables)
        table = ""
        for number, line in enumerate(text.split("\n"), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                table = line[1:]
                continue
            if line == "COMMIT":
                table = ""
                continue
            argv = restore_tokens(line)
            if not table or not argv:
                return 1, "", f"{binary}-restore: line {number} failed"
            rc, _, err = self._command(binary, table, argv, work)
            if rc != 0:
                return 1, "", f"{binary}-restore: line {number} failed: {err}"
        self.tables = work                    # all or nothing
        return 0, "", ""


def _strip_wait(args: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(args):
        if args[i] == "-w":
            i += 2 if i + 1 < len(args) and args[i + 1].isdigit() else 1
            continue
        out.append(args[i])
        i += 1
    return out


_BASE = ("-s", "-d", "-i", "-o", "-p")


def canonical(binary: str, argv: Sequence[str]) -> tuple[str, ...]:
    """A rule the way iptables keeps and prints it: base matches in fixed order, then the rest."""
    base: dict[str, tuple[str, ...]] = {}
    rest: list[str] = []
    proto = ""
    current_match = ""
    i, neg = 0, False
    host_len = "/128" if binary.startswith("ip6") else "/32"
    while i < len(argv):
        t = argv[i]
        if t == "!":
            neg = True
            i += 1
            continue
        if t in _BASE:
            value = argv[i + 1]
            if t in ("-s", "-d"):
                value = str(ipaddress.ip_network(value if "/" in value else value + host_len, strict=False))
            if t == "-p":
                proto = value
            base[t] = (("!",) if neg else ()) + (t, value)
        elif t == "-m":
            current_match = argv[i + 1]
            rest += ["-m", current_match]
        elif t in ("--dport", "--sport") and current_match != proto:
            current_match = proto
            rest += ["-m", proto] + (["!"] if neg else []) + [t, argv[i + 1]]
        else:
            rest += (["!"] if neg else []) + [t]
            if t.startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                rest.append(argv[i + 1])
            else:
                i -= 1
        neg = False
        i += 2
    return tuple(itertools.chain.from_iterable(base[k] for k in _BASE if k in base)) + tuple(rest)


_SAVE_PLAIN = set("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def save_string(value: str) -> str:
    """xtables_save_string(): plain when only [_-0-9a-zA-Z], else quoted with \\ " ' escaped."""
    if value and set(value) <= _SAVE_PLAIN:
        return value
    return '"' + "".join("\\" + c if c in "\"\\'" else c for c in value) + '"'


def save_rule(rule: Sequence[str]) -> str:
    """One rule as ``iptables -S`` prints it: only a comment's text is quoted."""
    return " ".join(save_string(t) if i and rule[i - 1] == "--comment" else t for i, t in enumerate(rule))


def restore_tokens(line: str) -> list[str]:
    """Split one iptables-restore line as add_param_to_argv() does: "..." with \\ escapes."""
    tokens: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for c in line:
        if quoted:
            if escaped:
                buf.append(c)
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
            else:
                buf.append(c)
        elif c == '"':
            quoted = True
        elif c in " \t":
            if buf:
                tokens.append("".join(buf))
                buf = []
        else:
            buf.append(c)
    if buf:
        tokens.append("".join(buf))
    return tokens


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
