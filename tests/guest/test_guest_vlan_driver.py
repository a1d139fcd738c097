"""cnmkit-vlan end to end on a real 802.1Q kernel (inside user-mode-linux): issue 9 items 1-3, 5, 6.

Two "hosts" (namespaces, each with its own ``cnmkit daemon``, store and runtime) joined by a trunk
veth. Runtime containers on VLAN 100 on both hosts reach each other; a VLAN 200 network with the
same subnet on the same trunk is isolated from VLAN 100; the frames on the trunk carry the right
802.1Q tag, read by a raw AF_PACKET socket of the test (tests/guest/test_guest_vlan_basics.py's
capture), not taken from our code; macvlan mode passes the same checks. Deleting the networks
removes the sub-interfaces cnmkit made and keeps the one the operator made; bad input leaves
nothing. Every check's oracle is ``ip -j -d`` or the trunk capture.

One module-scoped pair of hosts serves every test (a daemon start is the expensive part).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.engine import Engine
from tests.conftest import ip_json, socket_answers
from tests.guest.test_guest_vlan_basics import PROBE, _capture_on_trunk
from tests.runtime.conftest import Host, _teardown
from tests.runtime.test_vlan_no8021q import _pools

SUBNET = "10.100.0.0/24"
_names = itertools.count()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def wait_for_vlan_socket(h: Host) -> None:
    """``h.start_daemon()`` returns once cnmkit.sock and cnmkit-bridge.sock answer; a plain daemon
    serves cnmkit-vlan too, and its socket may come up a moment after those."""
    while not socket_answers(str(h.plugin_dir / "cnmkit-vlan.sock")):
        assert h.daemon is not None and h.daemon.poll() is None, (h.tmp / "daemon.log").read_text()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Host, Host]]:
    tag = f"vl{os.getpid()}"
    a_ns, b_ns = f"{tag}a", f"{tag}b"
    made: list[Host] = []
    try:
        for ns in (a_ns, b_ns):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", "trunk", "netns", a_ns, "type", "veth", "peer", "name", "trunk", "netns", b_ns)
        for ns in (a_ns, b_ns):
            _ip("-n", ns, "link", "set", "trunk", "up")
            h = Host(netns=ns, tmp=tmp_path_factory.mktemp(ns))
            made.append(h)
            h.start_daemon()
            wait_for_vlan_socket(h)
        yield made[0], made[1]
    finally:
        for h in made:
            _teardown(h)
        for ns in (a_ns, b_ns):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def _links(h: Host) -> dict[str, dict]:
    return {link["ifname"]: link for link in ip_json("link", "show", netns=h.netns)}


def _netns_of(h: Host, container: str) -> str:
    """The container's network namespace, from the runtime's own records (``cnmkit exec`` would
    start a whole CLI per check, seconds each inside the guest; ping itself is what is tested)."""
    for cdir in (h.state_dir / "containers").iterdir():
        config = cdir / "config.json"
        if config.is_file() and json.loads(config.read_text())["name"] == container:
            return f"/proc/{json.loads((cdir / 'state.json').read_text())['init_pid']}/ns/net"
    raise AssertionError(f"no container {container} on {h.netns}")


def _in(h: Host, container: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={_netns_of(h, container)}", *argv], capture_output=True,
                          text=True, check=False, timeout=60)


def _ping(h: Host, container: str, target: str) -> bool:
    return _in(h, container, "ping", "-c", "1", "-W", "2", target).returncode == 0


def _send_probe(h: Host, container: str, target: str) -> None:
    done = _in(h, container, sys.executable, "-c",
               "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
               f"s.sendto({PROBE!r},({target!r},9))")
    assert done.returncode == 0, done.stderr


def _vlan_net(h: Host, name: str, vid: int, **extra: str) -> None:
    """What ``cnmkit network create -d vlan`` sends (the engine adds the VLAN's address space),
    from this process: a CLI process costs seconds in the guest (the CLI itself is run by the
    pool and bad-input tests)."""
    options = {"parent": "trunk", "vlan": str(vid), **extra}
    engine = Engine(str(h.plugin_dir))
    try:
        engine.create_network(name, driver="vlan", subnets=[SUBNET], options=options)
    finally:
        engine.close()


def _rm_nets(h: Host, *names: str) -> None:
    engine = Engine(str(h.plugin_dir))
    try:
        for name in names:
            engine.remove_network(name)
    finally:
        engine.close()


@pytest.mark.parametrize("mode", ["bridge", "macvlan"])
def test_two_hosts_share_a_vlan_and_a_second_vlan_with_the_same_subnet_is_isolated(
        hosts: tuple[Host, Host], mode: str) -> None:
    a, b = hosts
    n = next(_names)
    v1, v2 = (100, 200) if mode == "bridge" else (300, 400)
    net1, net2 = f"v{v1}", f"v{v2}"
    for h in (a, b):
        _vlan_net(h, net1, v1, mode=mode)
        _vlan_net(h, net2, v2, mode=mode)                  # the same subnet: accepted (item 2)
    for h in (a, b):
        links = _links(h)
        for vid in (v1, v2):
            sub = links[f"trunk.{vid}"]
            assert sub["linkinfo"]["info_kind"] == "vlan" and sub["linkinfo"]["info_data"]["id"] == vid
            assert sub["ifalias"] == f"cnmkit:uplink:trunk.{vid}"
            if mode == "bridge":
                assert sub.get("master", "").startswith("cnm-")
                bridge = ip_json("addr", "show", sub["master"], netns=h.netns)[0]
                assert [x for x in bridge.get("addr_info", []) if x["family"] == "inet"] == []  # no host address
            else:
                assert "master" not in sub
    a1, a2, b1, b2 = f"a1x{n}", f"a2x{n}", f"b1x{n}", f"b2x{n}"
    a.cli("run", "-d", "--name", a1, "--network", f"{net1},ip=10.100.0.10", "--", "sleep", "1000")
    a.cli("run", "-d", "--name", a2, "--network", f"{net2},ip=10.100.0.20", "--", "sleep", "1000")
    b.cli("run", "-d", "--name", b1, "--network", f"{net1},ip=10.100.0.11", "--", "sleep", "1000")
    b.cli("run", "-d", "--name", b2, "--network", f"{net2},ip=10.100.0.21", "--", "sleep", "1000")
    [eth0] = json.loads(_in(a, a1, "ip", "-j", "-d", "link", "show", "eth0").stdout)
    assert eth0["linkinfo"]["info_kind"] == ("veth" if mode == "bridge" else "macvlan")
    assert _ping(b, b1, "10.100.0.10")                         # VLAN v1 across the trunk
    assert _ping(b, b2, "10.100.0.20")                         # VLAN v2 across the trunk
    assert not _ping(b, b1, "10.100.0.20")                     # v1 does not reach v2's container
    assert not _ping(a, a1, "10.100.0.21")
    for sender, target, vid in ((a1, "10.100.0.11", v1), (a2, "10.100.0.21", v2)):
        frames = _capture_on_trunk(b.netns, lambda s=sender, t=target: _send_probe(a, s, t))
        assert [tag for tag, probe in frames if probe] == [vid], frames
    for h, names in ((a, (a1, a2)), (b, (b1, b2))):
        h.cli("rm", "-f", *names)
        _rm_nets(h, net1, net2)
        links = _links(h)
        assert f"trunk.{v1}" not in links and f"trunk.{v2}" not in links   # ours: deleted
        assert not any(name.startswith(("cnm-", "cnv")) for name in links), links
        assert _pools(h) == []


def test_a_sub_interface_the_operator_made_is_used_and_kept(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    _ip("-n", a.netns, "link", "add", "link", "trunk", "name", "trunk.500", "type", "vlan", "id", "500")
    try:
        _vlan_net(a, "v500", 500)
        sub = _links(a)["trunk.500"]
        assert sub.get("master", "").startswith("cnm-") and not sub.get("ifalias")
        _rm_nets(a, "v500")
        sub = _links(a)["trunk.500"]
        assert "master" not in sub and sub["linkinfo"]["info_data"]["id"] == 500     # kept, free again
    finally:
        subprocess.run(["ip", "-n", a.netns, "link", "del", "trunk.500"], check=False)


def test_vids_from_the_pool(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    a.cli("network", "create", "-d", "vlan", "p1", "-o", "parent=trunk", "-o", "vlan_range=600-601",
          "--subnet", "10.60.0.0/24")
    a.cli("network", "create", "-d", "vlan", "p2", "-o", "parent=trunk", "-o", "vlan_range=600-601",
          "--subnet", "10.60.0.0/24")
    assert {"trunk.600", "trunk.601"} <= set(_links(a))
    bad = a.cli("network", "create", "-d", "vlan", "p3", "-o", "parent=trunk", "-o", "vlan_range=600-601",
                "--subnet", "10.60.0.0/24", check=False)
    assert bad.returncode != 0 and "every VID in 600-601 is used" in bad.stderr
    a.cli("network", "rm", "p1", "p2")
    assert not {"trunk.600", "trunk.601"} & set(_links(a))
    assert _pools(a) == []


BAD_INPUT = [
    (("-o", "parent=nosuch0", "-o", "vlan=700"), "option parent: interface 'nosuch0' does not exist"),
    (("-o", "parent=trunk", "-o", "vlan=0"), "option vlan: 0 is outside 1..4094"),
    (("-o", "parent=trunk", "-o", "vlan=4095"), "option vlan: 4095 is outside 1..4094"),
    (("-o", "parent=trunk", "-o", "vlan=abc"), "option vlan: 'abc' is not a VLAN id"),
    (("-o", "parent=trunk", "-o", "vlan=800"), "parent trunk VID 800 already backs network"),
    (("-o", "parent=BRIDGE", "-o", "vlan=700"), "is one of cnmkit's own links"),
]


def test_bad_input_is_one_clear_error_and_leaves_nothing(hosts: tuple[Host, Host]) -> None:
    """Item 6, each case against the same host state (one loop: a CLI call costs ~1 s in the guest)."""
    a, _ = hosts
    a.cli("network", "create", "-d", "vlan", "taken", "-o", "parent=trunk", "-o", "vlan=800",
          "--subnet", "10.80.0.0/24")
    bridge = _links(a)["trunk.800"]["master"]
    try:
        before_links, before_pools = set(_links(a)), _pools(a)
        before_nets = a.json("network", "ls")
        for opts, text in BAD_INPUT:
            argv = [o.replace("BRIDGE", bridge) for o in opts]
            bad = a.cli("network", "create", "-d", "vlan", "bad", *argv, "--subnet", "10.81.0.0/24", check=False)
            assert bad.returncode != 0, opts
            assert text in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, (opts, bad.stderr)
            assert set(_links(a)) == before_links and _pools(a) == before_pools, opts
        assert a.json("network", "ls") == before_nets
    finally:
        a.cli("network", "rm", "taken")


def test_the_tier_says_which_kernel_it_ran_on() -> None:
    release = Path("/proc/sys/kernel/osrelease").read_text().strip()
    print(f"guest kernel: {release}")
    assert release.startswith("6.1.")
