"""BridgeDriver + Kernel + Firewall for real, run inside a throwaway "host" namespace.

The driver runs on a worker thread that has setns()ed into the host namespace, the way the code
would run in the root namespace of a real host: its Kernel binds to that namespace and the
iptables processes it spawns start there. "Containers" are more namespaces; an "upstream" is a
namespace behind a veth from the host namespace. All traffic stays inside these namespaces.
Results are read with iproute2, iptables and ping, never with our own code.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from netaddr import IPNetwork

from drivers import naming
from drivers.base import EndpointSpec, IPAMData, JoinRequest, NetworkSpec
from drivers.bridge import BridgeDriver
from drivers.errors import KernelError
from drivers.firewall import Firewall, NetworkRules
from drivers.kernel import Kernel, entered_netns
from tests.conftest import in_netns, ip_json

pytestmark = pytest.mark.kernel
T = TypeVar("T")

NID1 = "1a" * 32
NID2 = "2b" * 32
NID3 = "3c" * 32


def nspath(ns: str) -> str:
    return f"/var/run/netns/{ns}"


class HostThread:
    """A worker thread living in the host namespace; the driver runs there."""

    def __init__(self, ns: str) -> None:
        self.path = nspath(ns)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="host-ns")

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def call() -> T:
            with entered_netns(self.path):
                return fn(*args, **kwargs)
        return self._pool.submit(call).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class FailingFirewall(Firewall):
    def ensure_network(self, net: NetworkRules) -> None:
        raise KernelError("injected firewall failure")


@pytest.fixture
def host(netns: str) -> Iterator[HostThread]:
    h = HostThread(netns)
    yield h
    h.close()


@pytest.fixture
def kernel(host: HostThread) -> Iterator[Kernel]:
    k = host.run(Kernel)                       # bound to the host namespace it was built in
    yield k
    host.run(k.close)


@pytest.fixture
def driver(kernel: Kernel) -> BridgeDriver:
    # The test's sandboxes are `ip netns` namespaces, pinned under /var/run/netns.
    return BridgeDriver(kernel, Firewall(), sandbox_dirs=["/var/run/netns"])


def network(nid: str, subnet: str, gateway: str, **kw: Any) -> NetworkSpec:
    pool = IPAMData(pool=IPNetwork(subnet), gateway=IPNetwork(gateway))
    return NetworkSpec(network_id=nid, ipv4=(pool,), **kw)


def endpoint(nid: str, eid: str, address: str, mac: str) -> EndpointSpec:
    return EndpointSpec(network_id=nid, endpoint_id=eid, address=IPNetwork(address), mac=mac)


def link(ns: str, name: str) -> dict | None:
    found = [x for x in ip_json("link", "show", netns=ns) if x["ifname"] == name]
    return found[0] if found else None


def iptables_dump(ns: str, binary: str = "iptables") -> str:
    return in_netns(ns, binary, "-S").stdout + in_netns(ns, binary, "-t", "nat", "-S").stdout


def attach(host: HostThread, driver: BridgeDriver, net: NetworkSpec, ep: EndpointSpec, container: str) -> str:
    """Join ``ep`` directly into ``container`` and configure it as the runtime would (with ip)."""
    res = host.run(driver.join, net, ep, JoinRequest(network_id=net.network_id, endpoint_id=ep.endpoint_id,
                                                     sandbox_key=nspath(container), direct=True))
    assert res.gateway is not None
    configure(container, res.src_name, str(ep.address), str(res.gateway))
    return res.src_name


def configure(container: str, src: str, address: str, gateway: str) -> None:
    subprocess.run(["ip", "-n", container, "link", "set", src, "name", "eth0"], check=True)
    subprocess.run(["ip", "-n", container, "addr", "add", address, "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", container, "link", "set", "eth0", "up"], check=True)
    subprocess.run(["ip", "-n", container, "route", "add", "default", "via", gateway], check=True)


def ping(container: str, address: str) -> bool:
    return in_netns(container, "ping", "-c", "1", "-W", "2", address, check=False).returncode == 0


# -- networks --------------------------------------------------------------------------------

def test_create_network_makes_bridge_addresses_and_rules(host: HostThread, driver: BridgeDriver,
                                                         netns: str) -> None:
    v6 = IPAMData(pool=IPNetwork("fd00:41::/64"), gateway=IPNetwork("fd00:41::1/64"))
    spec = NetworkSpec(network_id=NID1, ipv4=network(NID1, "10.41.0.0/24", "10.41.0.1/24").ipv4, ipv6=(v6,),
                       enable_ipv6=True, options={"com.docker.network.driver.mtu": "1450"})
    host.run(driver.create_network, spec)
    host.run(driver.create_network, spec)                          # idempotent
    br_name = naming.bridge_name(NID1)
    br = link(netns, br_name)
    assert br is not None
    assert (br["ifalias"], br["mtu"]) == (naming.network_alias(NID1), 1450)
    assert br["linkinfo"]["info_kind"] == "bridge"
    shown = ip_json("addr", "show", "dev", br_name, netns=netns)[0]
    assert "UP" in shown["flags"]
    addrs = sorted(f"{a['local']}/{a['prefixlen']}" for a in shown["addr_info"] if a["scope"] == "global")
    assert addrs == ["10.41.0.1/24", "fd00:41::1/64"]
    mark = naming.firewall_mark(NID1)
    v4 = iptables_dump(netns)
    assert "-A FORWARD -m comment --comment cnmkit -j CNMKIT-FORWARD" in v4
    quoted = f'--comment "{mark}"'                             # iptables -S quotes the colon
    assert f"-A CNMKIT-POSTROUTING -s 10.41.0.0/24 ! -o {br_name} -m comment {quoted} -j MASQUERADE" in v4
    assert f"-A CNMKIT-ISOLATION -o {br_name} -m comment {quoted} -j DROP" in v4
    assert f"-A CNMKIT-FORWARD -i {br_name} -o {br_name} -m comment {quoted} -j ACCEPT" in v4
    assert v4.count(quoted) == 6                                   # 4 forward + 1 isolation + 1 nat
    assert iptables_dump(netns, "ip6tables").count(quoted) == 5
    assert in_netns(netns, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"

    host.run(driver.delete_network, spec)
    host.run(driver.delete_network, spec)                          # already gone: fine
    assert link(netns, br_name) is None
    assert mark not in iptables_dump(netns) and mark not in iptables_dump(netns, "ip6tables")
    # The last network is gone, so are our chains and the jumps into them.
    assert "CNMKIT" not in iptables_dump(netns) and "CNMKIT" not in iptables_dump(netns, "ip6tables")


def test_half_failed_create_network_leaves_no_bridge(host: HostThread, kernel: Kernel, netns: str) -> None:
    driver = BridgeDriver(kernel, FailingFirewall())
    with pytest.raises(KernelError, match="injected"):
        host.run(driver.create_network, network(NID1, "10.41.0.0/24", "10.41.0.1/24"))
    assert link(netns, naming.bridge_name(NID1)) is None
    assert naming.firewall_mark(NID1) not in iptables_dump(netns)


def test_join_in_host_namespace_and_delete_endpoint(host: HostThread, driver: BridgeDriver,
                                                    netns: str) -> None:
    net = network(NID1, "10.41.0.0/24", "10.41.0.1/24", options={"com.docker.network.driver.mtu": "1400"})
    eid = "e1" * 32
    ep = endpoint(NID1, eid, "10.41.0.2/24", "02:00:00:41:00:02")
    host.run(driver.create_network, net)
    res = host.run(driver.join, net, ep, JoinRequest(network_id=NID1, endpoint_id=eid,
                                                     sandbox_key="/var/run/docker/netns/notyet"))
    assert str(res.gateway) == "10.41.0.1" and res.dst_prefix == "eth" and not res.disable_gateway_service
    host_end, peer = link(netns, naming.host_veth_name(eid)), link(netns, res.src_name)
    assert host_end is not None and peer is not None
    assert (host_end["master"], host_end["mtu"], host_end["ifalias"]) == \
        (naming.bridge_name(NID1), 1400, naming.endpoint_alias(eid))
    assert (peer["address"], peer["mtu"]) == ("02:00:00:41:00:02", 1400)
    host.run(driver.join, net, ep, JoinRequest(network_id=NID1, endpoint_id=eid, sandbox_key=""))  # retry
    host.run(driver.delete_endpoint, net, ep)
    host.run(driver.delete_endpoint, net, ep)
    assert link(netns, naming.host_veth_name(eid)) is None and link(netns, res.src_name) is None


def test_two_containers_on_one_bridge_ping_each_other(host: HostThread, driver: BridgeDriver,
                                                      netns_factory: Callable[[str], str]) -> None:
    c1, c2 = netns_factory("c"), netns_factory("c")
    net = network(NID1, "10.41.0.0/24", "10.41.0.1/24")
    host.run(driver.create_network, net)
    name = attach(host, driver, net, endpoint(NID1, "e1" * 32, "10.41.0.2/24", "02:00:00:41:00:02"), c1)
    attach(host, driver, net, endpoint(NID1, "e2" * 32, "10.41.0.3/24", "02:00:00:41:00:03"), c2)
    assert name == naming.container_veth_name("e1" * 32)
    assert ping(c1, "10.41.0.3")
    assert ping(c2, "10.41.0.1")                                    # the gateway on the bridge
    neigh = ip_json("neigh", "show", "10.41.0.3", netns=c1)
    assert neigh and neigh[0]["lladdr"] == "02:00:00:41:00:03"


def test_two_networks_are_isolated(host: HostThread, driver: BridgeDriver,
                                   netns_factory: Callable[[str], str]) -> None:
    c1, c2 = netns_factory("c"), netns_factory("c")
    n1 = network(NID1, "10.41.0.0/24", "10.41.0.1/24")
    n2 = network(NID2, "10.42.0.0/24", "10.42.0.1/24")
    host.run(driver.create_network, n1)
    host.run(driver.create_network, n2)
    attach(host, driver, n1, endpoint(NID1, "e1" * 32, "10.41.0.2/24", "02:00:00:41:00:02"), c1)
    attach(host, driver, n2, endpoint(NID2, "e2" * 32, "10.42.0.2/24", "02:00:00:42:00:02"), c2)
    assert not ping(c1, "10.42.0.2")
    assert not ping(c2, "10.41.0.2")
    # Control: the same topology routes once our rules are gone, so the firewall did the isolating.
    host.run(driver.firewall.remove_network, NID1)
    host.run(driver.firewall.remove_network, NID2)
    assert ping(c1, "10.42.0.2")


def make_upstream(host_ns: str, upstream: str) -> None:
    """A veth from the host namespace to ``upstream`` (192.168.77.0/24, no route back)."""
    subprocess.run(["ip", "-n", host_ns, "link", "add", "up0", "type", "veth", "peer", "name", "up1",
                    "netns", upstream], check=True)
    subprocess.run(["ip", "-n", host_ns, "addr", "add", "192.168.77.1/24", "dev", "up0"], check=True)
    subprocess.run(["ip", "-n", host_ns, "link", "set", "up0", "up"], check=True)
    subprocess.run(["ip", "-n", upstream, "addr", "add", "192.168.77.2/24", "dev", "up1"], check=True)
    subprocess.run(["ip", "-n", upstream, "link", "set", "up1", "up"], check=True)


def test_masquerade_reaches_upstream_but_internal_does_not(host: HostThread, driver: BridgeDriver, netns: str,
                                                           netns_factory: Callable[[str], str]) -> None:
    upstream, c1, c2 = netns_factory("u"), netns_factory("c"), netns_factory("c")
    make_upstream(netns, upstream)
    normal = network(NID1, "10.41.0.0/24", "10.41.0.1/24")
    internal = network(NID3, "10.43.0.0/24", "10.43.0.1/24", internal=True)
    host.run(driver.create_network, normal)
    host.run(driver.create_network, internal)
    attach(host, driver, normal, endpoint(NID1, "e1" * 32, "10.41.0.2/24", "02:00:00:41:00:02"), c1)
    res = host.run(driver.join, internal, endpoint(NID3, "e3" * 32, "10.43.0.2/24", "02:00:00:43:00:02"),
                   JoinRequest(network_id=NID3, endpoint_id="e3" * 32, sandbox_key=nspath(c2), direct=True))
    assert res.gateway is None and res.disable_gateway_service
    # Give the internal container a route anyway: it is the firewall that must stop it.
    configure(c2, res.src_name, "10.43.0.2/24", "10.43.0.1")
    assert ping(c1, "192.168.77.2")                  # upstream has no route to 10.41/24: masquerade
    assert not ping(c2, "192.168.77.2")
    assert not ping(c1, "10.43.0.2")                 # and the normal network cannot reach into it
    assert ping(c2, "10.43.0.1")                     # the bridge address itself is still local

