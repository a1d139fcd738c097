"""BridgeDriver on FakeKernel + Firewall(FakeIptables): options, end state, rollback, idempotency."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from netaddr import IPAddress, IPNetwork

from drivers import naming
from drivers.base import EndpointSpec, IPAMData, JoinRequest, NetworkSpec
from drivers.bridge import BridgeDriver
from drivers.errors import InvalidOption, KernelError, LinkExists
from drivers.firewall import FORWARD_CHAIN, ISOLATION_CHAIN, NAT_CHAIN, Firewall, NetworkRules
from tests.fakekernel import HOST, FakeIptables, FakeKernel, FakeSysctl

NID = "1" * 64
NID2 = "2" * 64
EID = "e" * 64
BR = naming.bridge_name(NID)


def v4(pool: str = "10.20.0.0/24", gw: str | None = "10.20.0.1/24") -> IPAMData:
    return IPAMData(pool=IPNetwork(pool), gateway=IPNetwork(gw) if gw else None)


def net(nid: str = NID, **kw: object) -> NetworkSpec:
    kw.setdefault("ipv4", (v4(),))
    return NetworkSpec(network_id=nid, **kw)  # type: ignore[arg-type]


def ep(eid: str = EID, mac: str = "02:00:00:aa:bb:cc") -> EndpointSpec:
    return EndpointSpec(network_id=NID, endpoint_id=eid, address=IPNetwork("10.20.0.2/24"), mac=mac)


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def ipt() -> FakeIptables:
    return FakeIptables()


@pytest.fixture
def sysctl() -> FakeSysctl:
    return FakeSysctl()


@pytest.fixture
def driver(kernel: FakeKernel, ipt: FakeIptables, sysctl: FakeSysctl, tmp_path: Path) -> BridgeDriver:
    return BridgeDriver(kernel, Firewall(run=ipt, sysctl=sysctl), mac_factory=lambda: "02:11:22:33:44:55",
                        sandbox_dirs=[str(tmp_path)])   # direct joins open sandboxes made in tmp_path


def marked(ipt: FakeIptables, binary: str, table: str, chain: str, nid: str = NID) -> list[tuple[str, ...]]:
    mark = naming.firewall_mark(nid)
    return [r for r in ipt.chains(binary, table).get(chain, []) if mark in r]


# -- options ---------------------------------------------------------------------------------

@pytest.mark.parametrize("options,option", [
    ({"com.docker.network.driver.mtu": "abc"}, "com.docker.network.driver.mtu"),
    ({"com.docker.network.driver.mtu": "67"}, "com.docker.network.driver.mtu"),
    ({"com.docker.network.driver.mtu": "65536"}, "com.docker.network.driver.mtu"),
    ({"com.docker.network.bridge.name": "much-too-long-name"}, "com.docker.network.bridge.name"),
    ({"com.docker.network.bridge.name": "br/x"}, "com.docker.network.bridge.name"),
    ({"cnmkit.parent": "eth1"}, "cnmkit.parent"),          # our namespace: unknown keys refused
])
def test_bad_options_are_refused_naming_the_option_and_nothing_is_made(
        driver: BridgeDriver, kernel: FakeKernel, ipt: FakeIptables, options: dict[str, str],
        option: str) -> None:
    spec = net(options=options)
    with pytest.raises(InvalidOption) as exc:
        driver.validate(spec)
    assert exc.value.option == option and option in str(exc.value)
    with pytest.raises(InvalidOption):
        driver.create_network(spec)
    assert kernel.links() == [] and ipt.calls == []


def test_docker_and_cnmkit_keys_are_tolerated(driver: BridgeDriver) -> None:
    driver.validate(net(options={"com.docker.network.bridge.enable_icc": "true", "cnmkit.name": "lab",
                                 "com.docker.network.driver.mtu": "9000"}))


# -- networks --------------------------------------------------------------------------------

def test_create_network_end_state(driver: BridgeDriver, kernel: FakeKernel, ipt: FakeIptables,
                                  sysctl: FakeSysctl) -> None:
    v6 = IPAMData(pool=IPNetwork("fd00:20::/64"), gateway=IPNetwork("fd00:20::1/64"))
    driver.create_network(net(ipv6=(v6,), enable_ipv6=True,
                              options={"com.docker.network.driver.mtu": "1450"}))
    br = kernel.link_get(BR)
    assert br is not None
    assert (br["kind"], br["alias"], br["mtu"], br["up"]) == ("bridge", naming.network_alias(NID), 1450, True)
    assert br["mac"] == naming.stable_mac(naming.network_alias(NID))
    assert kernel.addrs(BR) == ["10.20.0.1/24", "fd00:20::1/64"]
    assert ("-i", BR, "-o", BR, "-m", "comment", "--comment", naming.firewall_mark(NID), "-j", "ACCEPT") \
        in marked(ipt, "iptables", "filter", FORWARD_CHAIN)
    assert marked(ipt, "iptables", "nat", NAT_CHAIN) == [
        ("-s", "10.20.0.0/24", "!", "-o", BR, "-m", "comment", "--comment", naming.firewall_mark(NID),
         "-j", "MASQUERADE")]
    assert len(marked(ipt, "ip6tables", "filter", FORWARD_CHAIN)) == 4
    assert marked(ipt, "ip6tables", "nat", NAT_CHAIN) == []          # no NAT for IPv6, like Docker
    assert ipt.chains("iptables", "filter")["FORWARD"][0][-2:] == ("-j", FORWARD_CHAIN)
    assert ipt.chains("iptables", "nat")["POSTROUTING"][0][-2:] == ("-j", NAT_CHAIN)
    # IPv4 forwarding for masquerade; IPv6 forwarding is the operator's (it disables RA processing).
    assert sysctl.values == {"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "0"}


def test_create_network_twice_changes_nothing(driver: BridgeDriver, kernel: FakeKernel,
                                              ipt: FakeIptables) -> None:
    driver.create_network(net())
    before = (kernel.links(), kernel.addrs(BR), {k: {c: list(r) for c, r in v.items()}
                                                  for k, v in ipt.tables.items()})
    driver.create_network(net())
    after = (kernel.links(), kernel.addrs(BR), {k: {c: list(r) for c, r in v.items()}
                                                 for k, v in ipt.tables.items()})
    assert before == after


def test_internal_network_drops_and_does_not_masquerade(driver: BridgeDriver, ipt: FakeIptables,
                                                        sysctl: FakeSysctl) -> None:
    driver.create_network(net(internal=True))
    rules = marked(ipt, "iptables", "filter", FORWARD_CHAIN)
    assert any(r[:5] == ("-i", BR, "!", "-o", BR) and r[-1] == "DROP" for r in rules)
    assert any(r[:5] == ("!", "-i", BR, "-o", BR) and r[-1] == "DROP" for r in rules)
    assert not any(r[-1] == "ACCEPT" and r[:2] == ("-i", BR) and "!" in r for r in rules)
    assert marked(ipt, "iptables", "nat", NAT_CHAIN) == []
    assert sysctl.values["net/ipv4/ip_forward"] == "0"


@pytest.mark.parametrize("failing", ["addr_ensure", "set_up"])
def test_kernel_failure_half_way_leaves_nothing(driver: BridgeDriver, kernel: FakeKernel,
                                                ipt: FakeIptables, failing: str) -> None:
    kernel.fail_on[failing] = KernelError("injected", errno.EIO)
    with pytest.raises(KernelError, match="injected"):
        driver.create_network(net())
    assert kernel.links() == []
    assert marked(ipt, "iptables", "filter", FORWARD_CHAIN) == []


def test_firewall_failure_leaves_no_bridge_and_no_rules(driver: BridgeDriver, kernel: FakeKernel,
                                                         ipt: FakeIptables) -> None:
    ipt.fail_on.add("-A")
    with pytest.raises(KernelError):
        driver.create_network(net())
    assert kernel.links() == []
    ipt.fail_on.clear()
    assert marked(ipt, "iptables", "filter", FORWARD_CHAIN) == []
    assert marked(ipt, "iptables", "nat", NAT_CHAIN) == []


def test_failed_re_ensure_keeps_an_existing_bridge(driver: BridgeDriver, kernel: FakeKernel,
                                                   ipt: FakeIptables) -> None:
    driver.create_network(net())
    kernel.fail_on["set_up"] = KernelError("injected", errno.EIO)
    with pytest.raises(KernelError):
        driver.create_network(net())
    assert kernel.link_get(BR) is not None
    assert marked(ipt, "iptables", "filter", FORWARD_CHAIN) != []


def test_bridge_name_taken_by_someone_else_is_a_conflict(driver: BridgeDriver, kernel: FakeKernel) -> None:
    kernel.plant("br-lab", "bridge", alias="someone-else")
    with pytest.raises(LinkExists):
        driver.create_network(net(options={"com.docker.network.bridge.name": "br-lab"}))
    assert kernel.link_get("br-lab")["alias"] == "someone-else"  # type: ignore[index]


def test_unaliased_bridge_with_a_custom_name_is_not_adopted(driver: BridgeDriver, kernel: FakeKernel) -> None:
    kernel.plant("br-lab", "bridge")
    with pytest.raises(LinkExists):
        driver.create_network(net(options={"com.docker.network.bridge.name": "br-lab"}))


def test_unaliased_bridge_with_our_derived_name_is_adopted(driver: BridgeDriver, kernel: FakeKernel) -> None:
    kernel.plant(BR, "bridge")                                 # a create interrupted before the alias
    driver.create_network(net())
    assert kernel.link_get(BR)["alias"] == naming.network_alias(NID)  # type: ignore[index]


def test_delete_network_removes_only_its_own_rules_and_is_repeatable(
        driver: BridgeDriver, kernel: FakeKernel, ipt: FakeIptables) -> None:
    driver.create_network(net())
    other = net(NID2, ipv4=(v4("10.30.0.0/24", "10.30.0.1/24"),))
    driver.create_network(other)
    driver.delete_network(net())
    assert kernel.link_get(BR) is None
    assert marked(ipt, "iptables", "filter", FORWARD_CHAIN) == []
    assert marked(ipt, "iptables", "filter", ISOLATION_CHAIN) == []
    assert marked(ipt, "iptables", "nat", NAT_CHAIN) == []
    assert len(marked(ipt, "iptables", "filter", FORWARD_CHAIN, NID2)) == 4
    assert kernel.link_get(naming.bridge_name(NID2)) is not None
    driver.delete_network(net())                                   # already gone: fine


# -- endpoints -------------------------------------------------------------------------------

def test_create_endpoint_fills_in_a_mac_only_when_missing(driver: BridgeDriver, kernel: FakeKernel) -> None:
    # Derived from the IPv4 address, so a container restarted on the same address keeps its MAC.
    assert driver.create_endpoint(net(), ep(mac="")).mac == "02:cb:0a:14:00:02"
    v6_only = EndpointSpec(network_id=NID, endpoint_id=EID, address_v6=IPNetwork("fd00::2/64"))
    assert driver.create_endpoint(net(), v6_only).mac == "02:11:22:33:44:55"
    assert driver.create_endpoint(net(), ep()).mac == ""
    assert kernel.links() == []


def test_join_in_host_namespace(driver: BridgeDriver, kernel: FakeKernel) -> None:
    driver.create_network(net(options={"com.docker.network.driver.mtu": "1400"}))
    res = driver.join(net(options={"com.docker.network.driver.mtu": "1400"}), ep(),
                      JoinRequest(network_id=NID, endpoint_id=EID, sandbox_key="/nonexistent/sb"))
    host = kernel.link_get(naming.host_veth_name(EID))
    peer = kernel.link_get(naming.container_veth_name(EID))
    assert host is not None and peer is not None
    assert (host["master"], host["up"], host["mtu"]) == (BR, True, 1400)
    assert host["alias"] == naming.endpoint_alias(EID)
    assert (peer["mac"], peer["mtu"]) == ("02:00:00:aa:bb:cc", 1400)
    assert res.src_name == naming.container_veth_name(EID) and res.dst_prefix == "eth"
    assert res.gateway == IPAddress("10.20.0.1") and res.gateway_v6 is None
    assert res.disable_gateway_service is False
    assert driver.endpoint_info(net(), ep()) == {"hostIfName": naming.host_veth_name(EID), "bridge": BR}


def test_direct_join_creates_the_peer_in_the_sandbox(driver: BridgeDriver, kernel: FakeKernel,
                                                     tmp_path: Path) -> None:
    sandbox = tmp_path / "sb"
    sandbox.touch()
    driver.create_network(net())
    driver.join(net(), ep(),
                JoinRequest(network_id=NID, endpoint_id=EID, sandbox_key=str(sandbox), direct=True))
    assert kernel.link_get(naming.container_veth_name(EID)) is None
    assert naming.container_veth_name(EID) in kernel.links_by_ns[str(sandbox)]
    driver.delete_endpoint(net(), ep())
    assert kernel.links_by_ns[str(sandbox)] == {} and kernel.link_get(naming.host_veth_name(EID)) is None


def test_direct_join_without_a_sandbox_file_falls_back_to_the_host(driver: BridgeDriver, kernel: FakeKernel,
                                                                   tmp_path: Path) -> None:
    driver.create_network(net())
    driver.join(net(), ep(), JoinRequest(network_id=NID, endpoint_id=EID,
                                         sandbox_key=str(tmp_path / "missing"), direct=True))
    assert set(kernel.links_by_ns) == {HOST}
    assert kernel.link_get(naming.container_veth_name(EID)) is not None


def test_internal_join_has_no_gateway_and_disables_gateway_service(driver: BridgeDriver) -> None:
    spec = net(internal=True)
    driver.create_network(spec)
    res = driver.join(spec, ep(), JoinRequest(network_id=NID, endpoint_id=EID, sandbox_key=""))
    assert res.gateway is None and res.gateway_v6 is None and res.disable_gateway_service is True


def test_rejoin_reuses_the_pair(driver: BridgeDriver, kernel: FakeKernel) -> None:
    driver.create_network(net())
    req = JoinRequest(network_id=NID, endpoint_id=EID, sandbox_key="")
    driver.join(net(), ep(), req)
    before = kernel.links()
    driver.join(net(), ep(), req)
    assert kernel.links() == before


def test_leave_deletes_the_pair_so_dockerd_moves_nothing_back(driver: BridgeDriver, kernel: FakeKernel) -> None:
    """Leave hands the pair to the reaper (inline here); DeleteEndpoint after it finds nothing."""
    driver.create_network(net())
    req = JoinRequest(network_id=NID, endpoint_id=EID, sandbox_key="")
    driver.join(net(), ep(), req)
    driver.leave(net(), ep())
    names = {link["name"] for link in kernel.links()}
    assert naming.host_veth_name(EID) not in names and naming.container_veth_name(EID) not in names
    driver.delete_endpoint(net(), ep())
    driver.join(net(), ep(), req)                          # a re-join after Leave: a fresh pair
    link = kernel.host[naming.host_veth_name(EID)]
    assert link["alias"] == naming.endpoint_alias(EID) and link["master"] == naming.bridge_name(NID)


def test_join_refuses_a_host_name_owned_by_someone_else(driver: BridgeDriver, kernel: FakeKernel) -> None:
    driver.create_network(net())
    kernel.plant(naming.host_veth_name(EID), "veth", alias="not-ours")
    with pytest.raises(LinkExists):
        driver.join(net(), ep(), JoinRequest(network_id=NID, endpoint_id=EID, sandbox_key=""))


def test_delete_endpoint_removes_both_ends_and_is_repeatable(driver: BridgeDriver,
                                                             kernel: FakeKernel) -> None:
    driver.create_network(net())
    driver.join(net(), ep(), JoinRequest(network_id=NID, endpoint_id=EID, sandbox_key=""))
    driver.delete_endpoint(net(), ep())
    driver.delete_endpoint(net(), ep())
    assert [link["name"] for link in kernel.links()] == [BR]


def test_scope_and_name() -> None:
    assert (BridgeDriver.name, BridgeDriver.scope, BridgeDriver.connectivity_scope) == \
        ("cnmkit-bridge", "local", "local")


# -- reconciliation ----------------------------------------------------------------------------

def test_reconcile_removes_only_marked_objects_that_nothing_records(driver: BridgeDriver, kernel: FakeKernel,
                                                                     ipt: FakeIptables) -> None:
    driver.create_network(net())
    driver.join(net(), ep(), JoinRequest(network_id=NID, endpoint_id=EID, sandbox_key="/nonexistent"))
    lost_net, lost_ep = "a" * 64, "b" * 64
    kernel.plant("cnm-lostlostlos", "bridge", alias=naming.network_alias(lost_net))
    kernel.plant("cnvlostlostlos", "veth", alias=naming.endpoint_alias(lost_ep))
    kernel.plant("theirs0", "bridge", alias="somebody else's")
    driver.firewall.ensure_network(NetworkRules(network_id=lost_net, bridge="cnm-lostlostlos"))
    known = lambda: ({NID}, {EID})  # noqa: E731

    planned = driver.reconcile(known, dry_run=True)
    assert len(planned) == 3 and any("cnm-lostlostlos" in a for a in planned)
    assert any("cnvlostlostlos" in a for a in planned) and any(lost_net[:12] in a for a in planned)
    assert kernel.link_get("cnm-lostlostlos") is not None, "a dry run removes nothing"

    assert driver.reconcile(known, dry_run=False) == planned
    assert kernel.link_get("cnm-lostlostlos") is None and kernel.link_get("cnvlostlostlos") is None
    assert kernel.link_get("theirs0") is not None, "unmarked links are never touched"
    assert kernel.link_get(BR) is not None and kernel.link_get(naming.host_veth_name(EID)) is not None
    assert driver.firewall.marks() == {(NID, "")}
    assert driver.reconcile(known, dry_run=False) == []


# -- Docker's enable_icc / enable_ip_masquerade / host_binding_ipv4 ----------------------------

ICC = "com.docker.network.bridge.enable_icc"
MASQ = "com.docker.network.bridge.enable_ip_masquerade"
BIND = "com.docker.network.bridge.host_binding_ipv4"


@pytest.mark.parametrize("option,value", [
    (ICC, "no"), (ICC, ""), (ICC, "yes"), (MASQ, "off"), (MASQ, "2"), (MASQ, "TRUE "),
    (BIND, "1.2.3"), (BIND, "::1"), (BIND, "localhost"), (BIND, "01.2.3.4"), (BIND, ""),
])
def test_malformed_docker_bridge_options_are_refused_naming_the_option(
        driver: BridgeDriver, kernel: FakeKernel, ipt: FakeIptables, option: str, value: str) -> None:
    with pytest.raises(InvalidOption) as exc:
        driver.create_network(net(options={option: value}))
    assert exc.value.option == option and option in str(exc.value)
    assert kernel.links() == [] and ipt.calls == []


@pytest.mark.parametrize("value,icc", [("true", True), ("1", True), ("T", True), ("false", False),
                                       ("0", False), ("False", False)])
def test_enable_icc_as_docker_parses_it(driver: BridgeDriver, ipt: FakeIptables, value: str, icc: bool) -> None:
    driver.create_network(net(options={ICC: value}))
    first = marked(ipt, "iptables", "filter", FORWARD_CHAIN)[0]
    assert first == ("-i", BR, "-o", BR, "-m", "comment", "--comment", naming.firewall_mark(NID),
                     "-j", "ACCEPT" if icc else "DROP")


def test_enable_ip_masquerade_false_has_no_masquerade(driver: BridgeDriver, ipt: FakeIptables,
                                                      sysctl: FakeSysctl) -> None:
    driver.create_network(net(options={MASQ: "false"}))
    assert marked(ipt, "iptables", "nat", NAT_CHAIN) == []
    assert len(marked(ipt, "iptables", "filter", FORWARD_CHAIN)) == 4       # still forwarded, not NATed
    driver.create_network(net(NID2, ipv4=(v4("10.30.0.0/24", "10.30.0.1/24"),), options={MASQ: "true"}))
    assert len(marked(ipt, "iptables", "nat", NAT_CHAIN, NID2)) == 1


def test_host_binding_ipv4_is_parsed(driver: BridgeDriver) -> None:
    assert driver.default_host_ip(net(options={BIND: "127.0.0.9"})) == "127.0.0.9"
    assert driver.default_host_ip(net(options={BIND: "0.0.0.0"})) == ""       # Docker's default: all
    assert driver.default_host_ip(net()) == ""


def test_reconcile_compares_whole_ids(driver: BridgeDriver, ipt: FakeIptables) -> None:
    """A lost network whose id shares 12+ digits with a live one is still found, and only it goes."""
    live, lost = "ab" * 10 + "0" * 44, "ab" * 10 + "1" * 44
    driver.create_network(net(live))
    driver.firewall.ensure_network(NetworkRules(network_id=lost, bridge="cnm-lost"))
    assert driver.reconcile(lambda: ({live}, set()), dry_run=False) == [
        f"remove iptables rules marked cnmkit:{lost} (network not on record)"]
    assert driver.firewall.marks() == {(live, "")}
    assert len(marked(ipt, "iptables", "filter", FORWARD_CHAIN, live)) == 4
