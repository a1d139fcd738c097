"""The plan: a first deploy makes everything in order; a redeploy after an edit re-makes only
what changed and what stands on it; the DOT graph escapes every label."""

from __future__ import annotations

from lab import graph, plan, spec
from lab.records import Record

BASE = """\
name: p
topology:
  nodes:
    r1: {exec: ["sysctl -w net.ipv4.ip_forward=1"], labels: {role: router}}
    h1: {cnmkit: {networks: [lan]}}
    h2: {}
  links:
    - endpoints: ["h1:eth2", "r1:eth1"]
    - endpoints: ["h2:eth1", "r1:eth2"]
cnmkit:
  networks:
    lan: {subnet: 10.9.0.0/24}
"""


def _record(text: str) -> Record:
    """The record a successful deploy of ``text`` leaves (what LabService._entry writes)."""
    wanted = plan.items(spec.parse(text))
    return {"name": "p", "items": {k: {"kind": i.kind, "name": i.name, "digest": i.digest, "spec": i.spec,
                                       "deps": i.deps, "made": {}} for k, i in wanted.items()}}


def _describe(text: str, record: Record | None) -> list[str]:
    return [a.describe() for a in plan.plan(plan.items(spec.parse(text)), record)]


def test_first_deploy_creates_in_dependency_order() -> None:
    assert _describe(BASE, None) == [
        "create network p-mgmt", "create network p-lan", "start node r1", "start node h1", "start node h2",
        "create link h1:eth2--r1:eth1", "create link h2:eth1--r1:eth2", "exec on node r1: 1 command(s)"]


def test_same_file_again_is_nothing_to_do_and_labels_change_nothing() -> None:
    assert _describe(BASE, _record(BASE)) == []
    assert _describe(BASE.replace("role: router", "role: core"), _record(BASE)) == []


def test_a_changed_node_is_remade_with_its_links_only() -> None:
    edited = BASE.replace("    h2: {}", "    h2: {env: {X: '1'}}")
    assert _describe(edited, _record(BASE)) == [
        "remove link h2:eth1--r1:eth2", "remove node h2", "start node h2", "create link h2:eth1--r1:eth2"]


def test_added_and_removed_items() -> None:
    edited = BASE.replace('    - endpoints: ["h2:eth1", "r1:eth2"]\n', "")
    edited = edited.replace("    h2: {}\n", "    h2: {}\n    h3: {}\n").replace(
        '  links:\n', '  links:\n    - endpoints: ["h3:eth1", "r1:eth3"]\n')
    assert _describe(edited, _record(BASE)) == [
        "remove link h2:eth1--r1:eth2", "start node h3", "create link h3:eth1--r1:eth3"]


def test_a_changed_network_remakes_its_members_and_their_links() -> None:
    edited = BASE.replace("10.9.0.0/24", "10.9.1.0/24")
    assert _describe(edited, _record(BASE)) == [
        "remove link h1:eth2--r1:eth1", "remove node h1", "remove network p-lan",
        "create network p-lan", "start node h1", "create link h1:eth2--r1:eth1"]


def test_a_node_marked_dirty_is_remade() -> None:
    record = _record(BASE)
    record["items"]["node:r1"]["digest"] = ""                # its exec failed, or it died
    assert _describe(BASE, record) == [
        "remove link h1:eth2--r1:eth1", "remove link h2:eth1--r1:eth2", "remove node r1",
        "start node r1", "create link h1:eth2--r1:eth1", "create link h2:eth1--r1:eth2",
        "exec on node r1: 1 command(s)"]


def test_graph_has_every_node_network_and_escapes_labels() -> None:
    lab = spec.parse(BASE)
    live = {"Nodes": [{"Name": "h1", "Interfaces": [{"name": "eth1", "addresses": ['10.9.0.2/24"<b>&\x1b']}]}],
            "Networks": [{"Name": "p-lan", "Subnets": ["10.9.0.0/24"]}]}
    dot = graph.to_dot(lab, live)
    for name in ("r1", "h1", "h2", "p-lan", "p-mgmt", "eth2", "10.9.0.0/24"):
        assert name in dot
    assert "10.9.0.2/24&quot;&lt;b&gt;&amp;?" in dot                # cannot end the cell or add markup
    assert "<b>" not in dot and "\x1b" not in dot
    assert graph.quote('a\nb"\x1b\\N') == '"a?b\\"?\\\\N"'


TRUNK = """\
name: t
topology:
  defaults: {network-mode: none}
  nodes:
    tr: {kind: bridge}
    a: {cnmkit: {networks: [v10]}}
    b: {cnmkit: {networks: [v20]}}
cnmkit:
  networks:
    v10: {driver: vlan, subnet: 10.9.0.0/24, options: {parent: tr, vlan: 10}}
    v20: {driver: vlan, subnet: 10.9.0.0/24, options: {parent: eth9, vlan: 20}}
"""


def test_a_vlan_network_comes_after_its_trunk_bridge_and_is_remade_with_it() -> None:
    assert _describe(TRUNK, None) == ["create bridge tr", "create network t-v10", "create network t-v20",
                                      "start node a", "start node b"]
    record = _record(TRUNK)
    record["items"]["bridge:tr"]["digest"] = ""              # re-made: its sub-interfaces die with it
    assert _describe(TRUNK, record) == ["remove node a", "remove network t-v10", "remove bridge tr",
                                        "create bridge tr", "create network t-v10", "start node a"]
    # The trunk stops being the lab's bridge (the name now means a host interface): re-made too.
    edited = TRUNK.replace("    tr: {kind: bridge}\n", "")
    assert _describe(edited, _record(TRUNK)) == ["remove node a", "remove network t-v10", "remove bridge tr",
                                                 "create network t-v10", "start node a"]


def test_graph_ties_each_vlan_to_its_trunk() -> None:
    dot = graph.to_dot(spec.parse(TRUNK))
    assert '"net:t-v10" -- "node:tr" [style=dashed, label="802.1Q 10"];' in dot
    assert 'VLAN 10 on tr' in dot and 'VLAN 20 on eth9' in dot
    assert '"net:t-v20" -- "node:host":i0 [style=dashed, label="802.1Q 20"];' in dot    # a host interface
    assert "eth9" in dot.split('"node:host" [label=')[1].split("\n")[0]
