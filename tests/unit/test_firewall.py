"""Firewall on FakeIptables (a faithful double, see tests/kernel/test_firewall_kernel.py): marks,
reading without shlex, bounded waits, jump placement, batching; and run_command's timeout for real."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from drivers.errors import KernelError
from drivers.firewall import (
    DNAT_CHAIN,
    FORWARD_CHAIN,
    ISOLATION_CHAIN,
    NAT_CHAIN,
    TIMEOUT_GRACE,
    WAIT_SECONDS,
    Firewall,
    NetworkRules,
    parse_mark,
    restore_line,
    run_command,
)
from tests.fakekernel import FakeIptables, FakeSysctl, restore_tokens, save_rule

# Two network ids that share their first 40 digits, and two endpoints sharing 20.
NID_A = "ab" * 20 + "0" * 24
NID_B = "ab" * 20 + "1" * 24
EP_A = "cd" * 10 + "0" * 44
EP_B = "cd" * 10 + "1" * 44


def rules_a() -> NetworkRules:
    return NetworkRules(network_id=NID_A, bridge="cnm-a", subnets_v4=("10.61.0.0/24",),
                        subnets_v6=("fd00:61::/64",))


def rules_b() -> NetworkRules:
    return NetworkRules(network_id=NID_B, bridge="cnm-b", subnets_v4=("10.62.0.0/24",),
                        subnets_v6=("fd00:62::/64",))


@pytest.fixture
def ipt() -> FakeIptables:
    return FakeIptables()


@pytest.fixture
def fw(ipt: FakeIptables) -> Firewall:
    return Firewall(run=ipt, sysctl=FakeSysctl())


def all_rules(ipt: FakeIptables) -> list[str]:
    return [save_rule(r) for chains in ipt.tables.values() for rules in chains.values() for r in rules]


def with_mark(ipt: FakeIptables, nid: str) -> list[str]:
    return [r for r in all_rules(ipt) if (m := parse_mark(" " + r)) is not None and m[0] == nid]


# -- marks ----------------------------------------------------------------------------------

def test_deleting_a_network_spares_one_whose_id_shares_a_long_prefix(fw: Firewall, ipt: FakeIptables) -> None:
    fw.ensure_network(rules_a())
    fw.ensure_network(rules_b())
    fw.publish(rules_a(), EP_A, "10.61.0.2", [("tcp", 8080, 80, "")])
    fw.publish(rules_b(), EP_B, "10.62.0.2", [("tcp", 8081, 80, "")])
    before_b = with_mark(ipt, NID_B)
    assert len(before_b) == 4 + 1 + 1 + 4 + 1 + 3, "forward, isolation, nat (v4), forward, isolation (v6), port"

    count_a = len(with_mark(ipt, NID_A))
    assert count_a == len(before_b)
    assert fw.remove_network(NID_A) == count_a
    assert with_mark(ipt, NID_A) == []
    assert with_mark(ipt, NID_B) == before_b, "the other network's rules are all still there"
    assert fw.marks() == {(NID_B, ""), (NID_B, EP_B)}


def test_unpublish_spares_an_endpoint_whose_id_shares_a_prefix(fw: Firewall, ipt: FakeIptables) -> None:
    fw.ensure_network(rules_a())
    fw.publish(rules_a(), EP_A, "10.61.0.2", [("tcp", 8080, 80, "")])
    fw.publish(rules_a(), EP_B, "10.61.0.3", [("tcp", 8081, 80, "")])
    assert fw.unpublish(NID_A, EP_A) == 3
    assert fw.marks() == {(NID_A, ""), (NID_A, EP_B)}


def test_marks_are_whole_ids() -> None:
    assert parse_mark(f'-A X -m comment --comment "cnmkit:{NID_A}:{EP_A}" -j ACCEPT') == (NID_A, EP_A)
    assert parse_mark(f'-A X -m comment --comment "cnmkit:{NID_A}" -j ACCEPT') == (NID_A, "")
    assert parse_mark("-A FORWARD -m comment --comment cnmkit -j CNMKIT-FORWARD") is None
    # A comment that only contains our text (iptables escapes its quotes) is not our mark.
    assert parse_mark(f'-A X -m comment --comment "x\\" --comment \\"cnmkit:{NID_A}\\"" -j ACCEPT') is None


# -- reading without shlex --------------------------------------------------------------------

@pytest.mark.parametrize("bridge", ['q"', "b\\", "x'y", "sp ace", "-o", "#h", "p%d"])
def test_odd_names_never_make_a_network_undeletable(fw: Firewall, ipt: FakeIptables, bridge: str) -> None:
    """Names iptables prints raw (a quote broke shlex for every later delete, a backslash one network)."""
    odd = NetworkRules(network_id=NID_A, bridge=bridge, subnets_v4=("10.61.0.0/24",))
    fw.ensure_network(odd)
    fw.ensure_network(rules_b())
    fw.publish(odd, EP_A, "10.61.0.2", [("tcp", 8080, 80, "")])
    # Somebody's rule in our chain with a comment full of quoting hazards and our mark's text.
    ipt(["iptables", "-A", FORWARD_CHAIN, "-i", "zz", "-m", "comment", "--comment",
         f'x" \\ \' --comment "cnmkit:{NID_B}"', "-j", "ACCEPT"])
    assert fw.marks() == {(NID_A, ""), (NID_A, EP_A), (NID_B, "")}
    assert fw.remove_network(NID_A) > 0
    assert with_mark(ipt, NID_A) == []
    assert fw.remove_network(NID_B) > 0
    assert [r for r in all_rules(ipt) if "zz" in r], "a rule without our mark is never removed"


@pytest.mark.parametrize("token", ['q"', "b\\", "a b", "x'y", "\\\"", "#c", "cnmkit:" + NID_A, "!", "--dport"])
def test_restore_lines_round_trip_through_iptables_restore_tokenising(token: str) -> None:
    assert restore_tokens(restore_line(["-A", "C", "-i", token, "-j", "ACCEPT"])) == \
        ["-A", "C", "-i", token, "-j", "ACCEPT"]


@pytest.mark.parametrize("token", ["", "a\nb", "a\rb"])
def test_unrepresentable_tokens_are_refused(token: str) -> None:
    with pytest.raises(KernelError, match="iptables-restore"):
        restore_line(["-i", token])


# -- bounded waits ----------------------------------------------------------------------------

def test_every_call_waits_for_the_lock_with_a_bound_and_has_a_timeout(ipt: FakeIptables) -> None:
    seen: list[tuple[list[str], float]] = []

    def runner(argv: Sequence[str], stdin: str | None, timeout: float) -> tuple[int, str, str]:
        seen.append((list(argv), timeout))
        return ipt(argv, stdin, timeout)

    fw = Firewall(run=runner, sysctl=FakeSysctl())
    fw.ensure_network(rules_a())
    fw.publish(rules_a(), EP_A, "10.61.0.2", [("tcp", 8080, 80, "")])
    fw.unpublish(NID_A, EP_A)
    fw.remove_network(NID_A)
    assert len(seen) > 20 and any(argv[0] == "iptables-restore" for argv, _ in seen)
    for argv, timeout in seen:
        assert argv[1:3] == ["-w", str(WAIT_SECONDS)], argv
        assert timeout == WAIT_SECONDS + TIMEOUT_GRACE


def test_a_timed_out_call_raises_a_clear_error(ipt: FakeIptables) -> None:
    def hung(argv: Sequence[str], stdin: str | None, timeout: float) -> tuple[int, str, str]:
        if "-N" in argv or "-N " in (stdin or ""):  # as run_command does when the lock is never freed
            raise KernelError(f"{argv[0]}: no answer within {timeout:g} s (is the xtables lock held?)")
        return ipt(argv, stdin, timeout)

    with pytest.raises(KernelError, match="no answer within 15 s"):
        Firewall(run=hung, sysctl=FakeSysctl()).ensure_network(rules_a())


def fake_binary(tmp_path: Path, body: str) -> str:
    path = tmp_path / "iptables"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_run_command_kills_a_hung_iptables_and_its_children(tmp_path: Path) -> None:
    """A real process that never answers (as iptables-legacy does behind a held xtables lock)."""
    pidfile = tmp_path / "child"
    binary = fake_binary(tmp_path, f"sleep 1000 & echo $! > {pidfile}\nwait\n")
    with pytest.raises(KernelError, match=r"no answer within 0\.5 s .*xtables lock"):
        run_command([binary, "-w", "10", "-S"], None, 0.5)
    child = int(pidfile.read_text())
    # The pipes closed before run_command returned, so the child that held them is dead
    # (gone, or a zombie waiting for init to reap it).
    try:
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("Z", "X", "gone")


def test_firewall_with_a_hung_iptables_fails_instead_of_hanging(tmp_path: Path) -> None:
    binary = fake_binary(tmp_path, "exec sleep 1000\n")
    fw = Firewall(iptables=binary, ip6tables=binary, sysctl=FakeSysctl(), wait=1, timeout=0.5)
    with pytest.raises(KernelError, match="no answer within"):
        fw.ensure_network(rules_a())


def test_run_command_passes_stdin_and_reports_a_missing_binary(tmp_path: Path) -> None:
    binary = fake_binary(tmp_path, "cat\n")
    assert run_command([binary], "*filter\nCOMMIT\n", 30) == (0, "*filter\nCOMMIT\n", "")
    assert run_command([str(tmp_path / "nope")], None, 30)[0] == 127
    assert os.path.exists(binary)


# -- DOCKER-USER ------------------------------------------------------------------------------

def forward(ipt: FakeIptables, binary: str = "iptables") -> list[str]:
    return [save_rule(r) for r in ipt.chains(binary, "filter")["FORWARD"]]


JUMP = f"-m comment --comment cnmkit -j {FORWARD_CHAIN}"


def test_our_jump_goes_after_docker_user(fw: Firewall, ipt: FakeIptables) -> None:
    for binary in ("iptables", "ip6tables"):
        ipt([binary, "-N", "DOCKER-USER"])
        ipt([binary, "-A", "FORWARD", "-j", "DOCKER-USER"])
        ipt([binary, "-A", "FORWARD", "-j", "DOCKER-ISOLATION-STAGE-1"])
    fw.ensure_network(rules_a())
    fw.ensure_network(rules_a())
    for binary in ("iptables", "ip6tables"):
        assert forward(ipt, binary) == ["-j DOCKER-USER", JUMP, "-j DOCKER-ISOLATION-STAGE-1"]


def test_without_docker_user_our_jump_is_first_and_is_moved_when_dockerd_comes(fw: Firewall,
                                                                               ipt: FakeIptables) -> None:
    ipt(["iptables", "-A", "FORWARD", "-j", "ACCEPT"])
    fw.ensure_network(rules_a())
    assert forward(ipt) == [JUMP, "-j ACCEPT"]
    ipt(["iptables", "-N", "DOCKER-USER"])                   # a dockerd that appended its jump
    ipt(["iptables", "-A", "FORWARD", "-j", "DOCKER-USER"])
    fw.ensure_network(rules_b())
    assert forward(ipt) == ["-j ACCEPT", "-j DOCKER-USER", JUMP]


# -- batching ---------------------------------------------------------------------------------

def test_publishing_many_ports_is_a_few_calls(fw: Firewall, ipt: FakeIptables) -> None:
    fw.ensure_network(rules_a())
    ports = [("tcp", 20000 + i, 80, "") for i in range(1000)]
    before = len(ipt.calls)
    fw.publish(rules_a(), EP_A, "10.61.0.2", ports)
    assert len(ipt.calls) - before < 30, "not one process per rule"
    assert len(ipt.chains("iptables", "nat")[DNAT_CHAIN]) == 1000
    assert len([r for r in ipt.chains("iptables", "filter")[FORWARD_CHAIN] if "--dport" in r]) == 1000
    assert len([r for r in ipt.chains("iptables", "nat")[NAT_CHAIN] if "--dport" in r]) == 1000
    before = len(ipt.calls)
    fw.publish(rules_a(), EP_A, "10.61.0.2", ports[:10])        # replaces, in one commit
    assert len(ipt.chains("iptables", "nat")[DNAT_CHAIN]) == 10
    assert fw.unpublish(NID_A, EP_A) == 30
    assert len(ipt.calls) - before < 30
    assert ipt.chains("iptables", "nat")[DNAT_CHAIN] == []


def test_a_failed_publish_keeps_the_previous_ports(fw: Firewall, ipt: FakeIptables) -> None:
    fw.ensure_network(rules_a())
    fw.publish(rules_a(), EP_A, "10.61.0.2", [("tcp", 8080, 80, "")])
    before = {k: {c: list(r) for c, r in v.items()} for k, v in ipt.tables.items()}
    ipt.fail_on.add("-A")
    with pytest.raises(KernelError, match="iptables-restore"):
        fw.publish(rules_a(), EP_A, "10.61.0.2", [("tcp", 9090, 80, "")])
    assert {k: {c: list(r) for c, r in v.items()} for k, v in ipt.tables.items()} == before


# -- icc and masquerade -------------------------------------------------------------------------

def test_icc_false_drops_bridge_internal_traffic_and_masquerade_false_has_no_nat(
        fw: Firewall, ipt: FakeIptables) -> None:
    fw.ensure_network(NetworkRules(network_id=NID_A, bridge="cnm-a", subnets_v4=("10.61.0.0/24",),
                                   icc=False, masquerade=False))
    fwd = [save_rule(r) for r in ipt.chains("iptables", "filter")[FORWARD_CHAIN]]
    assert fwd[0] == f'-i cnm-a -o cnm-a -m comment --comment "cnmkit:{NID_A}" -j DROP'
    assert not any("-i cnm-a -o cnm-a" in r and r.endswith("ACCEPT") for r in fwd)
    assert ipt.chains("iptables", "nat")[NAT_CHAIN] == []
    assert [save_rule(r) for r in ipt.chains("iptables", "filter")[ISOLATION_CHAIN]] == [
        f'-o cnm-a -m comment --comment "cnmkit:{NID_A}" -j DROP']


def test_create_and_rm_cost_a_few_processes(fw: Firewall, ipt: FakeIptables) -> None:
    """Issue 11 item 2: each iptables process costs ms; a network is one listing per table and one
    restore per binary, not a -C/-A pair per rule (22 processes to create, 34 to remove the last)."""
    before = len(ipt.calls)
    fw.ensure_network(rules_a())                           # the first: chains and jumps made too
    assert len(ipt.calls) - before == 5                    # filter -S, nat -S, a restore; ip6tables -S, a restore
    before = len(ipt.calls)
    fw.ensure_network(rules_b())
    assert len(ipt.calls) - before == 5
    full = all_rules(ipt)
    before = len(ipt.calls)
    assert fw.remove_network(NID_B) == 11
    assert len(ipt.calls) - before == 5                    # 3 table listings, a restore per binary
    before = len(ipt.calls)
    assert fw.remove_network(NID_A) == 11                  # the last: chains and jumps go in the same restores
    assert len(ipt.calls) - before == 5
    assert all_rules(ipt) == [] and not [c for t in ipt.tables.values() for c in t if c.startswith("CNMKIT")]
    fw.ensure_network(rules_a())
    fw.ensure_network(rules_b())
    assert all_rules(ipt) == full                          # the same rules as made one by one before


def test_a_half_made_network_is_completed_rule_by_rule(fw: Firewall, ipt: FakeIptables) -> None:
    fw.ensure_network(rules_a())
    complete = all_rules(ipt)
    forward = ipt.tables[("iptables", "filter")]["CNMKIT-FORWARD"]
    del forward[1]                                         # one of the network's rules went missing
    fw.ensure_network(rules_a())
    assert sorted(all_rules(ipt)) == sorted(complete)      # the missing one back, nothing twice


def test_rm_falls_back_when_the_batched_restore_fails(fw: Firewall, ipt: FakeIptables) -> None:
    fw.ensure_network(rules_a())
    failed: list[str] = []

    def flaky(argv: Sequence[str], stdin: str | None = None, timeout: float | None = None) -> tuple[int, str, str]:
        if stdin and "-X" in stdin and not failed:        # e.g. a jump iptables printed otherwise
            failed.append(stdin)
            return 1, "", "iptables-restore: line 9 failed"
        return ipt(argv, stdin, timeout)

    assert Firewall(run=flaky, sysctl=FakeSysctl()).remove_network(NID_A) == 11
    assert failed and all_rules(ipt) == []
    assert not [c for t in ipt.tables.values() for c in t if c.startswith("CNMKIT")]
