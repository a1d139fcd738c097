"""The VXLAN overlay across real daemons in host namespaces on one underlay (issue 8, items 1-6).

One module-scoped lab of two hosts (tests/overlay/harness.py) sharing a SQLite store;
containers are named namespaces attached as the embedded runtime attaches them. Oracles:
``ping`` for traffic, ``bridge -j fdb`` and ``ip -j neigh`` for the entries the agent derives.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Iterator

import pytest

from client.engine import Engine, PluginError
from tests.conftest import ip_json, require_root
from tests.overlay.harness import NETNS_DIR, Lab, OverlayHost, eventually, ping_in, run
from tests.overlay.oracle import fdb_in, neigh_in
from tests.runtime.conftest import require_tool


@pytest.fixture(scope="module")
def cluster() -> Iterator[Lab]:
    require_root()
    for tool, package in (("nsenter", "util-linux"), ("bridge", "iproute2"), ("ebtables", "ebtables"),
                          ("ping", "iputils-ping")):
        require_tool(tool, package)
    made = Lab(2, tag="k", store="sqlite").start()
    try:
        yield made
    finally:
        made.close()


def vni_of(engine: Engine, network: str) -> int:
    net = engine.inspect_network(network)
    return int(net["Options"].get("vni") or _overlay_vni(engine, net))


def _overlay_vni(engine: Engine, net: dict) -> int:
    ep = net["EndpointList"][0] if net["EndpointList"] else None
    assert ep is not None, "the VNI is read from an endpoint's oper info"
    info = engine.driver(net["Driver"]).call("NetworkDriver.EndpointOperInfo",
                                             {"NetworkID": net["Id"], "EndpointID": ep["EndpointID"]})
    return int(info["Value"]["vni"])


def entries_both_ways(h1: OverlayHost, ip1: str, h2: OverlayHost, ip2: str, vni: int) -> None:
    """Until each host's overlay namespace holds the other's endpoint: an echo needs h1's entry for
    ip2 and its reply h2's entry for ip1 (vxlan0 answers ARP from them), so waiting for one side
    only races the other host's agent."""
    eventually(f"entries for {ip1} <-> {ip2}",
               lambda: any(ip == ip2 for ip, _ in neigh_in(h1.overlay_ns(vni)))
               and any(ip == ip1 for ip, _ in neigh_in(h2.overlay_ns(vni))))


def test_cli_overlay_created_once_pings_across_hosts_and_entries_follow_endpoints(cluster: Lab) -> None:
    h1, h2 = cluster.hosts
    h1.engine().create_network("green", driver="vxlan", subnets=["10.71.0.0/24"], options={"vni": "7101"})
    c1, c2 = h1.container("g1"), h2.container("g2")
    a1 = h1.attach("green", c1)
    a2 = h2.attach("green", c2)                    # the network record is h1's: h2 uses it through the store
    ns1, ns2 = h1.overlay_ns(7101), h2.overlay_ns(7101)
    ip1, ip2 = a1.address.split("/")[0], a2.address.split("/")[0]
    eventually("h2 has h1's endpoint", lambda: (a1.mac, h1.address) in fdb_in(ns2) and (ip1, a1.mac) in neigh_in(ns2))
    eventually("h1 has h2's endpoint", lambda: (a2.mac, h2.address) in fdb_in(ns1) and (ip2, a2.mac) in neigh_in(ns1))
    # Exactly the remote endpoint and one flood entry per remote VTEP: nothing learned, nothing local.
    assert fdb_in(ns2) == {(a1.mac, h1.address), ("00:00:00:00:00:00", h1.address)}
    assert neigh_in(ns2) == {(ip1, a1.mac)}
    assert ping_in(h1, c1, ip2).returncode == 0, ping_in(h1, c1, ip2).stdout
    assert ping_in(h2, c2, ip1).returncode == 0
    # Same gateway address on both hosts, answered locally on each.
    assert a1.gateway == a2.gateway
    assert ping_in(h1, c1, a1.gateway).returncode == 0 and ping_in(h2, c2, a2.gateway).returncode == 0
    # An endpoint going away on h1 leaves h2's tables (no flood entry either: h1 has no endpoint left).
    h1.engine().detach(a1)
    eventually("h1's endpoint gone from h2", lambda: fdb_in(ns2) == set() and neigh_in(ns2) == set())
    assert ping_in(h2, c2, ip1).returncode != 0
    h2.engine().detach(a2)
    # The network goes (from h1, which made it): every host's namespace goes, and the VNI is free again.
    h1.engine().remove_network("green")
    eventually("namespaces gone", lambda: not {ns1, ns2} & set(run("ip", "netns", "list").stdout.split()))
    h2.engine().create_network("green2", driver="vxlan", subnets=["10.71.1.0/24"], options={"vni": "7101"})
    h2.engine().remove_network("green2")


def test_embedded_runtime_containers_on_two_hosts_talk_over_the_overlay(cluster: Lab) -> None:
    """``cnmkit network create -d vxlan`` once on h1, ``cnmkit run`` on each host, as the README shows."""
    h1, h2 = cluster.hosts
    made = h1.cli("network", "create", "-d", "vxlan", "rt", "--subnet", "10.69.0.0/24", "-o", "vni=6901", check=False)
    assert made.returncode == 0, made.stderr
    assert h1.cli("run", "-d", "--name", "a", "--network", "rt,ip=10.69.0.10", "--", "sleep", "1000",
                  check=False).returncode == 0
    got = h2.cli("run", "--name", "b", "--network", "rt", "--", "sh", "-c",
                 "cat /sys/class/net/eth0/mtu; ping -c 3 -W 2 10.69.0.10", check=False)   # 3: b's entries may lag on h1
    assert got.returncode == 0, got.stdout + got.stderr
    assert got.stdout.splitlines()[0] == "1450"          # the overlay's MTU, not the runtime's 1500 default


def test_ipv6_addresses_get_neighbour_entries_and_ping_across(cluster: Lab) -> None:
    h1, h2 = cluster.hosts
    h1.engine().create_network("six", driver="vxlan", subnets=["10.66.0.0/24", "fd66::/64"], ipv6=True,
                               options={"vni": "6601"})
    a1 = h1.attach("six", h1.container("s6"))
    a2 = h2.attach("six", h2.container("s6"))
    ip6 = a1.address_v6.split("/")[0]
    eventually("v6 neighbour on h2", lambda: (ip6, a1.mac) in neigh_in(h2.overlay_ns(6601)))
    assert h2.run(h2.containers[-1], "ping", "-6", "-c", "2", "-W", "2", ip6).returncode == 0
    assert h2.run(h2.containers[-1], "ping", "-6", "-c", "1", "-W", "2", a2.gateway_v6).returncode == 0


def test_an_orphaned_endpoint_veth_is_removed_by_cleanup(cluster: Lab) -> None:
    """A veth whose endpoint record is gone (a crash between the link delete and the record delete)."""
    h1 = cluster.hosts[0]
    h1.engine().create_network("olive", driver="vxlan", subnets=["10.68.0.0/24"], options={"vni": "6801"})
    h1.attach("olive", h1.container("o0"))                  # keeps the namespace wanted
    ns = h1.overlay_ns(6801)
    orphan = "cnvdeadbeef0000"
    run("ip", "-n", ns, "link", "add", orphan, "type", "veth", "peer", "name", "cnideadbeef0000")
    run("ip", "-n", ns, "link", "set", orphan, "alias", "cnmkit:ep:" + "de" * 32)
    actions = h1.engine().cleanup()
    assert any(orphan in a for a in actions), actions
    assert orphan not in run("ip", "-n", ns, "-br", "link").stdout


def test_reused_address_with_a_new_mac_and_a_moved_mac_leave_nothing_stale(cluster: Lab) -> None:
    h1, h2 = cluster.hosts
    h1.engine().create_network("amber", driver="vxlan", subnets=["10.72.0.0/24"], options={"vni": "7201"})
    c0 = h2.container("a0")
    watcher = h2.attach("amber", c0)
    ns2 = h2.overlay_ns(7201)
    old = h1.attach("amber", h1.container("a1"), ip="10.72.0.50", mac="02:aa:00:00:00:01")
    eventually("first MAC seen", lambda: ("10.72.0.50", "02:aa:00:00:00:01") in neigh_in(ns2))
    h1.engine().detach(old)
    new = h1.attach("amber", h1.container("a2"), ip="10.72.0.50", mac="02:aa:00:00:00:02")
    eventually("new MAC replaces the old", lambda: neigh_in(ns2) == {("10.72.0.50", "02:aa:00:00:00:02")}
               and fdb_in(ns2) == {("02:aa:00:00:00:02", h1.address), ("00:00:00:00:00:00", h1.address)})
    assert ping_in(h2, c0, "10.72.0.50").returncode == 0
    # The address moves to h2 with the new MAC: h2 holds it locally now, so no entry for it at all.
    h1.engine().detach(new)
    eventually("gone", lambda: fdb_in(ns2) == set() and neigh_in(ns2) == set())
    moved = h2.attach("amber", h2.container("a3"), ip="10.72.0.50", mac="02:aa:00:00:00:02")
    ns1 = h1.overlay_ns(7201)
    h1.attach("amber", h1.container("a4"), ip="10.72.0.60")
    eventually("h1 sees the MAC on h2 now", lambda: fdb_in(ns1) == {("02:aa:00:00:00:02", h2.address),
                                                                 (watcher.mac, h2.address),
                                                                 ("00:00:00:00:00:00", h2.address)})
    assert ping_in(h1, h1.containers[-1], "10.72.0.50").returncode == 0
    h2.engine().detach(moved)
    h2.engine().detach(watcher)


def test_two_overlays_with_one_subnet_are_isolated(cluster: Lab) -> None:
    h1, h2 = cluster.hosts
    for name, vni in (("red", "7301"), ("blue", "7302")):
        h1.engine().create_network(name, driver="vxlan", subnets=["10.73.0.0/24"], options={"vni": vni})
    r1 = h1.attach("red", h1.container("r1"), ip="10.73.0.10")
    b1 = h1.attach("blue", h1.container("b1"), ip="10.73.0.10")     # the same address, another overlay
    h2.attach("red", h2.container("r2"), ip="10.73.0.20")
    r2c, b1c, r1c = h2.containers[-1], h1.containers[-1], h1.containers[-2]
    entries_both_ways(h1, "10.73.0.10", h2, "10.73.0.20", 7301)
    assert ping_in(h1, r1c, "10.73.0.20").returncode == 0          # control: red reaches red across hosts
    assert ping_in(h1, b1c, "10.73.0.20").returncode != 0          # blue does not reach red
    assert ping_in(h2, r2c, "10.73.0.10").returncode == 0          # and 10.73.0.10 is red's, not blue's
    assert r1.gateway == b1.gateway
    # A bridge network of h1 with the same subnet: allowed (the overlays live in their own
    # namespaces), and apart from them both ways.
    h1.engine().create_network("plain", driver="bridge", subnets=["10.73.0.0/24"])
    p1 = h1.container("p1")
    h1.attach("plain", p1, ip="10.73.0.30")
    assert ping_in(h1, p1, "10.73.0.1").returncode == 0            # its own gateway, on h1's bridge
    assert ping_in(h1, r1c, "10.73.0.30").returncode != 0
    assert ping_in(h1, p1, "10.73.0.20").returncode != 0


def test_mtu_is_underlay_minus_50_and_an_oversized_ping_fails_fast(cluster: Lab) -> None:
    h1, h2 = cluster.hosts
    h1.engine().create_network("violet", driver="vxlan", subnets=["10.74.0.0/24"], options={"vni": "7401"})
    c1, c2 = h1.container("v1"), h2.container("v2")
    ip1 = h1.attach("violet", c1).address.split("/")[0]
    a2 = h2.attach("violet", c2)
    ip2 = a2.address.split("/")[0]
    links = json.loads(run("ip", "-n", c1, "-j", "link", "show", "eth0").stdout)
    assert links[0]["mtu"] == 1450
    entries_both_ways(h1, ip1, h2, ip2, 7401)
    big = ping_in(h1, c1, ip2, "-M", "do", "-s", "1472")
    assert big.returncode != 0 and ("too long" in big.stderr + big.stdout or "mtu" in (big.stderr + big.stdout).lower())
    assert ping_in(h1, c1, ip2, "-M", "do", "-s", "1422").returncode == 0


def in_echos(container: str) -> int:
    """ICMP echo requests the container's stack received (/proc/net/snmp, per namespace)."""
    lines = [line.split() for line in run("ip", "netns", "exec", container, "cat", "/proc/net/snmp").stdout.splitlines()
             if line.startswith("Icmp:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["InEchos"])


def test_gateway_frames_do_not_cross_the_overlay(cluster: Lab) -> None:
    """Each host's gateway (its overlay namespace's own stack) talks only to local containers.

    vxlan0 answers ARP from the store's entries (``proxy``), so h1's gateway would learn h2's
    container's MAC and send it frames over the tunnel; the ebtables rules stop them (OUTPUT on
    h1, and the gateway MAC as source dropped on h2's way in: each alone suffices, without both
    this test fails with 4 echoes). The oracle is h2's container's own ICMP counter: it sees a
    container's echo, never the gateway's."""
    h1, h2 = cluster.hosts
    h1.engine().create_network("teal", driver="vxlan", subnets=["10.75.0.0/24"], options={"vni": "7501"})
    c1, c2 = h1.container("t1"), h2.container("t2")
    ip1 = h1.attach("teal", c1).address.split("/")[0]
    a2 = h2.attach("teal", c2)
    ip2 = a2.address.split("/")[0]
    entries_both_ways(h1, ip1, h2, ip2, 7501)
    before = in_echos(c2)
    assert ping_in(h1, c1, ip2).returncode == 0
    assert in_echos(c2) == before + 1                       # control: the counter sees a container's echo
    run("ip", "netns", "exec", h1.overlay_ns(7501), "ping", "-c", "3", "-W", "1", ip2, check=False)
    assert in_echos(c2) == before + 1                       # h1's gateway sent nothing across


def test_egress_masquerades_on_the_own_host_and_internal_has_no_way_out(cluster: Lab) -> None:
    h1, _ = cluster.hosts
    h1.engine().create_network("out", driver="vxlan", subnets=["10.76.0.0/24"], options={"vni": "7601"})
    h1.engine().create_network("sealed", driver="vxlan", subnets=["10.76.1.0/24"], internal=True,
                               options={"vni": "7602"})
    c = h1.container("o1")
    h1.attach("out", c)
    assert ping_in(h1, c, "192.0.2.254").returncode == 0          # the underlay's own address, via h1's NAT
    s = h1.container("s1")
    h1.attach("sealed", s)
    assert ping_in(h1, s, "192.0.2.254").returncode != 0


def test_two_vnis_equal_modulo_the_transit_slots_both_get_egress(cluster: Lab) -> None:
    """VNIs 7603 and 7603 + 8192 wanted the same transit /30 (VNI modulo 8192) on a host, and the
    second overlay was refused; each gets its own slot now, and both masquerade out."""
    h1 = cluster.hosts[0]
    vnis = (7603, 7603 + 8192)
    for i, vni in enumerate(vnis):
        h1.engine().create_network(f"slot{i}", driver="vxlan", subnets=[f"10.76.{2 + i}.0/24"],
                                   options={"vni": str(vni)})
    ends = [ip_json("addr", "show", f"ovt{vni}", netns=h1.netns)[0]["addr_info"][0]["local"] for vni in vnis]
    assert len(set(ends)) == 2, ends
    for i in range(2):
        c = h1.container(f"sl{i}")
        h1.attach(f"slot{i}", c)
        assert ping_in(h1, c, "192.0.2.254").returncode == 0


@pytest.mark.parametrize("opts,subnet,message", [
    ({"vni": "0"}, "10.79.0.0/24", "vni"),
    ({"vni": "16777216"}, "10.79.0.0/24", "vni"),
    ({"vni": "7901"}, "10.79.0.0/24", "vni: 7901 is already used by overlay 'held'"),
    ({"com.docker.network.driver.mtu": "1451"}, "10.79.0.0/24", "com.docker.network.driver.mtu"),
    ({}, "192.0.2.128/25", "subnet: 192.0.2.128/25 overlaps the underlay's own 192.0.2.0/24"),
])
def test_bad_input_is_refused_naming_the_field(cluster: Lab, opts: dict, subnet: str, message: str) -> None:
    h1 = cluster.hosts[0]
    e = h1.engine()
    if all(n["Name"] != "held" for n in e.list_networks()):
        e.create_network("held", driver="vxlan", subnets=["10.79.9.0/24"], options={"vni": "7901"})
    before = set(run("ip", "netns", "list").stdout.split())
    options = {"cnmkit.overlay": "bad", **opts}
    with pytest.raises(PluginError, match=re.escape(message)):
        e.create_network("bad", driver="vxlan", subnets=[subnet], options=options)
    assert not any(n.startswith("cnmkit-ov") for n in set(run("ip", "netns", "list").stdout.split()) - before)
    assert all(n["Name"] != "bad" for n in e.list_networks())


def test_an_overlay_removed_from_another_host_leaves_its_owner(cluster: Lab) -> None:
    """h2 removes h1's overlay network: h1's namespace goes on the watch event (no periodic
    pass runs: the daemons have ``--reconcile-interval 0``)."""
    h1, h2 = cluster.hosts
    h1.engine().create_network("far", driver="vxlan", subnets=["10.77.3.0/24"], options={"vni": "7721"})
    assert h1.overlay_ns(7721) in run("ip", "netns", "list").stdout
    h2.engine().remove_network("far")
    eventually("h1's namespace gone", lambda: h1.overlay_ns(7721) not in run("ip", "netns", "list").stdout)


def vxlan_vni(netns: str, device: str = "vxlan0") -> int | None:
    """The VNI of ``device`` in ``netns`` as ``ip -j -d link`` shows it (None: no such device)."""
    got = run("ip", "-n", netns, "-j", "-d", "link", "show", device, check=False)
    return int(json.loads(got.stdout)[0]["linkinfo"]["info_data"]["id"]) if got.returncode == 0 else None


def test_a_removed_overlay_frees_its_vni_at_once_even_while_its_namespace_is_held(cluster: Lab) -> None:
    """``ip netns del`` only unlinks a namespace's name; the kernel destroys it (and the vxlan0
    in it, which holds the VNI in the host namespace) later, and never while something holds it
    open. Holding it here makes that window last: the same VNI made again right after the
    removal must still get a vxlan0 of its own (it got EEXIST, read as "already there", then
    ENODEV configuring a vxlan0 that was not in the new namespace)."""
    h1 = cluster.hosts[0]
    h1.engine().create_network("held1", driver="vxlan", subnets=["10.77.0.0/24"], options={"vni": "7711"})
    ns = h1.overlay_ns(7711)
    pin = os.open(f"{NETNS_DIR}/{ns}", os.O_RDONLY)
    try:
        h1.engine().remove_network("held1")
        assert ns not in run("ip", "netns", "list").stdout
        h1.engine().create_network("held2", driver="vxlan", subnets=["10.77.1.0/24"], options={"vni": "7711"})
        assert vxlan_vni(ns) == 7711
        a = h1.attach("held2", h1.container("hd"))
        assert ping_in(h1, h1.containers[-1], a.gateway).returncode == 0
        h1.engine().detach(a)
        h1.engine().remove_network("held2")
    finally:
        os.close(pin)


def test_a_vni_held_by_a_vxlan_device_not_ours_is_refused_naming_it(cluster: Lab) -> None:
    """The kernel's EEXIST for a VNI another VXLAN device of the host already uses on port 4789
    is an error naming that device, and nothing is left half-made; once it is gone the VNI works."""
    h1 = cluster.hosts[0]
    foreign = "fx7712"
    run("ip", "-n", h1.netns, "link", "add", foreign, "type", "vxlan", "id", "7712", "dstport", "4789",
       "local", h1.address)
    try:
        with pytest.raises(PluginError, match=re.escape(f"VNI 7712 on UDP port 4789 is already used by VXLAN "
                                                        f"device {foreign}")):
            h1.engine().create_network("stolen", driver="vxlan", subnets=["10.77.2.0/24"],
                                       options={"vni": "7712"})
        assert all(n["Name"] != "stolen" for n in h1.engine().list_networks())
        # h1's agent may be making the namespace from the records it saw before the rollback.
        eventually("no namespace left", lambda: h1.overlay_ns(7712) not in run("ip", "netns", "list").stdout)
    finally:
        run("ip", "-n", h1.netns, "link", "del", foreign)
    h1.engine().create_network("stolen", driver="vxlan", subnets=["10.77.2.0/24"], options={"vni": "7712"})
    assert vxlan_vni(h1.overlay_ns(7712)) == 7712
    h1.engine().remove_network("stolen")


def test_a_create_without_the_ipam_option_is_refused_saying_what_to_add(cluster: Lab) -> None:
    """dockerd without ``--ipam-opt cnmkit.overlay=NAME``: the pool is a per-host one, so the
    overlay's addresses would not be shared; CreateNetwork says what to add, and leaves nothing."""
    h1 = cluster.hosts[0]
    ipam = h1.engine().ipam
    got = ipam.call("IpamDriver.RequestPool", {"AddressSpace": "cnmkit-local", "Pool": "10.79.5.0/24",
                                               "SubPool": "", "Options": {}, "V6": False})
    assert got["PoolID"] == "cnmkit-local/10.79.5.0/24"
    with pytest.raises(PluginError, match=re.escape("--ipam-driver cnmkit --ipam-opt cnmkit.overlay=lost")):
        h1.engine().driver("vxlan").call("NetworkDriver.CreateNetwork", {
            "NetworkID": f"{9:064x}", "Options": {"com.docker.network.generic": {"cnmkit.overlay": "lost"}},
            "IPv4Data": [{"AddressSpace": "cnmkit-local", "Pool": "10.79.5.0/24", "Gateway": "10.79.5.1/24"}],
            "IPv6Data": []})
    ipam.call("IpamDriver.ReleasePool", {"PoolID": got["PoolID"]})
    assert f"{9:064x}" not in {n["Id"] for n in h1.engine().list_networks()}
    assert not any("lost" in n for n in run("ip", "netns", "list").stdout.split())


def dockerd_create(host: OverlayHost, network_id: str, overlay: str, subnet: str, vni: int) -> tuple[str, str]:
    """What a dockerd sends for ``docker network create -d cnmkit-vxlan --ipam-driver cnmkit
    --ipam-opt cnmkit.overlay=OVERLAY -o cnmkit.overlay=OVERLAY -o vni=VNI --subnet SUBNET``;
    the pool id and gateway IPAM gave."""
    ipam = host.engine().ipam
    got = ipam.call("IpamDriver.RequestPool", {"AddressSpace": "cnmkit-local", "Pool": subnet, "SubPool": "",
                                               "Options": {"cnmkit.overlay": overlay}, "V6": False})
    gw = ipam.call("IpamDriver.RequestAddress", {"PoolID": got["PoolID"], "Address": "",
                                                 "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    host.engine().driver("vxlan").call("NetworkDriver.CreateNetwork", {
        "NetworkID": network_id,
        "Options": {"com.docker.network.generic": {"cnmkit.overlay": overlay, "vni": str(vni)}},
        "IPv4Data": [{"AddressSpace": "cnmkit-local", "Pool": subnet, "Gateway": gw["Address"]}],
        "IPv6Data": []})
    return str(got["PoolID"]), str(gw["Address"])


def test_concurrent_deletes_of_an_overlays_last_networks_on_two_hosts_take_it_away(cluster: Lab) -> None:
    """Each host's DeleteNetwork of its network of one overlay, at once: the overlay record and
    its VNI go with the last (each delete read the other's network record, so neither took
    them, and the overlay stayed, with its subnet and VNI, forever); both namespaces go."""
    hosts = cluster.hosts[:2]
    ids = [f"{0x7810 + i:064x}" for i in range(2)]
    pools = [dockerd_create(host, network_id, "pair", "10.78.2.0/24", 7810)[0]
             for host, network_id in zip(hosts, ids, strict=True)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def delete(host: OverlayHost, network_id: str) -> None:
        start.wait()
        try:
            host.engine().driver("vxlan").call("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=delete, args=pair) for pair in zip(hosts, ids, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for host, pool in zip(hosts, pools, strict=True):
        host.engine().ipam.call("IpamDriver.ReleasePool", {"PoolID": pool})
    eventually("both namespaces gone", lambda: not {h.overlay_ns(7810) for h in hosts}
               & set(run("ip", "netns", "list").stdout.split()))
    # The overlay is gone: its name takes another subnet, and its VNI is free for another overlay.
    hosts[0].engine().create_network("pair2", driver="vxlan", subnets=["10.78.3.0/24"],
                                     options={"cnmkit.overlay": "pair"})
    hosts[0].engine().create_network("pair3", driver="vxlan", subnets=["10.78.4.0/24"], options={"vni": "7810"})
    for name in ("pair2", "pair3"):
        hosts[0].engine().remove_network(name)


def test_dockerd_style_create_on_each_host_shares_pool_and_gateway_and_refuses_mismatch(
        cluster: Lab) -> None:
    """What two dockerds send for ``docker network create -d cnmkit-vxlan --ipam-driver cnmkit
    --ipam-opt cnmkit.overlay=navy -o cnmkit.overlay=navy --subnet 10.78.0.0/24`` on each host."""
    h1, h2 = cluster.hosts
    pools = [dockerd_create(host, f"{i + 1:064x}", "navy", "10.78.0.0/24", 7801) for i, host in enumerate((h1, h2))]
    assert pools[0] == pools[1] == ("cnmkit-overlay.navy/10.78.0.0/24", "10.78.0.1/24")
    # A third create naming the overlay with another subnet is refused, naming the field.
    ipam = h2.engine().ipam
    other = ipam.call("IpamDriver.RequestPool", {"AddressSpace": "cnmkit-local", "Pool": "10.78.1.0/24",
                                                 "SubPool": "", "Options": {"cnmkit.overlay": "navy"}, "V6": False})
    with pytest.raises(PluginError, match=re.escape("subnet: overlay 'navy' exists with 10.78.0.0/24")):
        h2.engine().driver("vxlan").call("NetworkDriver.CreateNetwork", {
            "NetworkID": f"{3:064x}", "Options": {"com.docker.network.generic": {"cnmkit.overlay": "navy"}},
            "IPv4Data": [{"AddressSpace": "cnmkit-local", "Pool": "10.78.1.0/24", "Gateway": "10.78.1.1/24"}],
            "IPv6Data": []})
    ipam.call("IpamDriver.ReleasePool", {"PoolID": other["PoolID"]})
    assert all(host.overlay_ns(7801) in run("ip", "netns", "list").stdout for host in (h1, h2))



def test_a_killed_host_leaves_the_others_tables_when_its_lease_expires(cluster: Lab) -> None:
    """Last in the module: it adds a third host and SIGKILLs it (no clean deregistration)."""
    h1 = cluster.hosts[0]
    h1.engine().create_network("gone", driver="vxlan", subnets=["10.70.0.0/24"], options={"vni": "7001"})
    h3 = cluster.add_host(3)
    h3.start_daemon()
    a1 = h1.attach("gone", h1.container("x1"))
    a3 = h3.attach("gone", h3.container("x3"))
    ns1 = h1.overlay_ns(7001)
    eventually("h3's endpoint on h1", lambda: (a3.mac, h3.address) in fdb_in(ns1))
    assert ping_in(h1, h1.containers[-1], a3.address.split("/")[0]).returncode == 0
    h3.stop_daemon(signal.SIGKILL)                            # its lease (2 s) is no longer kept alive
    eventually("h3 gone from h1's tables", lambda: fdb_in(ns1) == set() and neigh_in(ns1) == set())
    assert a1.mac not in {m for m, _ in fdb_in(ns1)}
