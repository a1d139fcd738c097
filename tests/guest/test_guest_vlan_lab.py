"""The VLAN trunk lab (examples/labs/vlan.clab.yml) on a real 802.1Q kernel: issue 10 item 3's
last example, end to end through the real CLI and daemon in a throwaway host namespace.

Deploy, then check with oracles that hold no cnmkit code: ``ip -j -d`` for the kernel objects
(the trunk bridge, its sub-interfaces trunk.10/trunk.20 enslaved to the networks' bridges),
``ping`` from inside the nodes (same VLAN across the trunk works both ways; VLAN 10 never reaches
VLAN 20, although both carry 10.81.70.0/24, on the same side or across), and a raw AF_PACKET
capture on the trunk port (tests/guest/test_guest_vlan_basics.py) for the 802.1Q tag each
VLAN's frames carry. Then inspect, the graph with every node name, a dry-run redeploy with
nothing to do, and destroy leaving nothing: no namespace, link (sub-interfaces included),
address, network, pool, record or process. A redeploy after an edit (a host added to VLAN 10)
makes only that host. A trunk that does not exist is refused before the first step, with one
line, leaving nothing either.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ip_json
from tests.guest.test_guest_vlan_basics import PROBE, _capture_on_trunk
from tests.guest.test_guest_vlan_driver import wait_for_vlan_socket
from tests.runtime.conftest import Host
from tests.runtime.test_labs import EXAMPLES, _assert_clean, _ping, lab_host  # noqa: F401 (fixture)
from tests.runtime.test_vlan_no8021q import _pools

VLAN_LAB = EXAMPLES / "vlan.clab.yml"
NODES = ("a10", "a20", "sw", "b10", "b20", "trunk")
A10, A20, B10, B20 = "10.81.70.11", "10.81.70.21", "10.81.70.12", "10.81.70.22"


@pytest.fixture(scope="module")
def host(lab_host: Host) -> Host:  # noqa: F811
    """The runtime tier's lab host (a throwaway netns, its daemon; labs destroyed after), once
    the daemon's cnmkit-vlan socket answers too."""
    wait_for_vlan_socket(lab_host)
    return lab_host


def _links(h: Host) -> dict[str, dict]:
    return {link["ifname"]: link for link in ip_json("link", "show", netns=h.netns)}


def _send_probe(pid: int, target: str) -> None:
    """One UDP datagram carrying PROBE, from inside the node (its netns, entered by pid)."""
    done = subprocess.run(["nsenter", "-t", str(pid), "-n", sys.executable, "-c",
                           "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                           f"s.sendto({PROBE!r},({target!r},9))"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def _tags(h: Host, pid: int, target: str) -> list[int | None]:
    """The tag of the probe datagram as it passes the trunk port trunk-sw (received from sw, or
    sent to it), read off the wire by the test."""
    frames = _capture_on_trunk(h.netns, lambda: _send_probe(pid, target), ifname="trunk-sw")
    return [vid for vid, probe in frames if probe]


@contextlib.contextmanager
def _deployed(h: Host, file: Path) -> Iterator[subprocess.CompletedProcess]:
    """``lab deploy FILE`` for the block; then destroy, whatever happened, and nothing left."""
    out = h.cli("lab", "deploy", str(file))
    try:
        yield out
    finally:
        pids = h.container_pids()
        h.cli("lab", "destroy", str(file))
    _assert_clean(h, pids)
    assert _pools(h) == []


def test_vlan_trunk_lab(host: Host, tmp_path: Path) -> None:
    h = host
    with _deployed(h, VLAN_LAB) as out:
        assert "lab vlan:" in out.stdout and out.stderr == "", (out.stdout, out.stderr)
        links = _links(h)
        assert links["trunk"]["linkinfo"]["info_kind"] == "bridge"
        assert links["trunk-sw"]["master"] == "trunk"
        for vid in (10, 20):                       # the networks' sub-interfaces, on the trunk bridge
            sub = links[f"trunk.{vid}"]
            assert sub["link"] == "trunk" and sub["linkinfo"]["info_kind"] == "vlan"
            assert sub["linkinfo"]["info_data"]["id"] == vid and sub["linkinfo"]["info_data"]["protocol"] == "802.1Q"
            assert sub["master"].startswith("cnm-")
        assert links["trunk.10"]["master"] != links["trunk.20"]["master"]

        data = h.json("lab", "inspect", str(VLAN_LAB))
        assert isinstance(data, dict)
        nodes = {n["Name"]: n for n in data["Nodes"]}
        assert set(nodes) == set(NODES)
        assert {name: n["Status"] for name, n in nodes.items()} == {
            **{name: "running" for name in NODES if name != "trunk"}, "trunk": "host bridge"}
        assert [i["name"] for i in nodes["trunk"]["Interfaces"]] == ["trunk-sw"]
        assert sorted((n["Name"], n["Driver"], n["Subnets"]) for n in data["Networks"]) == [
            ("vlan-v10", "vlan", ["10.81.70.0/24"]), ("vlan-v20", "vlan", ["10.81.70.0/24"])]
        addresses = {(name, i["name"]): i["addresses"] for name, n in nodes.items() for i in n["Interfaces"]}
        assert f"{A10}/24" in addresses[("a10", "eth0")] and f"{B20}/24" in addresses[("b20", "eth0")]

        pids = {name: n["Pid"] for name, n in nodes.items() if n["Pid"]}
        for node, target in (("a10", B10), ("b10", A10), ("a20", B20), ("b20", A20)):
            assert _ping(pids, node, target), f"{node} -> {target}: same VLAN across the trunk should work"
        for node, target in (("a10", B20), ("a10", A20), ("b10", A20), ("b10", B20), ("b20", A10)):
            assert not _ping(pids, node, target), f"{node} -> {target}: across VLANs should fail"
        assert _tags(h, pids["b10"], A10) == [10]            # from the far side, into the host
        assert _tags(h, pids["a20"], B20) == [20]            # from the host's side, out to sw

        svg = tmp_path / "vlan.svg"
        h.cli("lab", "graph", str(VLAN_LAB), "-o", str(svg))
        text = svg.read_text()
        assert text.startswith("<?xml") and "<svg" in text
        for name in (*NODES, "vlan-v10", "vlan-v20", "VLAN 10 on trunk", "802.1Q 20"):
            assert name.replace("-", "&#45;") in text, name             # dot writes '-' as &#45;
        assert h.cli("lab", "deploy", "--dry-run", str(VLAN_LAB)).stdout.startswith("nothing to do")


def test_an_edit_adds_a_host_to_a_vlan_and_touches_nothing_else(host: Host, tmp_path: Path) -> None:
    """A redeploy converges: a new host on VLAN 10 is the only step; it reaches b10 across the
    trunk, not b20; the nodes that were there keep their processes."""
    h = host
    file = tmp_path / "vlan.clab.yml"
    file.write_text(VLAN_LAB.read_text())
    with _deployed(h, file):
        before = {n["Name"]: n["Pid"] for n in h.json("lab", "inspect", str(file))["Nodes"]}
        file.write_text(file.read_text().replace("    b10: {}\n", "    b10: {}\n    c10:\n"
                                                 "      cnmkit: {networks: {v10: {ip: 10.81.70.13}}}\n"))
        assert h.cli("lab", "deploy", "--dry-run", str(file)).stdout.splitlines() == ["would start node c10"]
        h.cli("lab", "deploy", str(file))
        after = {n["Name"]: n["Pid"] for n in h.json("lab", "inspect", str(file))["Nodes"]}
        assert {name: pid for name, pid in after.items() if name != "c10"} == before
        assert _ping(after, "c10", B10) and _ping(after, "c10", A10)
        assert not _ping(after, "c10", B20)


def test_a_trunk_that_does_not_exist_is_one_line_and_leaves_nothing(host: Host, tmp_path: Path) -> None:
    h = host
    file = tmp_path / "vlanbad.clab.yml"
    file.write_text(VLAN_LAB.read_text().replace("name: vlan\n", "name: vlanbad\n")
                    .replace("{parent: trunk, vlan: 20}", "{parent: nosuch0, vlan: 20}"))
    out = h.cli("lab", "deploy", str(file), check=False)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == ("cnmkit: create network vlanbad-v20: option parent: interface 'nosuch0' does not exist "
                          "on this host (nor is it a kind: bridge node of this lab)\n")
    _assert_clean(h, [])
    assert _pools(h) == []
