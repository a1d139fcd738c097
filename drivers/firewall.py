"""Docker-compatible isolation and masquerading for bridge networks, through iptables.

Why iptables and not nftables: dockerd installs its rules (and ``FORWARD`` policy DROP) through
the ``iptables`` command; a packet dropped by an iptables-nft base chain stays dropped whatever
an accept in one of our own nft base chains says. So we use the same tool, in our own chains,
jumped to from Docker's:

    filter FORWARD     -> CNMKIT-FORWARD     per-network accept / drop groups
    filter (no jump)      CNMKIT-ISOLATION   "-o <bridge> DROP" for every cnmkit bridge
    nat    POSTROUTING -> CNMKIT-POSTROUTING masquerade of each non-internal IPv4 subnet
    nat    PREROUTING, OUTPUT -> CNMKIT-DNAT published ports

Our FORWARD jump sits right after dockerd's ``-j DOCKER-USER`` when that exists (else first), so
an administrator's DOCKER-USER rules still apply to our traffic, as they do to Docker's.

Isolation is Docker's two-stage scheme: traffic leaving a cnmkit bridge for another interface
first visits CNMKIT-ISOLATION, which drops it if it is headed into any other cnmkit bridge. That
works for custom bridge names too, where an ``-o cnm-+`` wildcard would not.

Marks. Every per-network rule carries ``-m comment --comment cnmkit:<network_id>`` with the WHOLE
64-hex id (comments may hold 256 chars); a published port's rules carry
``cnmkit:<network_id>:<endpoint_id>``. Removal compares ids for equality, never prefixes, so
deleting one network can never touch the rules of another whose id starts the same.

Reading our chains. We never re-parse a rule into arguments (``iptables -S`` prints interface
names raw and quotes comments its own way, so a ``shlex`` round trip breaks on a quote or a
backslash). Instead a rule is *found* by its mark, with a regex anchored on the exact text
iptables prints for our marks (hex only, so always ``--comment "cnmkit:..."``), and *deleted by
its rule number* (its position among the ``-A`` lines of ``-S CHAIN``). Any odd character in
somebody's interface name or comment then can neither raise nor hide one of our rules. Rule
numbers shift only when a rule of that chain is removed or inserted; all such changes to our
chains are ours and happen under ``self._lock``, in the same hold as the listing.

Batching. Deletions and a port publish's appends go to ``iptables-restore --noflush`` as one
input per binary (``-D CHAIN N`` highest first, then ``-A`` lines): a publish of 1,000 ports is a
handful of processes instead of 6,000, and each table's change is one atomic commit, so an
endpoint's ports are replaced without a window where none or both sets are installed.

Bounded waits. Every call passes ``-w <wait>`` (the xtables lock, used by iptables-legacy) and
runs under a subprocess timeout slightly above it; a timeout kills the process group and raises
KernelError, so a lock somebody holds forever cannot stall our worker threads forever.

Ensure is ``-C`` before ``-A``, removal tolerates absence: both are repeatable. Commands run in
the calling thread's network namespace; the runner is injectable so the unit tier can record and
emulate them (tests/fakekernel.py: FakeIptables, which prints what real iptables prints).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from drivers import naming
from drivers.errors import KernelError
from drivers.sysctl import IPV4_FORWARD, Sysctl, SysctlOps

FORWARD_CHAIN = "CNMKIT-FORWARD"
ISOLATION_CHAIN = "CNMKIT-ISOLATION"
NAT_CHAIN = "CNMKIT-POSTROUTING"
DNAT_CHAIN = "CNMKIT-DNAT"
DOCKER_USER_CHAIN = "DOCKER-USER"
JUMP_MARK = "cnmkit"

WAIT_SECONDS = 10                  # iptables -w: how long to wait for the xtables lock
TIMEOUT_GRACE = 5.0                # the subprocess gets this much longer before we give up on it

Result = tuple[int, str, str]                 # returncode, stdout, stderr
# argv, stdin (None: none), timeout in seconds -> Result; raises KernelError on timeout
Runner = Callable[[Sequence[str], "str | None", float], Result]

# The text iptables -S prints for one of our marks: hex ids only, so it is always quoted (the
# colon) and never escaped. Anchored on the spaces around it, so a comment that merely contains
# this text (printed with escaped quotes) does not match.
_MARK_RE = re.compile(r'(?:^| )--comment "cnmkit:([0-9a-f]{12,64})(?::([0-9a-f]{12,64}))?"(?= |$)')
_HEX_ID = re.compile(r"^[0-9a-f]{12,64}\Z")
_RESTORE_SAFE = re.compile(r"^[A-Za-z0-9_.:/,!=+@%-]+\Z")


def run_command(argv: Sequence[str], stdin: str | None = None, timeout: float = WAIT_SECONDS + TIMEOUT_GRACE,
                ) -> Result:
    """Run one iptables process; on timeout kill its whole process group and raise KernelError."""
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: command not found"
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)     # its own session: children (if any) go too
        proc.communicate()
        raise KernelError(f"{' '.join(argv[:6])}: no answer within {timeout:g} s "
                          "(is the xtables lock held by another process?)") from None
    return proc.returncode, out, err


@dataclass(frozen=True)
class NetworkRules:
    """What the firewall needs to know about one bridge network."""

    network_id: str
    bridge: str
    subnets_v4: tuple[str, ...] = ()
    subnets_v6: tuple[str, ...] = ()
    internal: bool = False
    icc: bool = True                   # com.docker.network.bridge.enable_icc
    masquerade: bool = True            # com.docker.network.bridge.enable_ip_masquerade


Rule = tuple[str, ...]

# Rules are written in the order iptables prints them (-s -d -i -o -p, then matches, then the
# target), so what -S shows is what we wrote, and -C finds it.


def forward_rules(net: NetworkRules) -> list[Rule]:
    """The filter rules of one network, in order: each group's drops precede its accepts."""
    b = net.bridge
    icc = ("-i", b, "-o", b, "-j", "ACCEPT" if net.icc else "DROP")   # Docker's enable_icc=false
    if net.internal:
        return [icc,
                ("-i", b, "!", "-o", b, "-j", "DROP"),
                ("!", "-i", b, "-o", b, "-j", "DROP")]
    return [icc,
            ("-i", b, "!", "-o", b, "-j", ISOLATION_CHAIN),
            ("-i", b, "!", "-o", b, "-j", "ACCEPT"),
            ("-o", b, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")]


def isolation_rules(net: NetworkRules) -> list[Rule]:
    return [("-o", net.bridge, "-j", "DROP")]


def nat_rules(net: NetworkRules) -> list[Rule]:
    if net.internal or not net.masquerade:
        return []
    return [("-s", s, "!", "-o", net.bridge, "-j", "MASQUERADE") for s in net.subnets_v4]


def port_rules(bridge: str, container_ip: str, proto: str, host_port: int, port: int,
               host_ip: str) -> list[tuple[str, str, Rule]]:
    """``(table, chain, rule)`` of one published port: DNAT in, accept forward, hairpin masquerade."""
    dst = ("-d", f"{host_ip}/32") if host_ip else ()
    ip = f"{container_ip}/32"
    return [
        ("nat", DNAT_CHAIN, (*dst, "!", "-i", bridge, "-p", proto, "-m", proto, "--dport", str(host_port),
                             "-j", "DNAT", "--to-destination", f"{container_ip}:{port}")),
        ("filter", FORWARD_CHAIN, ("-d", ip, "!", "-i", bridge, "-o", bridge, "-p", proto, "-m", proto,
                                   "--dport", str(port), "-j", "ACCEPT")),
        ("nat", NAT_CHAIN, ("-s", ip, "-d", ip, "-p", proto, "-m", proto, "--dport", str(port),
                            "-j", "MASQUERADE")),
    ]


def parse_mark(line: str) -> tuple[str, str] | None:
    """``(network id, endpoint id or "")`` of the cnmkit mark on one ``-S`` line, if it has one."""
    found = _MARK_RE.search(line)
    return (found.group(1), found.group(2) or "") if found else None


def restore_line(tokens: Iterable[str]) -> str:
    """One iptables-restore line: a token is quoted the way iptables-restore unquotes it."""
    out = []
    for t in tokens:
        if _RESTORE_SAFE.match(t):
            out.append(t)
        elif not t or any(c in t for c in "\n\r\0"):
            raise KernelError(f"cannot pass {t!r} to iptables-restore")
        else:
            out.append('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return " ".join(out)


# A batch for iptables-restore: table -> lines (``-D`` by number and ``-A``/``-I``, already ordered).
Batch = dict[str, list[Rule]]


class Firewall:
    """Programs and removes the iptables rules of cnmkit bridge networks."""

    def __init__(self, *, iptables: str = "iptables", ip6tables: str = "ip6tables",
                 run: Runner = run_command, sysctl: SysctlOps | None = None,
                 wait: int = WAIT_SECONDS, timeout: float | None = None) -> None:
        self.iptables = iptables
        self.ip6tables = ip6tables
        self._run = run
        self._sysctl: SysctlOps = sysctl if sysctl is not None else Sysctl()
        self.wait = wait
        self.timeout = timeout if timeout is not None else wait + TIMEOUT_GRACE
        # -C then -A is not atomic, -w only serialises single commands across processes, and rule
        # numbers are valid only until the next delete or insert: one hold for list-then-change.
        # Re-entrant: removing the last network's rules also removes the chains, under one hold.
        self._lock = threading.RLock()

    def ensure_network(self, net: NetworkRules) -> None:
        """Chains, jumps and this network's rules, added where missing.

        Issue 11 item 2: each ``iptables`` process costs milliseconds, and a create used to run
        22 of them (-S and -N per chain, -C then -A per rule). Now each table is read once with
        ``-S`` and everything missing goes in one ``iptables-restore --noflush`` per binary: 3
        processes for a new network. A rule found by the listing is presence by mark; when some
        of this network's rules are there already (a reconciler re-ensure, a half-made network),
        each rule of that chain is still checked with ``-C``, as before.
        """
        mark = naming.firewall_mark(net.network_id)
        with self._lock:
            families = [self.iptables] + ([self.ip6tables] if net.subnets_v6 else [])
            for binary in families:
                if not self._ensure_family(binary, net, mark):
                    self._ensure_family_by_rule(binary, net, mark)
        if not net.internal and net.masquerade:
            # IPv4 forwarding, as dockerd does, for the masquerade path. IPv6 forwarding is left
            # to the operator: turning it on globally makes the kernel ignore router
            # advertisements (accept_ra=1), which can take a SLAAC host's own default route away,
            # and without NAT66 outside reach needs a routed prefix the operator sets up anyway.
            self._sysctl.ensure(IPV4_FORWARD, "1")

    def _ensure_family(self, binary: str, net: NetworkRules, mark: str) -> bool:
        """``ensure_network`` for one binary from whole-table listings, one restore (False: a
        table could not be listed; the caller then takes the command-per-rule path)."""
        tables = ["filter"] + (["nat"] if binary == self.iptables else [])
        listed = {table: self._table(binary, table) for table in tables}
        if any(v is None for v in listed.values()):
            return False
        batch: Batch = {}
        filt = listed["filter"] or {}
        for chain in (ISOLATION_CHAIN, FORWARD_CHAIN):
            if chain not in filt:
                batch.setdefault("filter", []).append(("-N", chain))
                filt[chain] = []
        batch.setdefault("filter", []).extend(self._forward_jump_fix(filt.get("FORWARD", [])))
        wanted = [("filter", ISOLATION_CHAIN, isolation_rules(net)), ("filter", FORWARD_CHAIN, forward_rules(net))]
        if binary == self.iptables:
            nat = listed["nat"] or {}
            if NAT_CHAIN not in nat:
                batch.setdefault("nat", []).append(("-N", NAT_CHAIN))
                nat[NAT_CHAIN] = []
            jump = _jump(NAT_CHAIN)
            if f"-A POSTROUTING {' '.join(jump)}" not in nat.get("POSTROUTING", []):
                batch.setdefault("nat", []).append(("-I", "POSTROUTING", "1", *jump))
            wanted.append(("nat", NAT_CHAIN, nat_rules(net)))
        for table, chain, rules in wanted:
            lines = (listed[table] or {}).get(chain, [])
            ours = any(parse_mark(line) == (net.network_id, "") for line in lines)
            for rule in rules:
                marked = _marked(rule, mark)
                if not ours or self._cmd(binary, "-t", table, "-C", chain, *marked)[0] != 0:
                    batch.setdefault(table, []).append(("-A", chain, *marked))
        self._restore(binary, batch)
        return True

    def _ensure_family_by_rule(self, binary: str, net: NetworkRules, mark: str) -> None:
        """The command-per-rule path: -S/-N per chain, -C then -A per rule."""
        self._ensure_chains(binary)
        for rule in isolation_rules(net):
            self._ensure_rule(binary, "filter", ISOLATION_CHAIN, _marked(rule, mark))
        for rule in forward_rules(net):
            self._ensure_rule(binary, "filter", FORWARD_CHAIN, _marked(rule, mark))
        if binary == self.iptables:
            for rule in nat_rules(net):
                self._ensure_rule(self.iptables, "nat", NAT_CHAIN, _marked(rule, mark))

    def missing(self, net: NetworkRules) -> list[str]:
        """What ``ensure_network`` would add, found with ``-C`` only: the reconciler's read-only check.

        Lets a periodic reconcile pass leave a complete network's chains untouched (no append, no
        jump re-insert) and lets ``cnmkit reconcile --dry-run`` say what it would do.
        """
        mark = naming.firewall_mark(net.network_id)
        wanted: list[tuple[str, str, str, Rule]] = []
        with self._lock:
            families = [self.iptables] + ([self.ip6tables] if net.subnets_v6 else [])
            for binary in families:
                wanted.append((binary, "filter", "FORWARD", _jump(FORWARD_CHAIN)))
                wanted += [(binary, "filter", ISOLATION_CHAIN, _marked(r, mark)) for r in isolation_rules(net)]
                wanted += [(binary, "filter", FORWARD_CHAIN, _marked(r, mark)) for r in forward_rules(net)]
            if nat_rules(net):
                wanted.append((self.iptables, "nat", "POSTROUTING", _jump(NAT_CHAIN)))
            wanted += [(self.iptables, "nat", NAT_CHAIN, _marked(r, mark)) for r in nat_rules(net)]
            return [f"{binary} -t {table} -A {chain} {' '.join(rule)}" for binary, table, chain, rule in wanted
                    if self._cmd(binary, "-t", table, "-C", chain, *rule)[0] != 0]

    def remove_network(self, network_id: str) -> int:
        """Delete every rule marked with exactly this network id (its ports' too); returns how many.

        One ``-S`` per table and one restore per binary (the last network's removal takes the
        jumps and chains out in the same restore): 5 processes instead of 34. Should that restore
        fail (a jump printed otherwise than we wrote it keeps a chain referenced), the
        command-per-rule path below redoes it from a fresh listing.
        """
        _check_hex(network_id, "network id")
        with self._lock:
            try:
                return self._remove_network_batched(network_id)
            except KernelError:
                pass
            removed = self._delete_marked(lambda net, ep: net == network_id)
            if removed and not any(self._list(b, t, c) for b, t, c in self._our_chains()):
                self.remove_all()              # the last network went: leave no chain or jump behind
        return removed

    def _remove_network_batched(self, network_id: str) -> int:
        listed = {key: self._table(*key) for key in dict.fromkeys((b, t) for b, t, _ in self._our_chains())}
        batches: dict[str, Batch] = {}
        removed = left = 0
        for binary, table, chain in self._our_chains():
            lines = (listed[(binary, table)] or {}).get(chain, [])
            numbers = [i for i, line in enumerate(lines, 1)
                       if (found := parse_mark(line)) is not None and found[0] == network_id]
            left += len(lines) - len(numbers)
            if numbers:
                batches.setdefault(binary, {}).setdefault(table, []).extend(
                    ("-D", chain, str(n)) for n in reversed(numbers))
                removed += len(numbers)
        if removed and not left:               # the last network went: leave no chain or jump behind
            for binary, table, parent, jump in self._our_jumps():
                lines = (listed[(binary, table)] or {}).get(parent, [])
                text = f"-A {parent} {' '.join(jump)}"
                batches.setdefault(binary, {}).setdefault(table, []).extend(
                    ("-D", parent, str(n)) for n in reversed([i for i, x in enumerate(lines, 1) if x == text]))
            for binary, table, chain in self._our_chains():
                if chain in (listed[(binary, table)] or {}):
                    batches.setdefault(binary, {}).setdefault(table, []).append(("-X", chain))
        for binary, batch in batches.items():
            self._restore(binary, batch)
        return removed

    def _table(self, binary: str, table: str) -> dict[str, list[str]] | None:
        """``-S`` of a whole table: chain -> its ``-A`` lines (line i is rule number i + 1), every
        chain listed even when empty; None when the binary or table is not there."""
        rc, out, _ = self._cmd(binary, "-t", table, "-S")
        if rc != 0:
            return None
        chains: dict[str, list[str]] = {}
        for line in out.split("\n"):
            if line.startswith(("-P ", "-N ")):
                chains.setdefault(line.split(" ")[1], [])
            elif line.startswith("-A "):
                chains.setdefault(line.split(" ", 2)[1], []).append(line)
        return chains

    def marks(self) -> set[tuple[str, str]]:
        """``(network id, endpoint id or "")`` of every marked rule: the reconciler's view."""
        found: set[tuple[str, str]] = set()
        with self._lock:
            listed = {key: self._table(*key) for key in dict.fromkeys((b, t) for b, t, _ in self._our_chains())}
            for binary, table, chain in self._our_chains():
                for line in (listed[(binary, table)] or {}).get(chain, []):
                    mark = parse_mark(line)
                    if mark is not None:
                        found.add(mark)
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

        Replaces whatever the endpoint published before, so a repeated call converges. The old
        rules' deletion and all new rules go in one iptables-restore: one commit per table.
        """
        _check_hex(endpoint_id, "endpoint id")
        mark = f"{naming.firewall_mark(net.network_id)}:{endpoint_id}"
        adds: Batch = {"nat": [], "filter": []}
        for proto, host_port, port, host_ip in ports:
            for table, chain, rule in port_rules(net.bridge, container_ip, proto, host_port, port, host_ip):
                adds[table].append(("-A", chain, *_marked(rule, mark)))
        with self._lock:
            self._ensure_chains(self.iptables)
            self._ensure_chain(self.iptables, "nat", DNAT_CHAIN)
            for parent, match in _DNAT_JUMPS:
                if self._cmd(self.iptables, "-t", "nat", "-C", parent, *_jump(DNAT_CHAIN, *match))[0] != 0:
                    self._must(self.iptables, "-t", "nat", "-A", parent, *_jump(DNAT_CHAIN, *match))
            batches = self._deletions(lambda n, e: (n, e) == (net.network_id, endpoint_id),
                                      binaries=(self.iptables,))
            batch = batches.setdefault(self.iptables, {})
            for table, lines in adds.items():
                batch.setdefault(table, []).extend(lines)
            self._restore(self.iptables, batch)

    def unpublish(self, network_id: str, endpoint_id: str) -> int:
        _check_hex(network_id, "network id")
        _check_hex(endpoint_id, "endpoint id")
        with self._lock:
            return self._delete_marked(lambda n, e: (n, e) == (network_id, endpoint_id))

    # -- deletion by mark, in batches ----------------------------------------------------------

    def _deletions(self, match: Callable[[str, str], bool],
                   binaries: Sequence[str] | None = None) -> dict[str, Batch]:
        """``-D CHAIN N`` lines (highest N first, so earlier ones do not shift later ones)."""
        out: dict[str, Batch] = {}
        chains = [(b, t, c) for b, t, c in self._our_chains() if binaries is None or b in binaries]
        listed = {key: self._table(*key) for key in dict.fromkeys((b, t) for b, t, _ in chains)}  # one -S a table
        for binary, table, chain in chains:
            numbers = [i for i, line in enumerate((listed[(binary, table)] or {}).get(chain, []), 1)
                       if (mark := parse_mark(line)) is not None and match(*mark)]
            if numbers:
                lines = out.setdefault(binary, {}).setdefault(table, [])
                lines.extend(("-D", chain, str(n)) for n in reversed(numbers))
        return out

    def _delete_marked(self, match: Callable[[str, str], bool]) -> int:
        removed = 0
        for binary, batch in self._deletions(match).items():
            self._restore(binary, batch)
            removed += sum(len(lines) for lines in batch.values())
        return removed

    def _restore(self, binary: str, batch: Batch) -> None:
        """Apply ``batch`` with one ``iptables-restore --noflush``: each table is one commit."""
        text = "".join(f"*{table}\n" + "".join(restore_line(line) + "\n" for line in lines) + "COMMIT\n"
                       for table, lines in batch.items() if lines)
        if not text:
            return
        argv = [f"{binary}-restore", "-w", str(self.wait), "--noflush"]
        rc, _, err = self._run(argv, text, self.timeout)
        if rc != 0:
            raise KernelError(f"{argv[0]} --noflush: {err.strip()[:500] or f'exit {rc}'}")

    # -- helpers ----------------------------------------------------------------------------

    def _our_jumps(self) -> list[tuple[str, str, str, Rule]]:
        """(binary, table, built-in chain, jump rule) of every jump into our chains."""
        jumps = [(self.iptables, "nat", parent, _jump(DNAT_CHAIN, *match)) for parent, match in _DNAT_JUMPS]
        jumps.append((self.iptables, "nat", "POSTROUTING", _jump(NAT_CHAIN)))
        for binary in (self.iptables, self.ip6tables):
            jumps.append((binary, "filter", "FORWARD", _jump(FORWARD_CHAIN)))
        return jumps

    def _our_chains(self) -> list[tuple[str, str, str]]:
        return [(self.iptables, "filter", FORWARD_CHAIN), (self.iptables, "filter", ISOLATION_CHAIN),
                (self.iptables, "nat", NAT_CHAIN), (self.iptables, "nat", DNAT_CHAIN),
                (self.ip6tables, "filter", FORWARD_CHAIN), (self.ip6tables, "filter", ISOLATION_CHAIN)]

    def _ensure_chains(self, binary: str) -> None:
        self._ensure_chain(binary, "filter", ISOLATION_CHAIN)
        self._ensure_chain(binary, "filter", FORWARD_CHAIN)
        self._ensure_forward_jump(binary)
        if binary == self.iptables:
            self._ensure_chain(binary, "nat", NAT_CHAIN)
            if self._cmd(binary, "-t", "nat", "-C", "POSTROUTING", *_jump(NAT_CHAIN))[0] != 0:
                self._must(binary, "-t", "nat", "-I", "POSTROUTING", "1", *_jump(NAT_CHAIN))

    def _ensure_chain(self, binary: str, table: str, chain: str) -> None:
        if self._cmd(binary, "-t", table, "-S", chain)[0] != 0:
            rc, _, err = self._cmd(binary, "-t", table, "-N", chain)
            if rc != 0 and self._cmd(binary, "-t", table, "-S", chain)[0] != 0:
                raise KernelError(f"{binary} -t {table} -N {chain}: {err.strip()}")

    def _ensure_forward_jump(self, binary: str) -> None:
        """Our FORWARD jump, right after dockerd's DOCKER-USER jump if there is one, else first.

        A jump found before DOCKER-USER (dockerd started after us and appended its jump) is
        moved after it, delete and insert in one commit.
        """
        batch = self._forward_jump_fix(self._list(binary, "filter", "FORWARD"))
        if batch:
            self._restore(binary, {"filter": batch})

    def _forward_jump_fix(self, lines: list[str]) -> list[Rule]:
        """The restore lines that put our jump where ``_ensure_forward_jump`` says (none: it is)."""
        ours_text = "-A FORWARD " + " ".join(_jump(FORWARD_CHAIN))
        user = next((i for i, line in enumerate(lines, 1) if line == f"-A FORWARD -j {DOCKER_USER_CHAIN}"), 0)
        ours = [i for i, line in enumerate(lines, 1) if line == ours_text]
        if len(ours) == 1 and ours[0] > user:
            return []
        batch: list[Rule] = [("-D", "FORWARD", str(n)) for n in reversed(ours)]
        at = user - sum(1 for n in ours if n < user) + 1
        batch.append(("-I", "FORWARD", str(at), *_jump(FORWARD_CHAIN)))
        return batch

    def _ensure_rule(self, binary: str, table: str, chain: str, rule: Rule) -> None:
        if self._cmd(binary, "-t", table, "-C", chain, *rule)[0] != 0:
            self._must(binary, "-t", table, "-A", chain, *rule)

    def _list(self, binary: str, table: str, chain: str) -> list[str]:
        """The ``-A`` lines of ``chain`` as iptables printed them: line i is rule number i + 1.

        Never tokenised (see the module docstring); split on "\\n" only, as iptables ends lines.
        """
        rc, out, _ = self._cmd(binary, "-t", table, "-S", chain)
        if rc != 0:                            # no such chain (or no ip6tables): nothing of ours
            return []
        prefix = f"-A {chain} "
        return [line for line in out.split("\n") if line.startswith(prefix)]

    def _cmd(self, binary: str, *args: str) -> Result:
        return self._run([binary, "-w", str(self.wait), *args], None, self.timeout)

    def _must(self, binary: str, *args: str) -> None:
        rc, _, err = self._cmd(binary, *args)
        if rc != 0:
            raise KernelError(f"{binary} {' '.join(args)}: {err.strip() or f'exit {rc}'}")


def _check_hex(value: str, what: str) -> None:
    if not _HEX_ID.match(value):
        raise KernelError(f"{what} {value[:80]!r} is not a hex id")


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
