"""VlanDriver on FakeKernel + Firewall(FakeIptables) + a memory store: sub-interfaces, refcounts,
validation, the VID pool, macvlan mode, no-802.1Q, and the manager/IPAM rules for shared subnets.

The real-kernel proof is the guest tier (tests/guest, inside user-mode-linux); this tier pins the
decisions (what is made, kept, refused) where each case costs microseconds.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from netaddr import IPNetwork

from client.engine import vlan_space
from drivers import naming
from drivers.base import EndpointSpec, IPAMData, JoinRequest, NetworkSpec
from drivers.bridge import BridgeDriver
from drivers.errors import Conflict, InvalidOption, KernelFeatureMissing
from drivers.firewall import NAT_CHAIN, Firewall
from drivers.manager import NetworkManager
from drivers.vlan import VlanDriver
from drivers.vlan_store import VlanClaims
from ipam.errors import InvalidRequest, PoolOverlap
from ipam.service import IpamService
from store.memory import MemoryStore
from tests.fakekernel import HOST, FakeIptables, FakeKernel, FakeSysctl

NID, NID2, NID3 = "1" * 64, "2" * 64, "3" * 64
EID = "e" * 64


def spec(nid: str = NID, pool: str = "10.30.0.0/24", **opts: str) -> NetworkSpec:
    gw = str(IPNetwork(pool).network + 1) + "/" + pool.split("/")[1]
    return NetworkSpec(network_id=nid, ipv4=(IPAMData(pool=IPNetwork(pool), gateway=IPNetwork(gw)),),
                       options={"parent": "eth1", **opts})


@pytest.fixture
def kernel() -> FakeKernel:
    k = FakeKernel()
    k.plant("eth1", "veth", mtu=1500)
    return k


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def ipt() -> FakeIptables:
    return FakeIptables()


@pytest.fixture
def driver(kernel: FakeKernel, ipt: FakeIptables, store: MemoryStore, tmp_path: Path) -> VlanDriver:
    return VlanDriver(kernel, Firewall(run=ipt, sysctl=FakeSysctl()), store, host_id="h1",
                      mac_factory=lambda: "02:11:22:33:44:55", sandbox_dirs=[str(tmp_path)],
                      probe_8021q=lambda: True)


def test_bridge_mode_makes_a_marked_sub_interface_on_the_bridge_and_no_host_address(
        driver: VlanDriver, kernel: FakeKernel, ipt: FakeIptables, store: MemoryStore) -> None:
    s = spec(vlan="100")
    driver.validate(s)
    driver.create_network(s)
    sub = kernel.host["eth1.100"]
    assert (sub["kind"], sub["parent"], sub["vlan_id"]) == ("vlan", "eth1", 100)
    assert sub["alias"] == naming.uplink_alias("eth1.100")
    assert sub["master"] == naming.bridge_name(NID)
    assert kernel.addresses[naming.bridge_name(NID)] == []          # the gateway is a router outside
    assert ipt.chains("iptables", "nat").get(NAT_CHAIN, []) == []    # and nothing is NATed
    assert VlanClaims(store, "h1").users("eth1.100") == [NID]
    driver.delete_network(s)
    assert "eth1.100" not in kernel.host and naming.bridge_name(NID) not in kernel.host
    assert store.list("vlan/")[0] == []


def test_host_gateway_puts_the_gateway_on_the_bridge(driver: VlanDriver, kernel: FakeKernel) -> None:
    driver.create_network(spec(vlan="100", host_gateway="true"))
    assert kernel.addresses[naming.bridge_name(NID)] == ["10.30.0.1/24"]


def test_a_sub_interface_made_by_somebody_else_is_used_and_left_alone(
        driver: VlanDriver, kernel: FakeKernel) -> None:
    kernel.plant_vlan("eth1.100", "eth1", 100)
    s = spec(vlan="100")
    driver.create_network(s)
    assert kernel.host["eth1.100"]["master"] == naming.bridge_name(NID)
    assert kernel.host["eth1.100"]["alias"] == ""
    driver.delete_network(s)
    assert "eth1.100" in kernel.host                                  # not ours: kept


@pytest.mark.parametrize("kind", ["bridge", "vlan-of-another-vid"])
def test_a_clashing_link_we_do_not_own_is_reported_and_nothing_is_made(
        driver: VlanDriver, kernel: FakeKernel, store: MemoryStore, kind: str) -> None:
    if kind == "bridge":
        kernel.plant("eth1.100", "bridge")
    else:
        kernel.plant_vlan("eth1.100", "eth1", 7)
    with pytest.raises(Conflict, match=r"eth1\.100 exists and is not VLAN 100 of eth1"):
        driver.create_network(spec(vlan="100"))
    assert naming.bridge_name(NID) not in kernel.host
    assert store.list("vlan/")[0] == []


@pytest.mark.parametrize(("opts", "option", "text"), [
    ({"vlan": "0"}, "vlan", "outside 1..4094"),
    ({"vlan": "4095"}, "vlan", "outside 1..4094"),
    ({"vlan": "abc"}, "vlan", "not a VLAN id"),
    ({"vlan_range": "10-5"}, "vlan_range", "above"),
    ({"vlan": "10", "parnet": "eth1"}, "parnet", "unknown option"),
    ({"vlan": "10", "mode": "ipvlan"}, "mode", "not bridge or macvlan"),
    ({"vlan": "10", "mode": "macvlan", "host_gateway": "true"}, "host_gateway", "needs mode=bridge"),
    ({"vlan": "10", "com.docker.network.driver.mtu": "9000"}, "com.docker.network.driver.mtu",
     "above the MTU 1500 of parent eth1"),
    ({"vlan": "10", "parent": "nosuch0"}, "parent", "does not exist"),
    ({"vlan": "10", "parent": ""}, "parent", "required"),
])
def test_bad_options_are_refused_naming_the_option(driver: VlanDriver, kernel: FakeKernel,
                                                   opts: dict[str, str], option: str, text: str) -> None:
    with pytest.raises(InvalidOption, match=text) as err:
        driver.validate(spec(**opts))
    assert err.value.option == option
    assert set(kernel.host) == {"eth1"}


def test_our_own_bridge_or_veth_is_no_parent(driver: VlanDriver, kernel: FakeKernel) -> None:
    BridgeDriver(kernel, Firewall(run=FakeIptables(), sysctl=FakeSysctl())).create_network(
        NetworkSpec(network_id=NID2, ipv4=(IPAMData(pool=IPNetwork("10.9.0.0/24")),)))
    with pytest.raises(InvalidOption, match="one of cnmkit's own links") as err:
        driver.validate(spec(vlan="5", parent=naming.bridge_name(NID2)))
    assert err.value.option == "parent"


def test_one_parent_and_vid_never_back_two_networks(driver: VlanDriver, kernel: FakeKernel,
                                                     store: MemoryStore) -> None:
    driver.create_network(spec(vlan="100"))
    with pytest.raises(Conflict, match=f"already backs network {NID[:12]}"):
        driver.create_network(spec(NID2, vlan="100", mode="macvlan"))
    assert naming.bridge_name(NID2) not in kernel.host
    assert kernel.host["eth1.100"]["master"] == naming.bridge_name(NID)  # the first is untouched
    assert VlanClaims(store, "h1").binding(NID2) is None


def test_vids_come_from_the_range_and_return_to_it(driver: VlanDriver, kernel: FakeKernel) -> None:
    driver.create_network(spec(NID, vlan_range="10-11"))
    driver.create_network(spec(NID2, vlan_range="10-11"))
    assert {"eth1.10", "eth1.11"} <= set(kernel.host)
    with pytest.raises(Conflict, match="every VID in 10-11 is used"):
        driver.create_network(spec(NID3, vlan_range="10-11"))
    driver.delete_network(spec(NID, vlan_range="10-11"))
    driver.create_network(spec(NID3, vlan_range="10-11"))
    assert kernel.host["eth1.10"]["master"] == naming.bridge_name(NID3)


def test_pool_vids_avoid_vids_other_hosts_use(driver: VlanDriver, store: MemoryStore, kernel: FakeKernel,
                                              ipt: FakeIptables) -> None:
    other = VlanDriver(kernel, Firewall(run=ipt, sysctl=FakeSysctl()), store, host_id="h2")
    other.claims.bind(NID2, "eth9", 2, (2, 4094), naming.vlan_link_name)   # host h2 uses VLAN 2
    driver.create_network(spec(NID))                                       # default range 2-4094
    assert "eth1.3" in kernel.host and "eth1.2" not in kernel.host


def test_no_8021q_is_one_clear_error_and_leaves_nothing(driver: VlanDriver, kernel: FakeKernel,
                                                         ipt: FakeIptables, store: MemoryStore) -> None:
    kernel.has_8021q = False
    with pytest.raises(KernelFeatureMissing, match=r"802\.1Q") as err:
        driver.create_network(spec(vlan="100"))
    assert err.value.feature == "8021q"
    assert set(kernel.host) == {"eth1"}
    assert store.list("vlan/")[0] == []
    assert all(not rules for chains in ipt.tables.values() for rules in chains.values())


def test_validate_refuses_before_anything_when_the_probe_finds_no_8021q(
        kernel: FakeKernel, ipt: FakeIptables, store: MemoryStore) -> None:
    answers = [False, None, True]
    driver = VlanDriver(kernel, Firewall(run=ipt, sysctl=FakeSysctl()), store, probe_8021q=answers.pop)
    driver.validate(spec(vlan="100"))                 # True: yes, and kept (not asked again)
    driver.validate(spec(vlan="100"))
    assert answers == [False, None]
    driver._has_8021q = False
    driver.validate(spec(vlan="100"))                 # None: could not tell, netlink will say
    with pytest.raises(KernelFeatureMissing, match=r"no 802\.1Q VLAN support \(the 8021q module"):
        driver.validate(spec(vlan="100"))             # False: refused, nothing made
    assert set(kernel.host) == {"eth1"} and store.list("")[0] == []


def test_macvlan_mode_puts_endpoints_on_the_sub_interface_without_a_bridge(
        driver: VlanDriver, kernel: FakeKernel, tmp_path: Path) -> None:
    s = spec(vlan="200", mode="macvlan")
    driver.create_network(s)
    assert naming.bridge_name(NID) not in kernel.host
    endpoint = EndpointSpec(network_id=NID, endpoint_id=EID, address=IPNetwork("10.30.0.5/24"),
                            mac="02:00:00:00:00:05")
    sandbox = tmp_path / "sb"
    sandbox.touch()
    result = driver.join(s, endpoint, JoinRequest(network_id=NID, endpoint_id=EID,
                                                  sandbox_key=str(sandbox), direct=True))
    link = kernel.links_by_ns[str(sandbox)][result.src_name]
    assert (link["kind"], link["parent"], link["mac"]) == ("macvlan", "eth1.200", "02:00:00:00:00:05")
    assert link["alias"] == naming.endpoint_alias(EID)
    assert str(result.gateway) == "10.30.0.1"
    driver.delete_network(s)
    assert "eth1.200" not in kernel.host


def test_bridge_mode_endpoint_is_a_veth_on_the_bridge(driver: VlanDriver, kernel: FakeKernel) -> None:
    s = spec(vlan="100")
    driver.create_network(s)
    endpoint = EndpointSpec(network_id=NID, endpoint_id=EID, address=IPNetwork("10.30.0.5/24"))
    result = driver.join(s, endpoint, JoinRequest(network_id=NID, endpoint_id=EID, sandbox_key=""))
    assert kernel.host[naming.host_veth_name(EID)]["master"] == naming.bridge_name(NID)
    assert result.src_name in kernel.links_by_ns[HOST] and str(result.gateway) == "10.30.0.1"


def test_create_is_idempotent_and_reconcile_removes_only_orphan_uplinks(
        driver: VlanDriver, kernel: FakeKernel, store: MemoryStore) -> None:
    s = spec(vlan="100")
    driver.create_network(s)
    driver.create_network(s)                                    # a retry: same binding, same links
    assert VlanClaims(store, "h1").users("eth1.100") == [NID]
    assert driver.reconcile(lambda: ({NID}, set()), dry_run=False) == []
    kernel.vlan_add("eth1.300", "eth1", 300, alias=naming.uplink_alias("eth1.300"), mtu=1500)
    kernel.plant_vlan("eth1.301", "eth1", 301)                   # somebody else's: never a candidate
    actions = driver.reconcile(lambda: ({NID}, set()), dry_run=False)
    assert actions == ["delete sub-interface eth1.300 (no VLAN network on record uses it)"]
    assert "eth1.300" not in kernel.host and {"eth1.100", "eth1.301"} <= set(kernel.host)


# -- the manager and IPAM: one subnet on two VLANs ----------------------------------------------

def _manager(driver: VlanDriver, store: MemoryStore) -> NetworkManager:
    return NetworkManager(store, {driver.name: driver}, ThreadPoolExecutor(2), host_id="h1")


def test_the_manager_lets_two_vlans_carry_one_subnet_unless_the_host_routes_both(
        driver: VlanDriver, store: MemoryStore) -> None:
    mgr = _manager(driver, store)
    asyncio.run(mgr.create_network(driver.name, spec(NID, vlan="100")))
    asyncio.run(mgr.create_network(driver.name, spec(NID2, vlan="200")))
    asyncio.run(mgr.create_network(driver.name, spec(NID3, vlan="300", host_gateway="true")))
    with pytest.raises(Conflict, match="overlaps"):
        asyncio.run(mgr.create_network(driver.name, spec("4" * 64, vlan="400", host_gateway="true")))


def test_the_manager_keeps_no_record_when_the_kernel_lacks_8021q(driver: VlanDriver, kernel: FakeKernel,
                                                                 store: MemoryStore) -> None:
    kernel.has_8021q = False
    with pytest.raises(KernelFeatureMissing):
        asyncio.run(_manager(driver, store).create_network(driver.name, spec(vlan="100")))
    assert [kv.key for kv in store.list("")[0] if not kv.key.startswith("claims/")] == []  # tokens only


def test_ipam_keeps_pools_of_named_spaces_apart(store: MemoryStore) -> None:
    ipam = IpamService(store, host_id="h1")
    a = ipam.request_pool("cnmkit-local", "10.30.0.0/24", "", {"cnmkit.space": "vlan.eth1.100"}, False)
    b = ipam.request_pool("cnmkit-local", "10.30.0.0/24", "", {"cnmkit.space": "vlan.eth1.200"}, False)
    assert (a[0], b[0]) == ("vlan.eth1.100/10.30.0.0/24", "vlan.eth1.200/10.30.0.0/24")
    assert ipam.request_address(a[0], "", {})[0] == ipam.request_address(b[0], "", {})[0] == "10.30.0.1/24"
    with pytest.raises(PoolOverlap):
        ipam.request_pool("cnmkit-local", "10.30.0.0/25", "", {"cnmkit.space": "vlan.eth1.100"}, False)
    for bad in ("bad/space", "cnmkit-global"):
        with pytest.raises(InvalidRequest, match=r"cnmkit\.space"):
            ipam.request_pool("cnmkit-local", "10.31.0.0/24", "", {"cnmkit.space": bad}, False)
    ipam.release_pool(a[0])
    ipam.release_pool(b[0])
    assert store.list("ipam/pools/")[0] == []


def test_the_engine_gives_each_vlan_segment_its_own_space() -> None:
    assert vlan_space({"parent": "eth1", "vlan": "100"}, "v100") == "vlan.eth1.100"
    assert vlan_space({"parent": "eth1"}, "my net!") == "vlan.net.my-net-"
