"""Docker-compatible isolation and masquerading for bridge networks, through iptables.

Why iptables and not nftables: dockerd installs its rules (and ``FORWARD`` policy DROP) through
the ``iptables`` command; a packet dropped by an iptables-nft base chain stays dropped whatever
an accept in one of our own nft base chains says. So we use the same tool, in our own chains,
jumped to from the top of Docker's:

    filter FORWARD     -> CNMKIT-FORWARD     per-network accept / drop groups
    filter (no jump)      CNMKIT-ISOLATION   "-o <bridge> DROP" for every cnmkit bridge
    nat    POSTROUTING -> CNMKIT-POSTROUTING masquerade of each non-internal IPv4 subnet

Isolation is Docker's two-stage scheme: traffic leaving a cnmkit bridge for another interface
first visits CNMKIT-ISOLATION, which drops it if it is headed into any other cnmkit bridge. That
works for custom bridge names too, where an ``-o cnm-+`` wildcard would not.

Every per-network rule carries ``-m comment --comment cnmkit:<network_id[:12]>``; removal deletes
exactly the rules with that mark, so it needs only the network id and never touches rules of
anybody else. Ensure is ``-C`` before ``-A``, removal tolerates absence: both are repeatable.
Commands run in the calling thread's network namespace; the runner is injectable so the unit
tier can record and emulate them (drivers/fakekernel.py: FakeIptables).
"""

from __future__ import annotations

import itertools
import shlex
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from drivers import naming
from drivers.errors import KernelError
from drivers.sysctl import IPV4_FORWARD, Sysctl, SysctlOps

FORWARD_CHAIN = "CNMKIT-FORWARD"
ISOLATION_CHAIN = "CNMKIT-ISOLATION"
NAT_CHAIN = "CNMKIT-POSTROUTING"
DNAT_CHAIN = "CNMKIT-DNAT"
JUMP_MARK = "cnmkit"

Result = tuple[int, str, str]                 # returncode, stdout, stderr
Runner = Callable[[Sequence[str]], Result]


def run_command(argv: Sequence[str]) -> Result:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: command not found"
    return proc.returncode, proc.stdout, proc.stderr


@dataclass(frozen=True)
class NetworkRules:
    """What the firewall needs to know about one bridge network."""

    network_id: str
    bridge: str
    subnets_v4: tuple[str, ...] = ()
    subnets_v6: tuple[str, ...] = ()
    internal: bool = False


Rule = tuple[str, ...]


def forward_rules(net: NetworkRules) -> list[Rule]:
    """The filter rules of one network, in order: each group's drops precede its accepts."""
    b = net.bridge
    if net.internal:
        return [("-i", b, "-o", b, "-j", "ACCEPT"),
                ("-i", b, "!", "-o", b, "-j", "DROP"),
                ("-o", b, "!", "-i", b, "-j", "DROP")]
    return [("-i", b, "-o", b, "-j", "ACCEPT"),
            ("-i", b, "!", "-o", b, "-j", ISOLATION_CHAIN),
            ("-i", b, "!", "-o", b, "-j", "ACCEPT"),
            ("-o", b, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")]


def isolation_rules(net: NetworkRules) -> list[Rule]:
    return [("-o", net.bridge, "-j", "DROP")]


def nat_rules(net: NetworkRules) -> list[Rule]:
    if net.internal:
        return []
    return [("-s", s, "!", "-o", net.bridge, "-j", "MASQUERADE") for s in net.subnets_v4]


class Firewall:
    """Programs and removes the iptables rules of cnmkit bridge networks."""

    def __init__(self, *, iptables: str = "iptables", ip6tables: str = "ip6tables",
                 run: Runner = run_command, sysctl: SysctlOps | None = None) -> None:
        self.iptables = iptables
        self.ip6tables = ip6tables
        self._run = run
        self._sysctl: SysctlOps = sysctl if sysctl is not None else Sysctl()
        # -C then -A is not atomic; -w only serialises single commands across processes.
        # Re-entrant: removing the last network's rules also removes the chains, under one hold.
        self._lock = threading.RLock()

    def ensure_network(self, net: NetworkRules) -> None:
        mark = naming.firewall_mark(net.network_id)
        with self._lock:
            families = [self.iptables] + ([self.ip6tables] if net.subnets_v6 else [])
            for binary in families:
                self._ensure_chains(binary)
                for rule in isolation_rules(net):
                    self._ensure_rule(binary, "filter", ISOLATION_CHAIN, _marked(rule, mark))
                for rule in forward_rules(net):
                    self._ensure_rule(binary, "filter", FORWARD_CHAIN, _marked(rule, mark))
            for rule in nat_rules(net):
                self._ensure_rule(self.iptables, "nat", NAT_CHAIN, _marked(rule, mark))
        if not net.internal:
            # IPv4 forwarding, as dockerd does, for the masquerade path. IPv6 forwarding is left
            # to the operator: turning it on globally makes the kernel ignore router
            # advertisements (accept_ra=1), which can take a SLAAC host's own default route away,
            # and without NAT66 outside reach needs a routed prefix the operator sets up anyway.
            self._sysctl.ensure(IPV4_FORWARD, "1")

    def remove_network(self, network_id: str) -> int:
        """Delete every rule marked with this network; returns how many went."""
        mark = naming.firewall_mark(network_id)
        removed = 0
        with self._lock:
            for binary, table, chain in self._our_chains():
                for rule in self._list(binary, table, chain):
                    if _has_mark(rule, mark):
                        self._must(binary, "-t", table, "-D", chain, *rule)
                        removed += 1
            if removed and not any(self._list(b, t, c) for b, t, c in self._our_chains()):
                self.remove_all()              # the last network went: leave no chain or jump behind
        return removed

    def marks(self) -> set[tuple[str, str]]:
        """``(network id prefix, endpoint id prefix or "")`` of every marked rule: the reconciler's view."""
        root = naming.ALIAS_ROOT
        found: set[tuple[str, str]] = set()
        with self._lock:
            for binary, table, chain in self._our_chains():
                for rule in self._list(binary, table, chain):
                    for a, b in itertools.pairwise(rule):
                        if a == "--comment" and b.startswith(root):
                            net, _, ep = b[len(root):].partition(":")
                            found.add((net, ep))
        return found

    def remove_all(self) -> None:
        """Drop our jumps and chains altogether (the CLI's cleanup)."""
        with self._lock:
            for binary, table, parent, jump in self._our_jumps():
                while self._cmd(binary, "-t", table, "-C", parent, *jump)[0] == 0:
                    self._must(binary, "-t", table, "-D", parent, *jump)
            for binary, table, chain in self._our_chains():
                self._cmd(binary, "-t", table, "-F", chain)
            for binary, table, chain in self._our_chains():
                self._cmd(binary, "-t", table, "-X", chain)

    # -- published ports ----------------------------------------------------------------------

    def publish(self, net: NetworkRules, endpoint_id: str, container_ip: str,
                ports: Sequence[tuple[str, int, int, str]]) -> None:
        """DNAT ``(proto, host_port, port, host_ip)`` to the container, accept it, hairpin it.

        Replaces whatever the endpoint published before, so a repeated call converges.
        """
        mark = f"{naming.firewall_mark(net.network_id)}:{endpoint_id[:12]}"
        with self._lock:
            self._remove_exact(mark)
            self._ensure_chains(self.iptables)
            self._ensure_chain(self.iptables, "nat", DNAT_CHAIN)
            for parent, match in _DNAT_JUMPS:
                if self._cmd(self.iptables, "-t", "nat", "-C", parent, *_jump(DNAT_CHAIN, *match))[0] != 0:
                    self._must(self.iptables, "-t", "nat", "-A", parent, *_jump(DNAT_CHAIN, *match))
            b, ip = net.bridge, container_ip
            for proto, host_port, port, host_ip in ports:
                dst = ("-d", host_ip) if host_ip else ()
                dnat = ("!", "-i", b, *dst, "-p", proto, "--dport", str(host_port),
                        "-j", "DNAT", "--to-destination", f"{ip}:{port}")
                accept = ("-d", f"{ip}/32", "!", "-i", b, "-o", b, "-p", proto, "--dport", str(port), "-j", "ACCEPT")
                hairpin = ("-s", f"{ip}/32", "-d", f"{ip}/32", "-p", proto, "--dport", str(port), "-j", "MASQUERADE")
                self._ensure_rule(self.iptables, "nat", DNAT_CHAIN, _marked(dnat, mark))
                self._ensure_rule(self.iptables, "filter", FORWARD_CHAIN, _marked(accept, mark))
                self._ensure_rule(self.iptables, "nat", NAT_CHAIN, _marked(hairpin, mark))

    def unpublish(self, network_id: str, endpoint_id: str) -> int:
        with self._lock:
            return self._remove_exact(f"{naming.firewall_mark(network_id)}:{endpoint_id[:12]}")

    def _remove_exact(self, mark: str) -> int:
        removed = 0
        for binary, table, chain in self._our_chains():
            for rule in self._list(binary, table, chain):
                if _has_exact_mark(rule, mark):
                    self._must(binary, "-t", table, "-D", chain, *rule)
                    removed += 1
        return removed

    def _our_jumps(self) -> list[tuple[str, str, str, Rule]]:
        """(binary, table, built-in chain, jump rule) of every jump into our chains."""
        jumps = [(self.iptables, "nat", parent, _jump(DNAT_CHAIN, *match)) for parent, match in _DNAT_JUMPS]
        jumps.append((self.iptables, "nat", "POSTROUTING", _jump(NAT_CHAIN)))
        for binary in (self.iptables, self.ip6tables):
            jumps.append((binary, "filter", "FORWARD", _jump(FORWARD_CHAIN)))
        return jumps

    # -- helpers ----------------------------------------------------------------------------

    def _our_chains(self) -> list[tuple[str, str, str]]:
        return [(self.iptables, "filter", FORWARD_CHAIN), (self.iptables, "filter", ISOLATION_CHAIN),
                (self.iptables, "nat", NAT_CHAIN), (self.iptables, "nat", DNAT_CHAIN),
                (self.ip6tables, "filter", FORWARD_CHAIN), (self.ip6tables, "filter", ISOLATION_CHAIN)]

    def _ensure_chains(self, binary: str) -> None:
        self._ensure_chain(binary, "filter", ISOLATION_CHAIN)
        self._ensure_chain(binary, "filter", FORWARD_CHAIN)
        self._ensure_jump(binary, "filter", "FORWARD", FORWARD_CHAIN)
        if binary == self.iptables:
            self._ensure_chain(binary, "nat", NAT_CHAIN)
            self._ensure_jump(binary, "nat", "POSTROUTING", NAT_CHAIN)

    def _ensure_chain(self, binary: str, table: str, chain: str) -> None:
        if self._cmd(binary, "-t", table, "-S", chain)[0] != 0:
            rc, _, err = self._cmd(binary, "-t", table, "-N", chain)
            if rc != 0 and self._cmd(binary, "-t", table, "-S", chain)[0] != 0:
                raise KernelError(f"{binary} -t {table} -N {chain}: {err.strip()}")

    def _ensure_jump(self, binary: str, table: str, parent: str, chain: str) -> None:
        if self._cmd(binary, "-t", table, "-C", parent, *_jump(chain))[0] != 0:
            self._must(binary, "-t", table, "-I", parent, "1", *_jump(chain))

    def _ensure_rule(self, binary: str, table: str, chain: str, rule: Rule) -> None:
        if self._cmd(binary, "-t", table, "-C", chain, *rule)[0] != 0:
            self._must(binary, "-t", table, "-A", chain, *rule)

    def _list(self, binary: str, table: str, chain: str) -> list[Rule]:
        """Rules of ``chain`` as argument tuples (``iptables -S`` prints them restorable)."""
        rc, out, _ = self._cmd(binary, "-t", table, "-S", chain)
        if rc != 0:                            # no such chain (or no ip6tables): nothing of ours
            return []
        prefix = ("-A", chain)
        rules = []
        for line in out.splitlines():
            tokens = tuple(shlex.split(line))
            if tokens[:2] == prefix:
                rules.append(tokens[2:])
        return rules

    def _cmd(self, binary: str, *args: str) -> Result:
        return self._run([binary, "-w", *args])

    def _must(self, binary: str, *args: str) -> None:
        rc, _, err = self._cmd(binary, *args)
        if rc != 0:
            raise KernelError(f"{binary} {' '.join(args)}: {err.strip() or f'exit {rc}'}")


def _marked(rule: Rule, mark: str) -> Rule:
    # Comment before the target, where iptables -S prints it, so -C/-S/-D all agree.
    target_at = rule.index("-j")
    return (*rule[:target_at], "-m", "comment", "--comment", mark, *rule[target_at:])


def _jump(chain: str, *match: str) -> Rule:
    return (*match, "-m", "comment", "--comment", JUMP_MARK, "-j", chain)


# Published ports are reached like Docker's: traffic to any local address (not loopback, which
# would need a userland proxy) goes through the DNAT chain, from outside and from the host itself.
_LOCAL = ("-m", "addrtype", "--dst-type", "LOCAL")
_DNAT_JUMPS = (("PREROUTING", _LOCAL), ("OUTPUT", ("!", "-d", "127.0.0.0/8", *_LOCAL)))


def _has_mark(rule: Rule, mark: str) -> bool:
    """``mark`` itself, or one of its sub-marks (a network's mark covers its endpoints' port rules)."""
    return any(a == "--comment" and (b == mark or b.startswith(mark + ":")) for a, b in itertools.pairwise(rule))


def _has_exact_mark(rule: Rule, mark: str) -> bool:
    return any(a == "--comment" and b == mark for a, b in itertools.pairwise(rule))
