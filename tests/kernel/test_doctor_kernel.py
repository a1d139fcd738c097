"""``cnmkit doctor`` on this host's real kernel: its verdicts match what ``ip`` itself manages in
a namespace of the test's own (the oracle), and it leaves nothing in the root namespace.

On this machine kind (no 802.1Q, no vlan_filtering, vxlan present: shared/design/machine.md) it
reports 8021q missing with "cnmkit-vlan networks unavailable"; inside the user-mode-linux guest
(tests/guest/test_guest_doctor.py) the same command reports it present.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ip_json

ROOT = Path(__file__).resolve().parents[2]


def _ip_can(netns: str, *args: str) -> bool:
    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, check=False).returncode == 0


def _doctor() -> dict:
    out = subprocess.run([sys.executable, "-m", "cli.main", "doctor", "--format", "json"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return {c["name"]: c for c in json.loads(out)["capabilities"]}


def test_doctor_matches_what_ip_can_make(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("d")
    assert _ip_can(ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
    oracle = {
        "8021q": _ip_can(ns, "link", "add", "link", "p0", "name", "p0.7", "type", "vlan", "id", "7"),
        "vxlan": _ip_can(ns, "link", "add", "vx0", "type", "vxlan", "id", "7", "dstport", "4789"),
        "bridge_vlan_filtering": _ip_can(ns, "link", "add", "brf", "type", "bridge", "vlan_filtering", "1"),
        "macvlan": _ip_can(ns, "link", "add", "link", "p0", "name", "mv0", "type", "macvlan"),
        "bridge": _ip_can(ns, "link", "add", "br0", "type", "bridge"),
    }
    report = _doctor()
    assert {name: report[name]["available"] for name in oracle} == oracle
    if not oracle["8021q"]:
        assert report["8021q"]["if_missing"] == "cnmkit-vlan networks unavailable"
        assert "Unknown device type" in report["8021q"]["detail"]
    # this machine kind: vxlan yes, 802.1Q no (a host with 802.1Q still checks doctor against ip)
    assert oracle["vxlan"] is True


def test_doctor_leaves_nothing_in_the_root_namespace() -> None:
    _doctor()
    assert [link["ifname"] for link in ip_json("link", "show") if link["ifname"].startswith("cnmkd-")] == []
