"""The reconciling agent in a real daemon, in a throwaway "host" namespace (issue 7 item 1).

"Reboot": the kernel objects go (bridge, veths, every iptables rule) and the store stays; the
restarted daemon must re-make them before it serves, so the next Join of an existing endpoint
works (it failed with ``link cnm-...: (19, 'No such device')``). "kill -9": a veth made but never
marked (the alias is a second netlink request) is adopted when a record names it, a marked link
without a record goes, and an unmarked link without a record is never touched. Kernel state is
read with ``ip -j`` and ``iptables -S`` inside the namespace.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.engine import Engine
from tests.conftest import in_netns, ip_json
from tests.kernel.test_daemon_process import HostDaemon

SANDBOX = "/var/run/docker/netns/cnmkit-test-none"          # dockerd-style Join: never opened


@pytest.fixture
def host(netns: str, tmp_path: Path) -> Iterator[HostDaemon]:
    daemon = HostDaemon(netns, tmp_path)
    daemon.start("--reconcile-interval", "0")
    yield daemon
    if daemon.proc is not None:
        daemon.stop(signal.SIGKILL)


def links(netns: str) -> dict[str, dict]:
    return {link["ifname"]: link for link in ip_json("link", "show", netns=netns)}


def addrs(netns: str, name: str) -> set[str]:
    (link,) = ip_json("addr", "show", "dev", name, netns=netns)
    return {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]}


def rules(netns: str) -> str:
    return in_netns(netns, "iptables", "-S").stdout + in_netns(netns, "iptables", "-t", "nat", "-S").stdout


def reboot(netns: str, names: list[str]) -> None:
    """What a host reboot does to our kernel objects: links gone (by name), every rule and chain gone."""
    for name in names:
        subprocess.run(["ip", "-n", netns, "link", "del", name], check=True)
    for binary in ("iptables", "ip6tables"):
        for table in ("filter", "nat"):
            in_netns(netns, binary, "-t", table, "-F")
            in_netns(netns, binary, "-t", table, "-X")


def test_reboot_rebuilds_bridge_rules_and_links_and_join_works(host: HostDaemon, netns: str) -> None:
    engine = Engine(str(host.plugins))
    try:
        nid = engine.create_network("web", subnets=["10.98.0.0/24"],
                                    options={"com.docker.network.driver.mtu": "1400"})
        att = engine.attach("web", SANDBOX)
        bridge, veth = f"cnm-{nid[:11]}", f"cnv{att.endpoint_id[:12]}"
        bridge_port = engine.driver("bridge").call("NetworkDriver.ProgramExternalConnectivity", {
            "NetworkID": nid, "EndpointID": att.endpoint_id,
            "Options": {"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 18080}]}})
        assert bridge_port is not None
        before = links(netns)
        assert before[veth]["master"] == bridge
        rules_before = rules(netns)
        assert f"cnmkit:{nid}:{att.endpoint_id}" in rules_before

        assert host.stop(signal.SIGKILL) != 0
        reboot(netns, [veth, bridge])
        assert bridge not in links(netns) and "CNMKIT" not in rules(netns)

        host.start("--reconcile-interval", "0")               # the pass runs before the sockets appear
        after = links(netns)
        assert after[bridge]["ifalias"] == f"cnmkit:net:{nid}"
        assert after[bridge]["mtu"] == 1400 and after[bridge]["address"] == before[bridge]["address"]
        assert "UP" in after[bridge]["flags"]
        assert "10.98.0.1/24" in addrs(netns, bridge)
        assert after[veth]["ifalias"] == f"cnmkit:ep:{att.endpoint_id}" and after[veth]["master"] == bridge
        assert sorted(rules(netns).splitlines()) == sorted(rules_before.splitlines())
        log = (host.state.parent / "daemon.log").read_text()
        assert f"reconcile: create bridge {bridge}" in log and f"create veth {veth}" in log

        # docker start of the stopped container: Join of the endpoint on record.
        joined = engine.driver("bridge").call("NetworkDriver.Join", {
            "NetworkID": nid, "EndpointID": att.endpoint_id, "SandboxKey": SANDBOX, "Options": {}})
        assert joined["InterfaceName"]["SrcName"] == f"cni{att.endpoint_id[:12]}"
        assert host.cli("reconcile").stdout.strip() == "nothing to do: the kernel matches the store"
        engine.detach(att)
        assert host.cli("network", "rm", "web").returncode == 0
        assert bridge not in links(netns) and "cnmkit:" not in rules(netns)
    finally:
        engine.close()


def test_reconcile_dry_run_says_and_does_nothing_then_repairs(host: HostDaemon, netns: str) -> None:
    engine = Engine(str(host.plugins))
    try:
        nid = engine.create_network("dry", subnets=["10.99.0.0/24"])
        bridge = f"cnm-{nid[:11]}"
        reboot(netns, [bridge])
        dry = host.cli("reconcile", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"would create bridge {bridge} of network {nid[:12]}" in dry.stdout
        assert f"would add 8 iptables rule(s) of network {nid[:12]}" in dry.stdout
        assert bridge not in links(netns) and "CNMKIT" not in rules(netns)
        done = host.cli("reconcile")
        assert done.returncode == 0 and f"create bridge {bridge}" in done.stdout
        assert "10.99.0.1/24" in addrs(netns, bridge) and f"cnmkit:{nid}" in rules(netns)
        assert host.cli("reconcile").stdout.strip() == "nothing to do: the kernel matches the store"
    finally:
        engine.close()


def test_half_made_veth_is_adopted_orphans_go_and_unmarked_links_stay(host: HostDaemon, netns: str) -> None:
    """A Join killed between link add and alias: DeleteEndpoint was refused forever (alias '')."""
    engine = Engine(str(host.plugins))
    try:
        nid = engine.create_network("half", subnets=["10.100.0.0/24"])
        bridge_tx = engine.driver("bridge")
        eid = "e" * 64
        bridge_tx.call("NetworkDriver.CreateEndpoint", {"NetworkID": nid, "EndpointID": eid,
                                                        "Interface": {"Address": "10.100.0.9/24"}, "Options": {}})
        veth = f"cnv{eid[:12]}"
        subprocess.run(["ip", "-n", netns, "link", "add", veth, "type", "veth", "peer", "name", f"cni{eid[:12]}"],
                       check=True)                                   # made, never marked
        lost, stray = "f" * 64, "c" * 64
        subprocess.run(["ip", "-n", netns, "link", "add", f"cnv{lost[:12]}", "type", "veth", "peer", "name",
                        "lostpeer"], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", f"cnv{lost[:12]}", "alias", f"cnmkit:ep:{lost}"],
                       check=True)                                   # ours, nobody records it
        subprocess.run(["ip", "-n", netns, "link", "add", f"cnv{stray[:12]}", "type", "veth", "peer", "name",
                        "straypeer"], check=True)                    # our kind of name, not ours

        dry = host.cli("reconcile", "--dry-run")
        assert f"would adopt veth {veth} of endpoint {eid[:12]}" in dry.stdout
        assert f"would delete link cnv{lost[:12]}" in dry.stdout
        assert stray[:12] not in dry.stdout
        assert links(netns)[veth].get("ifalias", "") == ""

        done = host.cli("reconcile")
        assert done.returncode == 0, done.stdout + done.stderr
        now = links(netns)
        assert now[veth]["ifalias"] == f"cnmkit:ep:{eid}" and now[veth]["master"] == f"cnm-{nid[:11]}"
        assert f"cnv{lost[:12]}" not in now
        assert f"cnv{stray[:12]}" in now and now[f"cnv{stray[:12]}"].get("ifalias", "") == ""

        bridge_tx.call("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
        assert veth not in links(netns)
        assert host.cli("network", "rm", "half").returncode == 0
        assert f"cnv{stray[:12]}" in links(netns)
        out = json.loads(host.cli("--format", "json", "network", "ls").stdout)
        assert out == []
    finally:
        engine.close()
