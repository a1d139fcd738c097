"""The periodic reconcile pass (issue 7 item 1, "and periodically") in a real daemon.

Somebody deletes our bridge behind the daemon's back (``ip link del``): with
``--reconcile-interval 1`` and no request at all, the daemon re-makes it, marked, with its
gateway address and its rules, and re-attaches the endpoint's veth. Kernel state is read with
``ip -j`` and ``iptables -S`` inside the throwaway host namespace. With ``--reconcile-interval 0``
nothing would ever bring the bridge back (the start-up pass is over): the test would hit its
safety bound and fail.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.engine import Engine
from tests.conftest import in_netns, ip_json
from tests.kernel.test_daemon_process import HostDaemon

SAFETY = 120.0   # a generous bound: the pass runs every second; failing beats hanging


@pytest.fixture
def host(netns: str, tmp_path: Path) -> Iterator[HostDaemon]:
    daemon = HostDaemon(netns, tmp_path)
    daemon.start("--reconcile-interval", "1")
    yield daemon
    if daemon.proc is not None:
        daemon.stop(signal.SIGKILL)


def test_a_bridge_deleted_behind_the_daemons_back_comes_back_without_any_request(
        host: HostDaemon, netns: str) -> None:
    engine = Engine(str(host.plugins))
    try:
        nid = engine.create_network("web", subnets=["10.66.0.0/24"])
        att = engine.attach("web", "/var/run/docker/netns/cnmkit-periodic-none")
    finally:
        engine.close()
    bridge, veth = f"cnm-{nid[:11]}", f"cnv{att.endpoint_id[:12]}"

    def state() -> tuple[dict | None, dict | None, str]:
        links = {link["ifname"]: link for link in ip_json("addr", "show", netns=netns)}
        rules = in_netns(netns, "iptables", "-S").stdout
        return links.get(bridge), links.get(veth), rules

    br, ve, rules = state()
    assert br is not None and ve is not None and ve["master"] == bridge and nid in rules
    subprocess.run(["ip", "-n", netns, "link", "del", bridge], check=True)
    br, ve, _ = state()
    assert br is None and ve is not None and "master" not in ve

    deadline = time.monotonic() + SAFETY
    while True:
        br, ve, rules = state()
        if br is not None and ve is not None and ve.get("master") == bridge:
            break
        assert host.proc is not None and host.proc.poll() is None
        assert time.monotonic() < deadline, f"bridge {bridge} not re-made within {SAFETY:.0f} s"
        time.sleep(0.2)
    links = {link["ifname"]: link for link in ip_json("link", "show", netns=netns)}
    assert links[bridge]["ifalias"] == f"cnmkit:net:{nid}"
    assert "10.66.0.1" in {a["local"] for a in br["addr_info"]}
    assert nid in rules
    assert host.stop(signal.SIGTERM) == 0
