"""A real dockerd 20.10 with the cnmkit-vxlan driver, created as the README says (issue 8, item 3).

One host only (the docker tier runs in the root namespace, one dockerd at a time): this proves
what dockerd sends and accepts for an overlay: the IPAM option placing the pool in the overlay's
address space, Scope local with ConnectivityScope global, the gateway from the overlay, no
docker_gwbridge leg, the overlay's MTU in the container, and nothing left after ``rm``. The
cross-host behaviour is the kernel tier's (tests/kernel/test_vxlan_overlay.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from client.engine import Engine
from tests.conftest import ip_json
from tests.docker.conftest import PLUGIN_DIR, CnmkitDaemon, docker
from tests.docker.test_docker_bridge import ip_of, our_rules, pings, run, sh


def test_docker_overlay_network_as_documented(image: str, cnmkit: CnmkitDaemon, names: Callable[[str], str]) -> None:
    net = names("ovl")
    overlay = net.replace("-", "")
    docker("network", "create", "-d", "cnmkit-vxlan", "--ipam-driver", "cnmkit",
           "--ipam-opt", f"cnmkit.overlay={overlay}", "-o", f"cnmkit.overlay={overlay}", "-o", "vni=9901",
           "--subnet", "10.232.1.0/24", net)
    c1, c2 = names("v1"), names("v2")
    run(image, c1, "--network", net)
    run(image, c2, "--network", net)
    assert pings(c1, ip_of(c2, net)) and pings(c1, c2), "by address and by dockerd's DNS"
    assert pings(c1, "10.232.1.1"), "the overlay's gateway answers"
    assert sorted(sh(c1, "ls", "/sys/class/net", check=True).stdout.split()) == ["eth0", "lo"]
    underlay = int(open("/sys/class/net/" + _advertise_device() + "/mtu").read())
    assert sh(c1, "cat", "/sys/class/net/eth0/mtu", check=True).stdout.strip() == str(underlay - 50)
    pools = Engine(PLUGIN_DIR).list_pools()
    assert [p["PoolID"] for p in pools if p["Pool"] == "10.232.1.0/24"] == [f"cnmkit-overlay.{overlay}/10.232.1.0/24"]
    ns = [n for n in os.listdir("/run/netns") if n.startswith("cnmkit-ov9901-")]
    assert len(ns) == 1
    docker("rm", "-f", c1, c2)
    docker("network", "rm", net)
    assert not [n for n in os.listdir("/run/netns") if n.startswith("cnmkit-ov9901-")]
    assert not [link for link in ip_json("link", "show") if link["ifname"] == "ovt9901"]
    assert "cnmkit:ov:9901" not in our_rules()


def _advertise_device() -> str:
    """The default route's device: the daemon's default --advertise address lives there."""
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            row = line.split()
            if row[1] == "00000000":
                return row[0]
    raise AssertionError("no default route")
