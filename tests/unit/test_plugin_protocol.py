"""The wire contract, end to end over real unix sockets, with the null driver (no root needed).

Each test talks to a real Daemon exactly as dockerd would: POST, Docker's Accept header, an
empty Host, an empty body for argument-less calls.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from client.engine import Engine
from client.transport import PluginError, PluginTransport
from drivers.base import EndpointSpec, JoinRequest, JoinResult, NetworkSpec
from drivers.manager import NetworkManager
from drivers.null import NullDriver
from plugin.server import DaemonConfig
from store.memory import MemoryStore
from store.sqlite import SQLiteStore
from tests.daemon_thread import DaemonThread

NID = "a" * 64
EID = "b" * 64


def raw_post(sock_path: str, path: str, body: bytes, host: str = "") -> tuple[int, dict]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    req = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Go-http-client/1.1\r\n"
           f"Accept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {len(body)}\r\n"
           f"Connection: close\r\n\r\n").encode() + body
    s.sendall(req)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(payload) if payload else {}


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "plugins"
    config = DaemonConfig(plugin_dir=str(d), state_dir=str(tmp_path / "state"),
                          store_url=f"sqlite://{tmp_path}/state.db", drivers=["null"])
    daemon = DaemonThread(config).start()
    yield d
    daemon.stop()


@pytest.fixture
def engine(plugin_dir: Path) -> Iterator[Engine]:
    e = Engine(str(plugin_dir))
    yield e
    e.close()


def net(plugin_dir: Path) -> PluginTransport:
    return PluginTransport(str(plugin_dir / "cnmkit-null.sock"))


def ipam(plugin_dir: Path) -> PluginTransport:
    return PluginTransport(str(plugin_dir / "cnmkit.sock"))


def test_handshake_matches_what_dockerd_expects(plugin_dir: Path) -> None:
    n, i = str(plugin_dir / "cnmkit-null.sock"), str(plugin_dir / "cnmkit.sock")
    assert raw_post(n, "/Plugin.Activate", b"") == (200, {"Implements": ["NetworkDriver"]})
    assert raw_post(n, "/NetworkDriver.GetCapabilities", b"") == (
        200, {"Scope": "local", "ConnectivityScope": "local"})
    assert raw_post(i, "/Plugin.Activate", b"") == (200, {"Implements": ["IpamDriver"]})
    status, caps = raw_post(i, "/IpamDriver.GetCapabilities", b"")
    assert status == 200 and caps["RequiresMACAddress"] is False
    status, spaces = raw_post(i, "/IpamDriver.GetDefaultAddressSpaces", b"")
    assert status == 200 and spaces["LocalDefaultAddressSpace"] and spaces["GlobalDefaultAddressSpace"]


def test_sockets_are_private(plugin_dir: Path) -> None:
    for sock in plugin_dir.iterdir():
        assert sock.is_socket()
        assert sock.stat().st_mode & 0o007 == 0, f"{sock} is world-accessible"


@pytest.mark.parametrize("host", ["", "plugin.moby.localhost", "/run/docker/plugins/x.sock"])
def test_routing_ignores_host_header(plugin_dir: Path, host: str) -> None:
    assert raw_post(str(plugin_dir / "cnmkit.sock"), "/Plugin.Activate", b"", host=host)[0] == 200


def test_unknown_methods_are_404(plugin_dir: Path) -> None:
    status, body = raw_post(str(plugin_dir / "cnmkit-null.sock"), "/NetworkDriver.Bogus", b"{}")
    assert status == 404 and "Bogus" in body["Err"]
    status, _ = raw_post(str(plugin_dir / "cnmkit.sock"), "/VolumeDriver.Create", b"{}")
    assert status == 404


def test_optional_calls_answered(plugin_dir: Path) -> None:
    n = str(plugin_dir / "cnmkit-null.sock")
    for method in ("AllocateNetwork", "FreeNetwork", "DiscoverNew", "DiscoverDelete"):
        assert raw_post(n, f"/NetworkDriver.{method}", b"{}") == (200, {})


@pytest.mark.parametrize("path,body,field", [
    ("/NetworkDriver.CreateNetwork", b"{not json", "malformed JSON"),
    ("/NetworkDriver.CreateNetwork", b"[1,2]", "expected a JSON object"),
    ("/NetworkDriver.CreateNetwork", b"{}", "NetworkID: missing"),
    ("/NetworkDriver.CreateNetwork", b'{"NetworkID": 5}', "NetworkID: expected a string"),
    ("/NetworkDriver.CreateNetwork", b'{"NetworkID": "xyz"}', "not a 64-character"),
    ("/NetworkDriver.CreateNetwork",
     json.dumps({"NetworkID": NID, "IPv4Data": [{"Pool": "10.0.0.0/33"}]}).encode(), "IPv4Data[0].Pool"),
    ("/NetworkDriver.CreateNetwork",
     json.dumps({"NetworkID": NID, "IPv4Data": [{"Pool": "10.0.0.0/24", "Gateway": "10.9.0.1/24"}]}).encode(),
     "IPv4Data[0].Gateway"),
    ("/NetworkDriver.CreateNetwork",
     json.dumps({"NetworkID": NID, "Options": {"com.docker.network.generic": {"mtu": 5}}}).encode(),
     "com.docker.network.generic.mtu"),
    ("/NetworkDriver.CreateNetwork",
     json.dumps({"NetworkID": NID, "Options": {"com.docker.network.generic": {"bogus": "1"}}}).encode(),
     "bogus"),
    ("/NetworkDriver.CreateEndpoint",
     json.dumps({"NetworkID": NID, "EndpointID": EID, "Interface": {"MacAddress": "zz:zz"}}).encode(),
     "Interface.MacAddress"),
    ("/NetworkDriver.CreateEndpoint",
     json.dumps({"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "10.0.0.5"}}).encode(),
     "Address"),
    ("/NetworkDriver.CreateEndpoint", json.dumps({"NetworkID": NID, "EndpointID": EID}).encode(),
     "network aaaaaaaaaaaa not found"),
    ("/NetworkDriver.Join", json.dumps({"NetworkID": NID, "EndpointID": EID}).encode(), "SandboxKey: missing"),
])
def test_bad_network_input_names_the_field(plugin_dir: Path, path: str, body: bytes, field: str) -> None:
    status, reply = raw_post(str(plugin_dir / "cnmkit-null.sock"), path, body)
    assert status == 200
    assert field in reply["Err"], reply
    assert "Error" not in reply
    assert net(plugin_dir).call("Plugin.Activate") == {"Implements": ["NetworkDriver"]}   # still serving


@pytest.mark.parametrize("path,body,text", [
    ("/IpamDriver.RequestPool", b"{oops", "malformed JSON"),
    ("/IpamDriver.RequestPool", b'{"AddressSpace": "cnmkit-local", "Pool": "10.1.0.0/16", "V6": "maybe"}', "V6"),
    ("/IpamDriver.RequestPool", b'{"AddressSpace": "cnmkit-local", "Pool": "300.1.0.0/16"}', "Pool"),
    ("/IpamDriver.RequestAddress", b'{"PoolID": "nope", "Address": ""}', "nope"),
    ("/IpamDriver.RequestAddress", b'{"PoolID": "x", "Address": "10.0.0.300"}', "Address"),
    ("/IpamDriver.ReleasePool", b"{}", "PoolID"),
])
def test_bad_ipam_input_uses_the_error_key(plugin_dir: Path, path: str, body: bytes, text: str) -> None:
    status, reply = raw_post(str(plugin_dir / "cnmkit.sock"), path, body)
    assert status == 200
    assert text in reply["Error"], reply
    assert not ipam(plugin_dir).call("Cnmkit.PoolList", {})["Pools"]     # nothing half-made


def test_a_bad_overlay_flag_on_network_inspect_is_refused_naming_it(plugin_dir: Path) -> None:
    status, reply = raw_post(str(plugin_dir / "cnmkit.sock"), "/Cnmkit.NetworkInspect",
                             b'{"Network": "x", "Overlay": "perhaps"}')
    assert "Overlay" in str(reply), (status, reply)
    assert ipam(plugin_dir).call("Cnmkit.PoolList", {}) == {"Pools": []}     # still serving


def test_network_lifecycle_through_the_engine(engine: Engine, plugin_dir: Path) -> None:
    nid = engine.create_network("blue", driver="null", subnets=["10.77.0.0/24"], gateways=["10.77.0.1"],
                                ip_ranges=["10.77.0.128/25"], aux_addresses={"router": "10.77.0.9"})
    (listed,) = engine.list_networks()
    assert listed["Id"] == nid and listed["Name"] == "blue" and listed["Driver"] == "cnmkit-null"
    assert listed["IPv4"][0]["Gateway"] == "10.77.0.1/24"
    assert listed["IPv4"][0]["AuxAddresses"] == {"router": "10.77.0.9/24"}

    att = engine.attach("blue", "/var/run/docker/netns/0123456789ab")
    assert att.address.startswith("10.77.0.") and int(att.address.split(".")[3].split("/")[0]) >= 128
    assert att.gateway == "10.77.0.1" and att.mac.startswith("02:")
    static = engine.attach("blue", "/var/run/docker/netns/0123456789ac", ip="10.77.0.20")
    assert static.address == "10.77.0.20/24"
    with pytest.raises(PluginError, match=r"10\.77\.0\.20"):
        engine.attach("blue", "/var/run/docker/netns/x", ip="10.77.0.20")
    with pytest.raises(PluginError, match="active endpoints"):
        engine.remove_network("blue")
    assert engine.inspect_network(nid[:8])["Endpoints"] == 2
    engine.detach(att)
    engine.detach(static)
    engine.detach(static)                                     # already gone: still fine
    engine.remove_network("blue")
    assert engine.list_networks() == []
    assert engine.list_pools() == []                          # gateway, aux and pool all released


def test_failed_create_leaves_nothing(engine: Engine) -> None:
    engine.create_network("one", driver="null", subnets=["10.78.0.0/24"])
    with pytest.raises(PluginError, match="overlap"):
        engine.create_network("two", driver="null", subnets=["10.78.0.0/16"])
    with pytest.raises(PluginError, match="already in use"):
        engine.create_network("one", driver="null", subnets=["10.79.0.0/24"])
    with pytest.raises(PluginError, match="bogus"):
        engine.create_network("three", driver="null", subnets=["10.80.0.0/24"], options={"bogus": "x"})
    assert [n["Name"] for n in engine.list_networks()] == ["one"]
    assert [p["Pool"] for p in engine.list_pools()] == ["10.78.0.0/24"]


def test_automatic_pools_do_not_overlap(engine: Engine) -> None:
    a = engine.create_network("a", driver="null")
    b = engine.create_network("b", driver="null", ipv6=True)
    pools = {n["Id"]: n for n in engine.list_networks()}
    assert pools[a]["IPv4"][0]["Pool"] != pools[b]["IPv4"][0]["Pool"]
    assert pools[b]["IPv6"][0]["Pool"].endswith("/64")


def test_creates_and_deletes_are_idempotent(plugin_dir: Path) -> None:
    n = net(plugin_dir)
    body = {"NetworkID": NID, "Options": {"com.docker.network.generic": {}},
            "IPv4Data": [{"AddressSpace": "x", "Pool": "10.81.0.0/24", "Gateway": "10.81.0.1/24"}], "IPv6Data": []}
    assert n.call("NetworkDriver.CreateNetwork", body) == {}
    assert n.call("NetworkDriver.CreateNetwork", body) == {}
    ep = {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "10.81.0.5/24"}}
    first = n.call("NetworkDriver.CreateEndpoint", ep)
    assert n.call("NetworkDriver.CreateEndpoint", ep) == first
    joined = n.call("NetworkDriver.Join", {**ep, "SandboxKey": "/x", "Options": {}})
    assert joined["Gateway"] == "10.81.0.1" and joined["InterfaceName"]["DstPrefix"] == "eth"
    assert n.call("NetworkDriver.EndpointOperInfo", {"NetworkID": NID, "EndpointID": EID})["Value"]
    ref = {"NetworkID": NID, "EndpointID": EID}
    for _ in range(2):
        assert n.call("NetworkDriver.Leave", ref) == {}
        assert n.call("NetworkDriver.DeleteEndpoint", ref) == {}
    for _ in range(2):
        assert n.call("NetworkDriver.DeleteNetwork", {"NetworkID": NID}) == {}


def test_concurrent_addresses_are_unique(engine: Engine) -> None:
    engine.create_network("busy", driver="null", subnets=["10.82.0.0/24"])
    results: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        e = Engine(engine.plugin_dir)
        for _ in range(10):
            a = e.attach("busy", "/x").address
            with lock:
                results.append(a)
        e.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 60 and len(set(results)) == 60


def test_state_survives_a_restart(tmp_path: Path) -> None:
    config = DaemonConfig(plugin_dir=str(tmp_path / "p"), state_dir=str(tmp_path / "s"),
                          store_url=f"sqlite://{tmp_path}/state.db", drivers=["null"])
    first = DaemonThread(config).start()
    e = Engine(config.plugin_dir)
    e.create_network("keep", driver="null", subnets=["10.83.0.0/24"])
    att = e.attach("keep", "/x", ip="10.83.0.7")
    e.close()
    first.stop()
    assert not list(Path(config.plugin_dir).iterdir()), "sockets must go with the daemon"

    second = DaemonThread(config, store=SQLiteStore(f"{tmp_path}/state.db")).start()
    e = Engine(config.plugin_dir)
    try:
        assert e.inspect_network("keep")["EndpointList"][0]["Address"] == "10.83.0.7/24"
        e.detach(att)
        e.remove_network("keep")
        assert e.list_networks() == [] and e.list_pools() == []
    finally:
        e.close()
        second.stop()


class BlockingDriver(NullDriver):
    """Join blocks (as a slow kernel call would) until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def join(self, network: NetworkSpec, endpoint: EndpointSpec, request: JoinRequest) -> JoinResult:
        self.entered.set()
        self.release.wait()
        return super().join(network, endpoint, request)


def test_a_slow_call_does_not_stall_the_others(tmp_path: Path) -> None:
    driver = BlockingDriver()
    config = DaemonConfig(plugin_dir=str(tmp_path / "p"), state_dir=str(tmp_path / "s"),
                          store_url=f"sqlite://{tmp_path}/state.db")
    daemon = DaemonThread(config, drivers=[driver]).start()
    e = Engine(config.plugin_dir)
    try:
        e.create_network("slow", driver="null", subnets=["10.84.0.0/24"])
        e.create_network("other", driver="null", subnets=["10.85.0.0/24"])
        blocked = threading.Thread(target=lambda: Engine(config.plugin_dir).attach("slow", "/x"))
        blocked.start()
        assert driver.entered.wait(60), "the first Join never reached the driver"
        # While that Join is stuck in the "kernel", other calls are served: IPAM, inspection,
        # and endpoint work on another network.
        other = Engine(config.plugin_dir)
        assert other.ipam.call("Plugin.Activate") == {"Implements": ["IpamDriver"]}
        assert {n["Name"] for n in other.list_networks()} == {"slow", "other"}
        t = other.driver("null")
        t.call("NetworkDriver.CreateEndpoint", {"NetworkID": other.inspect_network("other")["Id"],
                                                "EndpointID": "c" * 64, "Interface": {}})
        assert blocked.is_alive(), "the slow Join was still in the driver while all of that was served"
        driver.release.set()
        blocked.join()
        assert other.inspect_network("slow")["Endpoints"] == 1
        other.close()
    finally:
        driver.release.set()
        e.close()
        daemon.stop()


def test_bad_ids_leave_no_per_network_state(tmp_path: Path) -> None:
    config = DaemonConfig(plugin_dir=str(tmp_path / "p"), state_dir=str(tmp_path / "s"),
                          store_url=f"sqlite://{tmp_path}/state.db", drivers=["null"])
    daemon = DaemonThread(config).start()
    # With the collector off, only the lock table's own bookkeeping can empty it: a failed call's
    # traceback keeps its frames (and a lock they hold) in a reference cycle until a collection.
    gc.disable()
    try:
        n = PluginTransport(str(tmp_path / "p" / "cnmkit-null.sock"))
        for i in range(50):
            nid = f"{i:064x}"
            assert n.call("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": EID}) == {}
            with pytest.raises(PluginError, match="not found"):
                n.call("NetworkDriver.Join", {"NetworkID": nid, "EndpointID": EID, "SandboxKey": "/x"})
        assert daemon.daemon is not None
        assert len(daemon.daemon.manager._locks) == 0
    finally:
        gc.enable()
        daemon.stop()


def test_lock_table_counts_holders_and_waiters() -> None:
    """Calls on one network share one lock while any holds or awaits it; the entry goes with the last."""
    executor = ThreadPoolExecutor(max_workers=2)
    manager = NetworkManager(MemoryStore(), {}, executor)
    release, entered = threading.Event(), threading.Event()
    order: list[str] = []

    def slow(tag: str) -> str:
        order.append(f"{tag} in")
        entered.set()
        release.wait()
        order.append(f"{tag} out")
        return tag

    async def scenario() -> None:
        first = asyncio.ensure_future(manager._run(NID, slow, "a"))
        second = asyncio.ensure_future(manager._run(NID, slow, "b"))
        await asyncio.to_thread(entered.wait)             # "a" holds the lock, in the executor
        lock, users = manager._locks[NID]
        assert users == 2 and lock.locked()
        release.set()
        assert await first == "a" and await second == "b"
        assert manager._locks == {}

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        executor.shutdown(wait=True)
    assert order == ["a in", "a out", "b in", "b out"]       # serialised by the one shared lock


class SlowValidateDriver(NullDriver):
    """validate() of one network blocks until the test lets it go."""

    def __init__(self, slow_id: str) -> None:
        super().__init__()
        self.slow_id = slow_id
        self.entered = threading.Event()
        self.release = threading.Event()

    def validate(self, spec: NetworkSpec) -> None:
        if spec.network_id == self.slow_id:
            self.entered.set()
            self.release.wait()
        super().validate(spec)


def test_an_overlapping_create_cannot_overtake_one_in_progress(tmp_path: Path) -> None:
    first_id, second_id = "1" * 64, "2" * 64
    driver = SlowValidateDriver(first_id)
    config = DaemonConfig(plugin_dir=str(tmp_path / "p"), state_dir=str(tmp_path / "s"),
                          store_url=f"sqlite://{tmp_path}/state.db")
    daemon = DaemonThread(config, drivers=[driver]).start()
    results: dict[str, str] = {}

    def create(nid: str, pool: str) -> None:
        body = {"NetworkID": nid, "Options": {}, "IPv4Data": [{"AddressSpace": "x", "Pool": pool}]}
        try:
            PluginTransport(str(tmp_path / "p" / "cnmkit-null.sock")).call("NetworkDriver.CreateNetwork", body)
            results[nid] = "ok"
        except PluginError as exc:
            results[nid] = str(exc)

    try:
        first = threading.Thread(target=create, args=(first_id, "10.86.0.0/16"))
        first.start()
        assert driver.entered.wait(60)
        second = threading.Thread(target=create, args=(second_id, "10.86.1.0/24"))
        second.start()
        second.join()  # no in-process lock: the store decides, the second commits first
        driver.release.set()
        first.join()
        assert results[second_id] == "ok"
        assert "overlaps 10.86.1.0/24" in results[first_id]  # exactly one of two overlapping creates
    finally:
        driver.release.set()
        daemon.stop()
