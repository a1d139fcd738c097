"""A deploy's preflight (lab/preflight.py): no 802.1Q, or a trunk that will not be there, stops
the deploy before its first step with one line; anything else (or a probe that cannot tell)
lets it go on, so the driver has the last word."""

from __future__ import annotations

from drivers.capabilities import NO_8021Q
from lab import plan, preflight, spec
from lab.records import Record
from tests.unit.test_lab_plan import TRUNK as LAB
from tests.unit.test_lab_plan import _record


def _actions(text: str, record: Record | None = None) -> list[plan.Action]:
    return plan.plan(plan.items(spec.parse(text)), record)


def test_no_8021q_names_the_first_vlan_network_and_the_feature() -> None:
    problem = preflight.problem(_actions(LAB), probe=lambda: False, host_links=lambda: {"eth9"})
    assert problem == f"create network t-v10: {NO_8021Q}"


def test_a_trunk_is_a_bridge_the_deploy_makes_or_a_host_interface_it_keeps() -> None:
    assert preflight.problem(_actions(LAB), probe=lambda: True, host_links=lambda: {"eth9"}) is None
    assert preflight.problem(_actions(LAB), probe=lambda: True, host_links=lambda: set()) == (
        "create network t-v20: option parent: interface 'eth9' does not exist on this host "
        "(nor is it a kind: bridge node of this lab)")
    # The bridge leaves the file while a VLAN still names it: it is removed by this very deploy.
    edited = LAB.replace("    tr: {kind: bridge}\n", "")
    problem = preflight.problem(_actions(edited, _record(LAB)), probe=lambda: True,
                                host_links=lambda: {"tr", "eth9"})
    assert problem is not None and problem.startswith("create network t-v10: option parent: interface 'tr'")


def test_what_cannot_be_told_is_left_to_the_driver() -> None:
    assert preflight.problem(_actions(LAB), probe=lambda: None, host_links=lambda: None) is None
    no_vlan = LAB.replace("driver: vlan", "driver: bridge")     # nothing asked when no VLAN is made

    def never() -> bool:
        raise AssertionError("probed")

    assert preflight.problem(_actions(no_vlan), probe=never, host_links=never) is None
    assert preflight.problem(_actions(LAB, _record(LAB)), probe=never, host_links=never) is None
