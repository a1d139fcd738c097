"""After a reboot, ``docker start`` works with no user action (issue 7 item 1).

A reboot takes our bridge and rules and keeps the store; dockerd's ``docker start`` then Joins
on a network whose bridge is gone, which failed with ``remote: link cnm-...: (19, 'No such
device')`` until the daemon re-made the kernel side at start. Here the "reboot" removes only our
own objects, by name and by mark, in the root namespace where dockerd's sandboxes live.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable

import pytest

from tests.conftest import ip_json
from tests.docker.conftest import CnmkitDaemon, docker
from tests.docker.test_docker_bridge import create, our_rules, pings, run

pytestmark = pytest.mark.docker


def forget_network(nid: str) -> None:
    """What a reboot does to one network: its bridge (by our derived name) and its rules (by mark) go."""
    subprocess.run(["ip", "link", "del", f"cnm-{nid[:11]}"], check=True)
    for table in ("filter", "nat"):
        listing = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True, check=True).stdout
        for line in listing.splitlines():
            if f'"cnmkit:{nid}' in line and line.startswith("-A "):
                subprocess.run(["iptables", "-t", table, "-D", *shlex.split(line)[1:]], check=True)


def test_docker_start_after_reboot(image: str, cnmkit: CnmkitDaemon, names: Callable[[str], str]) -> None:
    net = names("rb")
    nid = create(net, "--subnet", "10.231.40.0/24", "--gateway", "10.231.40.1")
    box = names("box")
    run(image, box, "--network", net)
    assert pings(box, "10.231.40.1")
    docker("stop", "-t", "1", box)
    cnmkit.stop()
    forget_network(nid)
    assert f"cnm-{nid[:11]}" not in {link["ifname"] for link in ip_json("link", "show")}
    assert nid not in our_rules()
    cnmkit.start()                                   # reconciles before it serves dockerd
    (bridge,) = [link for link in ip_json("link", "show") if link["ifname"] == f"cnm-{nid[:11]}"]
    assert bridge["ifalias"] == f"cnmkit:net:{nid}"
    assert f"cnmkit:{nid}" in our_rules()
    docker("start", box)
    assert pings(box, "10.231.40.1")
    docker("rm", "-f", box)
    docker("network", "rm", net)
    assert nid not in our_rules()
