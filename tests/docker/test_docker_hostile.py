"""Hostile names and options through a real dockerd 20.10 (issue 6, points 3, 4 and 8).

A bridge name that iptables or the kernel treats specially (``eth+`` is a wildcard, ``br%d`` a
template, a quote breaks rule parsing, ``-x`` an option) must be refused by ``docker network
create`` with our error, and leave nothing behind: no link (``ip -j link``), no iptables rule
(``iptables -S``), no pool. Unknown options (``-o foo=bar``) are accepted and kept, as Docker's own
bridge does, and shown by ``docker network inspect`` and by our Cnmkit.NetworkInspect.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from client.engine import Engine
from tests.conftest import ip_json
from tests.docker.conftest import PLUGIN_DIR, CnmkitDaemon, docker

pytestmark = pytest.mark.docker

BRIDGE_NAME = "com.docker.network.bridge.name"


def link_names() -> set[str]:
    return {str(link["ifname"]) for link in ip_json("link", "show")}


def iptables_lines() -> list[tuple[str, str, str]]:
    out = []
    for binary in ("iptables", "ip6tables"):
        for table in ("filter", "nat"):
            dump = subprocess.run([binary, "-t", table, "-S"], capture_output=True, text=True, check=True).stdout
            out += [(binary, table, line) for line in dump.splitlines()]
    return out


def iptables_dump() -> str:
    return "\n".join(line for _, _, line in iptables_lines())


def undo_leaks(links: set[str], rules: list[tuple[str, str, str]]) -> None:
    """Should a regression make something, remove exactly what appeared during the test, by name."""
    for binary, table, line in iptables_lines():
        if (binary, table, line) not in rules and line.startswith("-A "):
            try:
                spec = shlex.split(line)[1:]
            except ValueError:                  # a quote in a name: unparseable, the assertion reports it
                continue
            subprocess.run([binary, "-w", "5", "-t", table, "-D", *spec], capture_output=True)
    for name in link_names() - links:
        subprocess.run(["ip", "link", "del", "dev", name], capture_output=True)


def pools() -> list[str]:
    engine = Engine(PLUGIN_DIR)
    try:
        return sorted(p["Pool"] for p in engine.list_pools())
    finally:
        engine.close()


@pytest.mark.parametrize("bad", ["eth+", "+", "br%d", 'q"', "-x", "a\\b", "!x"])
def test_hostile_bridge_names_are_refused_and_leave_nothing(cnmkit: CnmkitDaemon, names: Callable[[str], str],
                                                            bad: str) -> None:
    name = names("hostile")
    links, rules, held = link_names(), iptables_dump(), pools()
    before = iptables_lines()
    try:
        proc = docker("network", "create", "-d", "cnmkit-bridge", "--ipam-driver", "cnmkit",
                      "--subnet", "10.252.7.0/24", "-o", f"{BRIDGE_NAME}={bad}", name, check=False)
        assert proc.returncode != 0, proc.stdout
        assert f"option {BRIDGE_NAME}" in proc.stderr and "not a valid interface name" in proc.stderr, proc.stderr
        assert docker("network", "inspect", name, check=False).returncode != 0
        assert link_names() == links                        # no eth+, no br0 made from br%d, nothing
        assert iptables_dump() == rules                     # not a single rule added or left
        assert pools() == held                              # dockerd released what IPAM gave it
        assert cnmkit.proc is not None and cnmkit.proc.poll() is None
    finally:
        docker("network", "rm", name, check=False)
        undo_leaks(links, before)


def test_unknown_options_are_kept_and_shown(cnmkit: CnmkitDaemon, names: Callable[[str], str]) -> None:
    name = names("opts")
    docker("network", "create", "-d", "cnmkit-bridge", "--ipam-driver", "cnmkit", "--subnet", "10.252.8.0/24",
           "-o", "foo=bar", "-o", "com.example.tool=v1", name)
    shown = json.loads(docker("network", "inspect", name, "--format", "{{json .Options}}").stdout)
    assert shown == {"foo": "bar", "com.example.tool": "v1"}
    nid = docker("network", "inspect", name, "--format", "{{.Id}}").stdout.strip()
    engine = Engine(PLUGIN_DIR)
    try:
        ours = engine.inspect_network(nid)
    finally:
        engine.close()
    assert ours["Options"] == {"foo": "bar", "com.example.tool": "v1"}
    log = Path(cnmkit.log_path).read_text()
    assert any("WARNING" in line and nid[:12] in line and "foo" in line and "com.example.tool" in line
               for line in log.splitlines()), log[-2000:]
    docker("network", "rm", name)
    assert not [link for link in ip_json("link", "show") if str(link.get("ifalias", "")) == f"cnmkit:net:{nid}"]


def test_our_own_unknown_options_are_still_refused(cnmkit: CnmkitDaemon, names: Callable[[str], str]) -> None:
    name = names("ours")
    links, rules = link_names(), iptables_dump()
    proc = docker("network", "create", "-d", "cnmkit-bridge", "--ipam-driver", "cnmkit", "--subnet", "10.252.9.0/24",
                  "-o", "cnmkit.bogus=1", name, check=False)
    assert proc.returncode != 0 and "option cnmkit.bogus" in proc.stderr, proc.stderr
    assert link_names() == links and iptables_dump() == rules
