"""IPv6 proven by traffic: pings that must get through and pings that must not.

Every address pinged lives in a namespace the test made: the test host (``host.netns``), the
containers' sandboxes, and an "upstream" namespace joined to the test host by a veth pair. The
test host forwards IPv6 (the operator's job, see drivers/firewall.py) and its FORWARD policy is
ACCEPT (a fresh namespace), so a ping that fails across networks fails because of our rules, not
because nothing would route it; each must-fail ping has a must-succeed twin on the same path.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.runtime.conftest import Host

pytestmark = pytest.mark.runtime


def _ping6(h: Host, container: str, target: str) -> bool:
    return h.cli("exec", container, "--", "ping", "-6", "-n", "-c", "1", "-W", "1", target,
                 check=False).returncode == 0


def _reaches_upstream(h: Host, container: str, target: str) -> bool:
    """True once one of three single pings out through the gateway to the routed upstream answers.

    Known open race (see the stop-14 note): the very first IPv6 packet a just-started container
    sends out through its gateway to another routed namespace is sometimes lost (about 2 runs in 5
    here, on older code too); the next one always gets through. This asserts that the way out
    exists, which is what these tests are about; the race itself is tracked separately."""
    return any(_ping6(h, container, target) for _ in range(3))


def _ping4(h: Host, container: str, target: str) -> bool:
    return h.cli("exec", container, "--", "ping", "-4", "-n", "-c", "1", "-W", "1", target,
                 check=False).returncode == 0


def _v6(h: Host, container: str, network: str) -> str:
    return str(h.inspect(container)["NetworkSettings"]["Networks"][network]["address_v6"]).split("/")[0]


def _in(netns: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True, check=False,
                          timeout=60)


def _sandbox(h: Host, container: str, *cmd: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` in the container's network namespace from outside (the test's own hand)."""
    path = str(h.inspect(container)["NetworkSettings"]["SandboxKey"])
    return subprocess.run(["nsenter", f"--net={path}", *cmd], capture_output=True, text=True, check=True,
                          timeout=60)


@dataclass
class Upstream:
    netns: str
    host_side: str = "fd00:99::1"
    far_side: str = "fd00:99::2"


@pytest.fixture
def upstream(host: Host, netns_factory: Callable[[str], str]) -> Upstream:
    """A namespace beyond the test host, reachable over IPv6 through it (routed, no NAT)."""
    up = Upstream(netns_factory("u"))
    for cmd in (["ip", "-n", host.netns, "link", "add", "up0", "type", "veth", "peer", "name", "up1",
                 "netns", up.netns],
                ["ip", "-n", host.netns, "addr", "add", f"{up.host_side}/64", "dev", "up0", "nodad"],
                ["ip", "-n", up.netns, "addr", "add", f"{up.far_side}/64", "dev", "up1", "nodad"],
                ["ip", "-n", host.netns, "link", "set", "up0", "up"],
                ["ip", "-n", up.netns, "link", "set", "up1", "up"],
                ["ip", "-n", up.netns, "-6", "route", "add", "fd00:8::/32", "via", up.host_side],
                ["ip", "netns", "exec", host.netns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]):
        subprocess.run(cmd, check=True, capture_output=True)
    return up


def test_dual_stack_containers_reach_each_other_by_address_and_name(host: Host) -> None:
    h = host
    h.cli("network", "create", "--subnet", "10.81.0.0/24", "--ipv6", "--subnet", "fd00:8:1::/64", "dual")
    h.cli("run", "-d", "--name", "a", "--network", "dual", "--", "sleep", "1000")
    h.cli("run", "-d", "--name", "b", "--network", "dual", "--", "sleep", "1000")
    a6, b6 = _v6(h, "a", "dual"), _v6(h, "b", "dual")
    assert a6.startswith("fd00:8:1::") and b6.startswith("fd00:8:1::") and a6 != b6
    assert f"{b6}\tb" in h.cli("exec", "a", "--", "cat", "/etc/hosts").stdout
    assert _ping6(h, "a", b6) and _ping6(h, "b", a6)
    assert _ping6(h, "a", "b") and _ping6(h, "b", "a")        # by name, over IPv6
    assert _ping4(h, "a", "b")
    assert not _ping6(h, "a", "fd00:8:1::7777")               # nobody there: a ping can fail
    # After b leaves, its address answers no more.
    h.cli("rm", "-f", "b")
    assert not _ping6(h, "a", b6)


def test_two_dual_stack_networks_are_isolated_over_ipv6(host: Host, upstream: Upstream) -> None:
    h = host
    h.cli("network", "create", "--subnet", "10.82.1.0/24", "--ipv6", "--subnet", "fd00:8:21::/64", "blue")
    h.cli("network", "create", "--subnet", "10.82.2.0/24", "--ipv6", "--subnet", "fd00:8:22::/64", "red")
    h.cli("run", "-d", "--name", "b1", "--network", "blue", "--", "sleep", "1000")
    h.cli("run", "-d", "--name", "b2", "--network", "blue", "--", "sleep", "1000")
    h.cli("run", "-d", "--name", "r1", "--network", "red", "--", "sleep", "1000")
    b1 = _v6(h, "b1", "blue")
    assert _ping6(h, "b2", b1)                                 # same network: through
    # Both networks route out through the test host, so the path from red to blue exists...
    assert _reaches_upstream(h, "r1", upstream.far_side) and _reaches_upstream(h, "b1", upstream.far_side)
    # ...and only isolation stops red from reaching blue, by address and (no entry) by name.
    assert not _ping6(h, "r1", b1)
    assert not _ping6(h, "b1", _v6(h, "r1", "red"))
    assert not _ping6(h, "r1", "b1")
    assert "b1" not in h.cli("exec", "r1", "--", "cat", "/etc/hosts").stdout
    # A container on both networks reaches both.
    h.cli("network", "connect", "red", "b2")
    assert _ping6(h, "b2", _v6(h, "r1", "red")) and _ping6(h, "b2", b1)


def test_no_ipv6_way_out_of_an_internal_network(host: Host, upstream: Upstream) -> None:
    h = host
    h.cli("network", "create", "--subnet", "10.83.1.0/24", "--ipv6", "--subnet", "fd00:8:31::/64", "open")
    h.cli("network", "create", "--internal", "--subnet", "10.83.2.0/24", "--ipv6", "--subnet",
          "fd00:8:32::/64", "closed")
    h.cli("run", "-d", "--name", "out", "--network", "open", "--", "sleep", "1000")
    h.cli("run", "-d", "--name", "in1", "--network", "closed", "--", "sleep", "1000")
    h.cli("run", "-d", "--name", "in2", "--network", "closed", "--", "sleep", "1000")
    in1 = _v6(h, "in1", "closed")
    assert _ping6(h, "in2", in1)                               # inside the internal network: through
    assert _reaches_upstream(h, "out", upstream.far_side)      # the way out exists for a normal network
    assert _in(upstream.netns, "ping", "-6", "-n", "-c", "1", "-W", "1", _v6(h, "out", "open")).returncode == 0
    # The internal network gets no default route...
    assert _sandbox(h, "in1", "ip", "-6", "route", "show", "default").stdout.strip() == ""
    assert not _ping6(h, "in1", upstream.far_side)
    # ...and even with one put in by hand, the test host's firewall lets nothing out or in.
    _sandbox(h, "in1", "ip", "-6", "route", "add", "default", "via", "fd00:8:32::1")
    assert not _ping6(h, "in1", upstream.far_side)
    assert _in(upstream.netns, "ping", "-6", "-n", "-c", "1", "-W", "1", in1).returncode != 0
    assert not _ping6(h, "out", in1)
    assert not _ping6(h, "in1", _v6(h, "out", "open"))
