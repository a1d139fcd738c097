"""Published ports (docker run -p / -P): decoding, host-port choice and the firewall's rules."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from netaddr import IPNetwork

from client.transport import PluginError, PluginTransport
from drivers import naming
from drivers.base import EndpointSpec, IPAMData, NetworkSpec, PortBinding, PortRequest
from drivers.bridge import BridgeDriver
from drivers.errors import Conflict, KernelError
from drivers.firewall import DNAT_CHAIN, FORWARD_CHAIN, NAT_CHAIN, Firewall
from drivers.manager import NetworkManager
from drivers.null import NullDriver
from plugin.errors import BadRequest
from plugin.protocol import PORTMAP, decode_port_requests
from plugin.server import DaemonConfig
from store.memory import MemoryStore
from tests.daemon_thread import DaemonThread
from tests.fakekernel import FakeIptables, FakeKernel, FakeSysctl

NID, EID, EID2 = "1" * 64, "e" * 64, "f" * 64


def portmap(**kw: object) -> dict:
    return {PORTMAP: [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080,
                       **kw}]}


@pytest.mark.parametrize("item,field", [
    ({"Proto": 99}, "Proto"),
    ({"Port": 0}, "Port"),
    ({"Port": "80"}, "Port"),
    ({"HostPort": 70000}, "HostPort"),
    ({"HostPort": 9000, "HostPortEnd": 8000}, "HostPortEnd"),
    ({"HostIP": "not-an-ip"}, "HostIP"),
    ({"HostIP": "::1"}, "HostIP"),
])
def test_bad_port_maps_name_the_field(item: dict, field: str) -> None:
    with pytest.raises(BadRequest, match=rf"portmap\[0\]\.{field}"):
        decode_port_requests(portmap(**item))


def test_port_maps_decode() -> None:
    (req,) = decode_port_requests(portmap(Proto=17, HostIP="192.0.2.7", HostPort=0, HostPortEnd=0))
    assert (req.proto, req.port, req.host_ip, req.host_port_first) == ("udp", 80, "192.0.2.7", 0)
    assert decode_port_requests({}) == ()


class RecordingPublisher(NullDriver):
    def __init__(self) -> None:
        super().__init__()
        self.published: dict[str, tuple[PortBinding, ...]] = {}
        self.unpublished: list[str] = []

    def publish(self, network: NetworkSpec, endpoint: EndpointSpec, ports: tuple[PortBinding, ...]) -> None:
        self.published[endpoint.endpoint_id] = ports

    def unpublish(self, network: NetworkSpec, endpoint: EndpointSpec) -> None:
        self.unpublished.append(endpoint.endpoint_id)
        self.published.pop(endpoint.endpoint_id, None)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[RecordingPublisher, PluginTransport]]:
    driver = RecordingPublisher()
    config = DaemonConfig(plugin_dir=str(tmp_path / "p"), state_dir=str(tmp_path / "s"),
                          store_url=f"sqlite://{tmp_path}/state.db")
    thread = DaemonThread(config, drivers=[driver]).start()
    t = PluginTransport(str(tmp_path / "p" / "cnmkit-null.sock"))
    t.call("NetworkDriver.CreateNetwork", {"NetworkID": NID, "IPv4Data": [{"Pool": "10.88.0.0/24"}]})
    for i, eid in enumerate((EID, EID2)):
        t.call("NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": eid,
                                                "Interface": {"Address": f"10.88.0.{i + 2}/24"}})
    yield driver, t
    thread.stop()


def program(t: PluginTransport, eid: str, **kw: object) -> dict:
    return t.call("NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NID, "EndpointID": eid,
                                                                "Options": portmap(**kw)})


def test_host_ports_are_chosen_and_never_shared(daemon: tuple[RecordingPublisher, PluginTransport]) -> None:
    driver, t = daemon
    program(t, EID)
    assert [b.host_port for b in driver.published[EID]] == [8080]
    with pytest.raises(PluginError, match="8080/tcp is already published by endpoint eeeeeeeeeeee"):
        program(t, EID2)
    program(t, EID2, Proto=17)                                  # same number, other protocol: fine
    program(t, EID2, HostPort=8080, HostPortEnd=8085)           # a range: the next free one
    assert driver.published[EID2][0].host_port == 8081
    program(t, EID2, HostPort=0, HostPortEnd=0)                 # -P
    assert 49153 <= driver.published[EID2][0].host_port <= 60999
    t.call("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NID, "EndpointID": EID})
    assert EID not in driver.published
    program(t, EID2)                                            # 8080 is free again
    assert driver.published[EID2][0].host_port == 8080
    t.call("NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": EID2})
    assert EID2 not in driver.published, "deleting an endpoint withdraws its ports even without Revoke"


def test_revoke_looks_at_the_firewall_only_for_recorded_ports(
        daemon: tuple[RecordingPublisher, PluginTransport]) -> None:
    """dockerd revokes at every container stop; with nothing published (the record says so) the
    firewall is not listed at all (issue 11 item 2: that was 16 ms of iptables processes a stop)."""
    driver, t = daemon
    t.call("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NID, "EndpointID": EID})
    assert driver.unpublished == []
    program(t, EID)
    t.call("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NID, "EndpointID": EID})
    assert driver.unpublished == [EID] and EID not in driver.published
    t.call("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NID, "EndpointID": EID})
    assert driver.unpublished == [EID]                          # the record was cleared with the rules


def test_bridge_programs_and_withdraws_port_rules() -> None:
    ipt = FakeIptables()
    fw = Firewall(run=ipt, sysctl=FakeSysctl())
    driver = BridgeDriver(FakeKernel(), fw)
    net = NetworkSpec(network_id=NID, ipv4=(IPAMData(pool=IPNetwork("10.88.0.0/24"),
                                                     gateway=IPNetwork("10.88.0.1/24")),))
    ep = EndpointSpec(network_id=NID, endpoint_id=EID, address=IPNetwork("10.88.0.2/24"))
    driver.create_network(net)
    ports = (PortBinding("tcp", 80, 8080), PortBinding("udp", 53, 5353, "192.0.2.7"))
    driver.publish(net, ep, ports)
    driver.publish(net, ep, ports)                              # converges, no duplicates
    mark = f"{naming.firewall_mark(NID)}:{EID}"                # whole ids, never prefixes
    dnat = [r for r in ipt.chains("iptables", "nat")[DNAT_CHAIN] if mark in r]
    assert len(dnat) == 2 and any("10.88.0.2:80" in r and "8080" in r for r in dnat)
    assert any("-d" in r and "192.0.2.7/32" in r for r in dnat)
    assert len([r for r in ipt.chains("iptables", "filter")[FORWARD_CHAIN] if mark in r]) == 2
    assert len([r for r in ipt.chains("iptables", "nat")[NAT_CHAIN] if mark in r]) == 2
    assert fw.marks() >= {(NID, EID)}
    driver.unpublish(net, ep)
    assert all(mark not in r for chains in ipt.tables.values() for rules in chains.values() for r in rules)
    driver.publish(net, ep, ports)
    driver.delete_network(net)                                  # the network's mark covers its ports
    leftover = {name: rules for chains in ipt.tables.values() for name, rules in chains.items()
                if rules or name.startswith("CNMKIT")}
    assert leftover == {}, "nothing of ours is left: no rule, no jump, no chain"


# -- the host-wide port choice is short; kernel work holds only its own network -----------------

class HeldPublisher(RecordingPublisher):
    """Publishes of network ``held`` wait in the "kernel" until the test lets them go."""

    def __init__(self, held: str) -> None:
        super().__init__()
        self.held = held
        self.entered = threading.Event()
        self.release = threading.Event()
        self.log: list[str] = []

    def publish(self, network: NetworkSpec, endpoint: EndpointSpec, ports: tuple[PortBinding, ...]) -> None:
        if network.network_id == self.held:
            self.entered.set()
            # The bound only turns a deadlock (the bug) into a failed ordering assertion below.
            self.release.wait(60)
            self.log.append("held publish done")
        super().publish(network, endpoint, ports)


def test_a_big_publish_in_flight_blocks_no_other_network() -> None:
    other, eid_other = "2" * 64, "3" * 64
    driver = HeldPublisher(held=NID)

    async def scenario() -> None:
        with ThreadPoolExecutor(max_workers=4) as pool:
            mgr = NetworkManager(MemoryStore(), {"cnmkit-null": driver}, pool)
            loop = asyncio.get_running_loop()
            await mgr.create_network("cnmkit-null", NetworkSpec(network_id=NID))
            await mgr.create_endpoint(EndpointSpec(network_id=NID, endpoint_id=EID))
            big = tuple(PortRequest("tcp", 80, host_port_first=20000 + i, host_port_last=20000 + i)
                        for i in range(1000))
            held = asyncio.create_task(mgr.program_external(NID, EID, big))
            await loop.run_in_executor(None, driver.entered.wait)
            # While network NID's publish is in the kernel: another network is created, gets an
            # endpoint and publishes; a port NID reserved is refused, a free one is given.
            await mgr.create_network("cnmkit-null", NetworkSpec(network_id=other))
            await mgr.create_endpoint(EndpointSpec(network_id=other, endpoint_id=eid_other))
            with pytest.raises(Conflict, match="20000/tcp is already published"):
                await mgr.program_external(other, eid_other, (PortRequest("tcp", 80, host_port_first=20000,
                                                                          host_port_last=20000),))
            got = await mgr.program_external(other, eid_other, (PortRequest("tcp", 80, host_port_first=20000,
                                                                            host_port_last=21000),))
            assert got[0].host_port == 21000
            await mgr.revoke_external(other, eid_other)
            driver.log.append("other network done")
            driver.release.set()
            assert len(await held) == 1000

    asyncio.run(scenario())
    assert driver.log == ["other network done", "held publish done"]


def test_a_failed_publish_frees_the_ports_it_reserved() -> None:
    class Failing(RecordingPublisher):
        def publish(self, network: NetworkSpec, endpoint: EndpointSpec, ports: tuple[PortBinding, ...]) -> None:
            if ports[0].host_port == 9999:
                raise KernelError("injected")
            super().publish(network, endpoint, ports)

    async def scenario() -> None:
        with ThreadPoolExecutor(max_workers=2) as pool:
            mgr = NetworkManager(MemoryStore(), {"cnmkit-null": Failing()}, pool)
            await mgr.create_network("cnmkit-null", NetworkSpec(network_id=NID))
            for eid in (EID, EID2):
                await mgr.create_endpoint(EndpointSpec(network_id=NID, endpoint_id=eid))
            await mgr.program_external(NID, EID, (PortRequest("tcp", 80, host_port_first=8080, host_port_last=8080),))
            with pytest.raises(KernelError):
                await mgr.program_external(NID, EID, (PortRequest("tcp", 80, host_port_first=9999,
                                                                  host_port_last=9999),))
            # 8080 is still EID's (its rules were kept), 9999 is free again.
            with pytest.raises(Conflict):
                await mgr.program_external(NID, EID2, (PortRequest("tcp", 80, host_port_first=8080,
                                                                   host_port_last=8080),))
            await mgr.program_external(NID, EID2, (PortRequest("tcp", 80, host_port_first=9998,
                                                               host_port_last=9999),))
            info = await mgr.inspect_network(NID)
            ports = {ep["EndpointID"]: [p["host_port"] for p in ep["Ports"]] for ep in info["EndpointList"]}
            assert ports == {EID: [8080], EID2: [9998]}

    asyncio.run(scenario())


def test_host_binding_ipv4_is_the_default_host_ip_of_published_ports() -> None:
    ipt = FakeIptables()
    driver = BridgeDriver(FakeKernel(), Firewall(run=ipt, sysctl=FakeSysctl()))
    opts = {"com.docker.network.bridge.host_binding_ipv4": "127.0.0.9"}
    net = NetworkSpec(network_id=NID, options=opts,
                      ipv4=(IPAMData(pool=IPNetwork("10.88.0.0/24"), gateway=IPNetwork("10.88.0.1/24")),))

    async def scenario() -> list[PortBinding]:
        with ThreadPoolExecutor(max_workers=2) as pool:
            mgr = NetworkManager(MemoryStore(), {"cnmkit-bridge": driver}, pool)
            await mgr.create_network("cnmkit-bridge", net)
            await mgr.create_endpoint(EndpointSpec(network_id=NID, endpoint_id=EID,
                                                   address=IPNetwork("10.88.0.2/24")))
            return await mgr.program_external(NID, EID, (
                PortRequest("tcp", 80, host_port_first=8080, host_port_last=8080),
                PortRequest("tcp", 81, host_ip="192.0.2.7", host_port_first=8081, host_port_last=8081)))

    bindings = asyncio.run(scenario())
    assert [b.host_ip for b in bindings] == ["127.0.0.9", "192.0.2.7"]
    dnat = [" ".join(r) for r in ipt.chains("iptables", "nat")[DNAT_CHAIN]]
    assert any("-d 127.0.0.9/32" in r and "--dport 8080" in r for r in dnat)
    assert any("-d 192.0.2.7/32" in r and "--dport 8081" in r for r in dnat)
