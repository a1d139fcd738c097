"""The firewall against real iptables in a throwaway namespace (iptables rules are per netns).

Proves, with ``iptables -S`` as the oracle: the FakeIptables double prints exactly what iptables
prints for the same commands; our FORWARD jump follows DOCKER-USER; whole-id marks; odd names
never make a network undeletable; Docker's enable_icc=false and enable_ip_masquerade=false by
rules and by traffic between namespace "containers".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from drivers import naming
from drivers.bridge import BridgeDriver
from drivers.firewall import Firewall, NetworkRules, Result, run_command
from drivers.kernel import Kernel
from tests.conftest import in_netns
from tests.fakekernel import FakeIptables, FakeSysctl
from tests.kernel.test_bridge_driver import HostThread, attach, endpoint, make_upstream, network, ping

pytestmark = pytest.mark.kernel

NID_A = "ab" * 20 + "0" * 24            # share 40 digits
NID_B = "ab" * 20 + "1" * 24
NID_C = "c3" * 32
NID_D = "d4" * 32
EP_A = "e5" * 32
EP_D = "f6" * 32


def netns_runner(ns: str) -> Callable[[Sequence[str], str | None, float], Result]:
    def run(argv: Sequence[str], stdin: str | None, timeout: float) -> Result:
        return run_command(["ip", "netns", "exec", ns, *argv], stdin, timeout)
    return run


def dump(run: Callable[[Sequence[str], str | None, float], Result]) -> list[str]:
    """Every table we touch, as ``-S`` prints it, line by line."""
    lines: list[str] = []
    for binary, table in (("iptables", "filter"), ("iptables", "nat"), ("ip6tables", "filter")):
        rc, out, err = run([binary, "-w", "10", "-t", table, "-S"], None, 30)
        assert rc == 0, err
        lines += [f"{binary} {table}: {line}" for line in out.split("\n") if line]
    return lines


def real(ns: str, *argv: str) -> str:
    return in_netns(ns, *argv).stdout


@pytest.fixture
def fake() -> FakeIptables:
    return FakeIptables()


def test_fake_iptables_prints_what_real_iptables_prints(netns: str, fake: FakeIptables) -> None:
    """The same sequence through Firewall (and a few raw commands) to both; -S compared after each step."""
    run_real = netns_runner(netns)
    fws = [Firewall(run=run_real, sysctl=FakeSysctl()), Firewall(run=fake, sysctl=FakeSysctl())]
    raws = [run_real, fake]
    a = NetworkRules(network_id=NID_A, bridge="cnm-a", subnets_v4=("10.61.0.0/24",),
                     subnets_v6=("fd00:61::/64",), icc=False)
    b = NetworkRules(network_id=NID_B, bridge="cnm-b", subnets_v4=("10.62.0.0/24", "10.63.0.0/24"),
                     masquerade=False)
    c = NetworkRules(network_id=NID_C, bridge="cnm-c", subnets_v4=("10.64.0.0/24",), internal=True)
    d = NetworkRules(network_id=NID_D, bridge='q"\\', subnets_v4=("10.65.0.0/24",))   # what iptables prints raw
    raw_steps: list[list[str]] = [
        ["iptables", "-N", "DOCKER-USER"], ["iptables", "-A", "FORWARD", "-j", "DOCKER-USER"],
        ["ip6tables", "-N", "DOCKER-USER"], ["ip6tables", "-A", "FORWARD", "-j", "DOCKER-USER"],
        ["iptables", "-A", "FORWARD", "-j", "DROP"],
    ]
    foreign = ["iptables", "-A", "CNMKIT-FORWARD", "-o", "x", "!", "-i", "y", "-p", "udp", "--sport", "53",
               "-d", "192.0.2.9", "-m", "comment", "--comment", "x\" y\\z 'q' #", "-j", "ACCEPT"]
    steps: list[Callable[[Firewall], object]] = [
        lambda fw: fw.ensure_network(a),
        lambda fw: fw.ensure_network(b),
        lambda fw: fw.ensure_network(c),
        lambda fw: fw.ensure_network(d),
        lambda fw: fw.ensure_network(a),
        lambda fw: fw.publish(a, EP_A, "10.61.0.2", [("tcp", 8080, 80, ""), ("udp", 5353, 53, "192.0.2.7"),
                                                     ("sctp", 9000, 9000, "")]),
        lambda fw: fw.publish(d, EP_D, "10.65.0.2", [("tcp", 8081, 80, "")]),
        lambda fw: fw.publish(a, EP_A, "10.61.0.2", [("tcp", 8082, 80, "")]),
        lambda fw: fw.unpublish(NID_A, EP_A),
        lambda fw: fw.remove_network(NID_B),
        lambda fw: fw.remove_network(NID_D),
        lambda fw: fw.remove_network(NID_A),
        lambda fw: fw.remove_network(NID_C),
    ]
    for argv in raw_steps:
        for run in raws:
            assert run([argv[0], "-w", "10", *argv[1:]], None, 30)[0] == 0
    for i, step in enumerate(steps):
        results = [step(fw) for fw in fws]
        assert results[0] == results[1], f"step {i}"
        assert dump(run_real) == dump(fake), f"after step {i}"
        if i == 4:                              # a rule of somebody else's, in iptables' own quoting
            for run in raws:
                assert run([foreign[0], "-w", "10", *foreign[1:]], None, 30)[0] == 0
            assert dump(run_real) == dump(fake)
    # Only the foreign rule was left, so the chain stays; iptables -S said the same for both.
    assert any("x\\\" y\\\\z" in line for line in dump(run_real))


def test_our_forward_jump_follows_docker_user(netns: str) -> None:
    for binary in ("iptables", "ip6tables"):
        in_netns(netns, binary, "-N", "DOCKER-USER")
        in_netns(netns, binary, "-A", "FORWARD", "-j", "DOCKER-USER")
        in_netns(netns, binary, "-A", "FORWARD", "-j", "ACCEPT")
    fw = Firewall(run=netns_runner(netns), sysctl=FakeSysctl())
    fw.ensure_network(NetworkRules(network_id=NID_A, bridge="cnm-a", subnets_v4=("10.61.0.0/24",),
                                   subnets_v6=("fd00:61::/64",)))
    for binary in ("iptables", "ip6tables"):
        assert real(netns, binary, "-S", "FORWARD").splitlines() == [
            "-P FORWARD ACCEPT", "-A FORWARD -j DOCKER-USER",
            "-A FORWARD -m comment --comment cnmkit -j CNMKIT-FORWARD", "-A FORWARD -j ACCEPT"]


def test_our_forward_jump_is_first_without_docker_user(netns: str) -> None:
    in_netns(netns, "iptables", "-A", "FORWARD", "-j", "ACCEPT")
    Firewall(run=netns_runner(netns), sysctl=FakeSysctl()).ensure_network(
        NetworkRules(network_id=NID_A, bridge="cnm-a", subnets_v4=("10.61.0.0/24",)))
    assert real(netns, "iptables", "-S", "FORWARD").splitlines()[1:] == [
        "-A FORWARD -m comment --comment cnmkit -j CNMKIT-FORWARD", "-A FORWARD -j ACCEPT"]


def test_deleting_a_network_spares_one_whose_id_shares_40_digits(netns: str) -> None:
    fw = Firewall(run=netns_runner(netns), sysctl=FakeSysctl())
    for nid, n in ((NID_A, 1), (NID_B, 2)):
        fw.ensure_network(NetworkRules(network_id=nid, bridge=f"cnm-{n}", subnets_v4=(f"10.6{n}.0.0/24",)))
    fw.publish(NetworkRules(network_id=NID_B, bridge="cnm-2"), EP_A, "10.62.0.2", [("tcp", 8080, 80, "")])
    before = real(netns, "iptables", "-S") + real(netns, "iptables", "-t", "nat", "-S")
    assert before.count(f'"cnmkit:{NID_B}') == 9 and before.count(f'"cnmkit:{NID_A}"') == 6
    fw.remove_network(NID_A)
    after = real(netns, "iptables", "-S") + real(netns, "iptables", "-t", "nat", "-S")
    assert f"cnmkit:{NID_A}" not in after and after.count(f'"cnmkit:{NID_B}') == 9


@pytest.mark.parametrize("bridge", ['q"', "b\\", "x'y"])
def test_odd_bridge_names_stay_deletable(netns: str, bridge: str) -> None:
    fw = Firewall(run=netns_runner(netns), sysctl=FakeSysctl())
    fw.ensure_network(NetworkRules(network_id=NID_A, bridge=bridge, subnets_v4=("10.61.0.0/24",)))
    fw.ensure_network(NetworkRules(network_id=NID_B, bridge="cnm-b", subnets_v4=("10.62.0.0/24",)))
    assert f"-i {bridge} -o {bridge} " in real(netns, "iptables", "-S")
    assert fw.remove_network(NID_A) == 6
    assert fw.remove_network(NID_B) == 6
    assert "CNMKIT" not in real(netns, "iptables", "-S") + real(netns, "iptables", "-t", "nat", "-S")


# -- Docker's enable_icc / enable_ip_masquerade, by rules and by traffic ------------------------

@pytest.fixture
def host(netns: str) -> Iterator[HostThread]:
    h = HostThread(netns)
    yield h
    h.close()


@pytest.fixture
def driver(host: HostThread) -> Iterator[BridgeDriver]:
    kernel = host.run(Kernel)
    yield BridgeDriver(kernel, Firewall(), sandbox_dirs=["/var/run/netns"])
    host.run(kernel.close)


def test_icc_false_stops_traffic_between_containers_of_a_network(
        host: HostThread, driver: BridgeDriver, netns: str, netns_factory: Callable[[str], str]) -> None:
    c1, c2, c3 = netns_factory("c"), netns_factory("c"), netns_factory("c")
    nid = "1c" * 32
    net = network(nid, "10.71.0.0/24", "10.71.0.1/24",
                  options={"com.docker.network.bridge.enable_icc": "false"})
    host.run(driver.create_network, net)
    bridge = naming.bridge_name(nid)
    assert f'-A CNMKIT-FORWARD -i {bridge} -o {bridge} -m comment --comment "cnmkit:{nid}" -j DROP' in \
        real(netns, "iptables", "-S", "CNMKIT-FORWARD").splitlines()
    attach(host, driver, net, endpoint(nid, "e1" * 32, "10.71.0.2/24", "02:00:00:71:00:02"), c1)
    attach(host, driver, net, endpoint(nid, "e2" * 32, "10.71.0.3/24", "02:00:00:71:00:03"), c2)
    assert in_netns(netns, "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables").stdout.strip() == "1"
    assert not ping(c1, "10.71.0.3")
    assert ping(c1, "10.71.0.1")                       # the gateway is the host: not forwarded
    # Control: the same network with icc (Docker's default) passes the same traffic.
    host.run(driver.delete_endpoint, net, endpoint(nid, "e1" * 32, "10.71.0.2/24", "02:00:00:71:00:02"))
    host.run(driver.delete_endpoint, net, endpoint(nid, "e2" * 32, "10.71.0.3/24", "02:00:00:71:00:03"))
    host.run(driver.delete_network, net)
    icc = network(nid, "10.71.0.0/24", "10.71.0.1/24")
    host.run(driver.create_network, icc)
    attach(host, driver, icc, endpoint(nid, "e3" * 32, "10.71.0.4/24", "02:00:00:71:00:04"), c3)
    attach(host, driver, icc, endpoint(nid, "e2" * 32, "10.71.0.3/24", "02:00:00:71:00:03"), c2)
    assert ping(c3, "10.71.0.3")


def test_masquerade_false_has_no_nat_rule_and_no_way_back_from_upstream(
        host: HostThread, driver: BridgeDriver, netns: str, netns_factory: Callable[[str], str]) -> None:
    upstream, c1, c2 = netns_factory("u"), netns_factory("c"), netns_factory("c")
    make_upstream(netns, upstream)
    plain_id, masq_id = "2d" * 32, "3e" * 32
    plain = network(plain_id, "10.72.0.0/24", "10.72.0.1/24",
                    options={"com.docker.network.bridge.enable_ip_masquerade": "false"})
    masq = network(masq_id, "10.73.0.0/24", "10.73.0.1/24")
    host.run(driver.create_network, plain)
    host.run(driver.create_network, masq)
    nat = real(netns, "iptables", "-t", "nat", "-S", "CNMKIT-POSTROUTING")
    assert f"cnmkit:{plain_id}" not in nat and "10.72.0.0/24" not in nat
    br = naming.bridge_name(masq_id)
    assert f'-s 10.73.0.0/24 ! -o {br} -m comment --comment "cnmkit:{masq_id}" -j MASQUERADE' in nat
    in_netns(netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    attach(host, driver, plain, endpoint(plain_id, "e1" * 32, "10.72.0.2/24", "02:00:00:72:00:02"), c1)
    attach(host, driver, masq, endpoint(masq_id, "e2" * 32, "10.73.0.2/24", "02:00:00:73:00:02"), c2)
    assert not ping(c1, "192.168.77.2")             # unNATed source: upstream has no route back
    assert ping(c2, "192.168.77.2")                 # control: masqueraded
