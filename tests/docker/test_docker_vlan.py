"""Item 4 through a real dockerd: ``docker network create -d cnmkit-vlan`` on this machine's kernel.

Without 802.1Q the create fails with our one error naming the missing feature (dockerd shows the
plugin's text), and nothing is left: no Docker network, no record of ours, no pool (dockerd
releases what IPAM gave it), no link, no iptables rule. The parent is a veth pair the test makes
in the root namespace and removes by name; nothing that existed before is touched. On a kernel
with 802.1Q the create must succeed instead (the test asserts on every kernel).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import pytest

from tests.docker.conftest import CnmkitDaemon, docker
from tests.docker.test_docker_hostile import iptables_dump, link_names, pools
from tests.runtime.test_vlan_no8021q import kernel_has_8021q

pytestmark = pytest.mark.docker


def test_vlan_network_without_8021q_fails_clearly_through_dockerd(cnmkit: CnmkitDaemon,
                                                                   names: Callable[[str], str]) -> None:
    parent = f"cnmtvl{os.getpid() % 10000}"
    subprocess.run(["ip", "link", "add", parent, "type", "veth", "peer", "name", parent + "p"], check=True)
    try:
        name = names("vlan")
        links, rules, held = link_names(), iptables_dump(), pools()
        nets = cnmkit.cli("--format", "json", "network", "ls").stdout
        proc = docker("network", "create", "-d", "cnmkit-vlan", "--ipam-driver", "cnmkit",
                      "--ipam-opt", "cnmkit.space=vlan.test", "-o", f"parent={parent}", "-o", "vlan=100",
                      "--subnet", "10.252.30.0/24", name, check=False)
        if kernel_has_8021q():
            assert proc.returncode == 0, proc.stderr
            docker("network", "rm", name)
            return
        assert proc.returncode != 0, proc.stdout
        assert "802.1Q" in proc.stderr and "8021q" in proc.stderr, proc.stderr
        assert docker("network", "inspect", name, check=False).returncode != 0
        assert link_names() == links
        assert iptables_dump() == rules
        assert pools() == held
        assert cnmkit.cli("--format", "json", "network", "ls").stdout == nets
        assert cnmkit.proc is not None and cnmkit.proc.poll() is None
    finally:
        subprocess.run(["ip", "link", "del", parent], check=False)
