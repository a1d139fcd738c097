"""The lab itself, proven with what exists before any overlay: hosts, store, runtime, dockerd, VXLAN.

These tests are what the overlay tests stand on: if one fails, an overlay failure would say
nothing about the driver. Each uses an independent oracle: etcdctl for the store, ``ip``/``bridge``
JSON for the kernel, ping for the datapath.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

from tests.overlay import handbuilt, oracle
from tests.overlay.dockerd import HostDockerd
from tests.overlay.harness import Lab, run


def test_every_host_is_on_the_shared_etcd_with_its_underlay_address(lab: Lab) -> None:
    assert lab.etcd is not None
    keys = lab.etcd.keys("hosts/")
    assert sorted(keys) == [f"hosts/{h.host_id}" for h in lab.hosts]
    for host in lab.hosts:
        record = json.loads(lab.etcd.get_on(0, f"hosts/{host.host_id}") or "{}")
        assert record["Advertise"] == host.address
        assert host.host_ids() == [h.name for h in lab.hosts]


def test_runtime_containers_on_each_host_reach_the_other_hosts_over_the_underlay(
        lab: Lab, names: Callable[[str], str]) -> None:
    """A runtime container per host, on a bridge network of its host, leaves through its host's
    masquerade and reaches the other hosts' underlay addresses (the path egress takes on the overlay)."""
    for i, host in enumerate(lab.hosts):
        net, box = names("br"), names("c")
        host.cli("network", "create", "--subnet", f"10.84.{i}.0/24", net)
        host.cli("run", "-d", "--name", box, "--network", net, "--", "sleep", "1000")
        for other in lab.hosts:
            if other is not host:
                assert host.ping(box, other.address), f"{host.name}/{box} -> {other.address}"


def test_a_handbuilt_vxlan_carries_traffic_between_hosts_and_the_oracle_reads_it(lab: Lab) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    eps = handbuilt.build(lab, [a, b], vni=4243)
    try:
        assert eps[0].exec("ping", "-c", "1", "-W", "2", eps[1].ip).returncode == 0
        assert eps[1].exec("ping", "-c", "1", "-W", "2", eps[0].ip).returncode == 0
        # The oracle finds each host's VTEP by VNI and local address, and the entries build() made.
        assert oracle.fdb(a, 4243) == {(eps[1].mac, b.address), (oracle.ZERO_MAC, b.address)}
        assert oracle.flood(b, 4243) == {a.address}
        assert oracle.vtep(lab.hosts[2], 4243) is None
        assert oracle.vtep(a, 4244) is None
    finally:
        handbuilt.remove(lab, eps)
    assert oracle.vtep(a, 4243) is None


def test_a_sigkilled_daemon_leaves_every_other_hosts_list_once_its_lease_expires(lab: Lab) -> None:
    victim = lab.hosts[-1]
    others = [h for h in lab.hosts if h is not victim]
    victim.stop_daemon(signal.SIGKILL)
    try:
        for host in others:
            lab.wait_hosts([h.name for h in others], on=host)
        assert lab.etcd is not None and f"hosts/{victim.host_id}" not in lab.etcd.keys("hosts/")
    finally:
        victim.start_daemon()
    lab.wait_hosts([h.name for h in lab.hosts])


def test_a_dockerd_in_a_host_serves_containers_with_that_hosts_cnmkit(lab: Lab, docker_h1: HostDockerd) -> None:
    """The engine in h1 finds h1's sockets (not the root namespace's), its network lands in the
    shared store and in h1's kernel only, and its container reaches another host."""
    host = docker_h1.host
    net = "dkbr"
    docker_h1.docker("network", "create", "-d", "cnmkit-bridge", "--ipam-driver", "cnmkit",
                     "--subnet", "10.85.0.0/24", net)
    try:
        assert [n["Driver"] for n in host.json("network", "ls") if _pools(n) == ["10.85.0.0/24"]] \
            == ["cnmkit-bridge"]
        bridges = [link["ifname"] for link in host.ip_json("link", "show", "type", "bridge")
                   if str(link.get("ifalias", "")).startswith("cnmkit:net:")]
        assert len(bridges) == 1, bridges
        root_aliases = json.loads(run("ip", "-j", "link", "show").stdout)
        assert not any(str(link.get("ifalias", "")).startswith("cnmkit:net:") for link in root_aliases)
        out = docker_h1.docker("run", "--rm", "--network", net, docker_h1.image, "ping", "-c", "1", "-W", "2",
                               lab.hosts[1].address, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        docker_h1.docker("network", "rm", net, check=False)
    assert not [n for n in host.json("network", "ls") if _pools(n) == ["10.85.0.0/24"]]


def _pools(net: dict) -> list[str]:
    return [str(d["Pool"]) for d in net.get("IPv4", [])]
