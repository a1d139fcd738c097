"""The overlay agent's derivation (agent/overlay.py) and the overlay address spaces (ipam/service.py),
on the memory store and a fake kernel side: which FDB and neighbour entries each host needs."""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest
from netaddr import IPNetwork

from agent.overlay import ZERO_MAC, Entries, OverlayAgent, Remote, desired_entries, diff_entries
from drivers.base import EndpointSpec, NetworkSpec
from drivers.vxlan import DRIVER_NAME, VxlanDriver
from ipam.errors import InvalidRequest, PoolOverlap
from ipam.service import IpamService, overlay_pool_hosts
from store import records
from store.base import Event
from store.memory import MemoryStore
from store.records import EndpointRecord, HostRecord, NetworkRecord, OverlayRecord, encode_host

VTEPS = {"h1": "192.0.2.1", "h2": "192.0.2.2", "h3": "192.0.2.3"}


def test_remote_endpoints_give_an_fdb_a_neighbour_and_one_flood_entry_per_vtep() -> None:
    eps = [Remote("h2", "02:00:00:00:00:02", ("10.1.0.2",)), Remote("h2", "02:00:00:00:00:03", ("10.1.0.3",)),
           Remote("h3", "02:00:00:00:00:04", ("10.1.0.4", "fd00::4")),
           Remote("h1", "02:00:00:00:00:05", ("10.1.0.5",)),        # our own: the bridge learns it
           Remote("h9", "02:00:00:00:00:06", ("10.1.0.6",))]        # a host without a live record
    got = desired_entries(eps, VTEPS, "h1")
    assert got.fdb == {("02:00:00:00:00:02", "192.0.2.2"), ("02:00:00:00:00:03", "192.0.2.2"),
                       ("02:00:00:00:00:04", "192.0.2.3"), (ZERO_MAC, "192.0.2.2"), (ZERO_MAC, "192.0.2.3")}
    assert got.neigh == {("10.1.0.2", "02:00:00:00:00:02"), ("10.1.0.3", "02:00:00:00:00:03"),
                         ("10.1.0.4", "02:00:00:00:00:04"), ("fd00::4", "02:00:00:00:00:04")}


def test_a_reused_address_and_a_moved_mac_replace_their_old_entries() -> None:
    before = desired_entries([Remote("h2", "02:00:00:00:00:02", ("10.1.0.2",))], VTEPS, "h1")
    after = desired_entries([Remote("h3", "02:00:00:00:00:02", ("10.1.0.9",)),     # MAC moved to h3
                             Remote("h2", "02:00:00:00:00:07", ("10.1.0.2",))], VTEPS, "h1")  # IP reused
    diff = diff_entries(before, after)
    assert diff.neigh_del == {("10.1.0.2", "02:00:00:00:00:02")}
    assert diff.neigh_add == {("10.1.0.2", "02:00:00:00:00:07"), ("10.1.0.9", "02:00:00:00:00:02")}
    assert diff.fdb_del == {("02:00:00:00:00:02", "192.0.2.2")}
    assert ("02:00:00:00:00:02", "192.0.2.3") in diff.fdb_add
    assert diff_entries(after, after).empty()


class FakeOverlayHost:
    """What the agent asks of drivers/overlay_ns.py, as sets in memory."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.made: dict[int, Entries] = {}

    def name(self, vni: int) -> str:
        return f"ns{vni}"

    def ready(self, vni: int) -> bool:
        return vni in self.made

    def local_vnis(self) -> set[int]:
        return set(self.made)

    def ensure(self, ov: OverlayRecord) -> list[str]:
        if ov.vni in self.made:
            return []
        self.made[ov.vni] = Entries()
        return [f"create {ov.vni}"]

    def teardown(self, vni: int) -> bool:
        return self.made.pop(vni, None) is not None

    def entries(self, vni: int) -> tuple[set[Any], set[Any]]:
        return set(self.made[vni].fdb), set(self.made[vni].neigh)

    def apply(self, vni: int, *, fdb_add: set[Any], fdb_del: set[Any], neigh_add: set[Any],
              neigh_del: set[Any]) -> None:
        e = self.made[vni]
        self.made[vni] = Entries((e.fdb - fdb_del) | fdb_add, (e.neigh - neigh_del) | neigh_add)


def _net(store: MemoryStore, nid: str, host: str, overlay: str = "blue") -> None:
    spec = NetworkSpec(network_id=nid, options={"cnmkit.overlay": overlay})
    store.put(records.network_key(nid), NetworkRecord(driver=DRIVER_NAME, spec=spec, host=host).encode())


def _ep(store: MemoryStore, nid: str, eid: str, host: str, mac: str, ip: str) -> None:
    spec = EndpointSpec(network_id=nid, endpoint_id=eid, address=IPNetwork(ip), mac=mac)
    store.put(records.endpoint_key(nid, eid), EndpointRecord(spec=spec, mac=mac, host=host).encode())


def _host(store: MemoryStore, host: str) -> None:
    store.put(records.host_key(host), encode_host(HostRecord(HostID=host, Advertise=VTEPS[host], Started=0, PID=1)))


def _agent(store: MemoryStore) -> tuple[OverlayAgent, FakeOverlayHost]:
    fake = FakeOverlayHost()
    driver = cast(VxlanDriver, type("D", (), {"host": fake})())
    return OverlayAgent(store, driver, "h1"), fake


def test_agent_follows_endpoints_and_hosts_and_removes_a_namespace_nobody_needs() -> None:
    store = MemoryStore()
    store.put(records.overlay_key("blue"), OverlayRecord("blue", 42, 1450, ("10.1.0.0/24",), ("10.1.0.1/24",)).encode())
    for h in ("h1", "h2"):
        _host(store, h)
    _net(store, "n1", "h1")
    _net(store, "n2", "h2")
    _ep(store, "n2", "e2", "h2", "02:00:00:00:00:02", "10.1.0.2/24")
    agent, fake = _agent(store)
    rev = agent.relist()
    agent.sync()
    assert fake.made[42] == Entries(frozenset({("02:00:00:00:00:02", "192.0.2.2"), (ZERO_MAC, "192.0.2.2")}),
                                    frozenset({("10.1.0.2", "02:00:00:00:00:02")}))
    # h2's lease expires: its record goes, and with it every entry that pointed at it.
    store.delete(records.host_key("h2"))
    events = list(store.watch("", rev + 1, timeout=0))
    assert any(agent.apply_event(ev) for ev in events)
    agent.sync()
    assert fake.made[42] == Entries()
    # Our network goes: nothing of this host is left in the overlay, so its namespace goes too.
    store.delete(records.network_key("n1"))
    assert agent.apply_event(Event("DELETE", records.network_key("n1"), b"", store.revision()))
    agent.sync()
    assert fake.made == {}
    assert not agent.apply_event(Event("PUT", "ipam/pools/x", b"{}", store.revision()))


def test_overlay_pools_are_shared_by_hosts_and_apart_from_other_overlays() -> None:
    store = MemoryStore()
    h1, h2 = IpamService(store, host_id="h1"), IpamService(store, host_id="h2")
    opt = {"cnmkit.overlay": "blue"}
    pid1, pool, _ = h1.request_pool("cnmkit-local", "10.77.0.0/24", "", opt, False)
    pid2, _, _ = h2.request_pool("cnmkit-local", "", "", opt, False)       # joins: no --subnet needed
    assert pid1 == pid2 == "cnmkit-overlay.blue/10.77.0.0/24" and pool == "10.77.0.0/24"
    gw = {"RequestAddressType": "com.docker.network.gateway"}
    assert h1.request_address(pid1, "", gw)[0] == h2.request_address(pid2, "", gw)[0] == "10.77.0.1/24"
    got = {h.request_address(pid1, "", None)[0] for h in (h1, h2, h1, h2)}
    assert len(got) == 4 and "10.77.0.1/24" not in got
    assert overlay_pool_hosts(store, "blue", "10.77.0.0/24") == ["h1", "h2"]
    # The same subnet in another overlay and in a host's local space: no clash (namespaces apart).
    assert h1.request_pool("cnmkit-local", "10.77.0.0/24", "", {"cnmkit.overlay": "red"}, False)[0] \
        == "cnmkit-overlay.red/10.77.0.0/24"
    assert h1.request_pool("cnmkit-local", "10.77.0.0/24", "", None, False)[0] == "cnmkit-local/10.77.0.0/24"
    with pytest.raises(PoolOverlap):                       # a second network of h1 in blue
        h1.request_pool("cnmkit-local", "10.77.0.0/24", "", opt, False)
    with pytest.raises(InvalidRequest, match=r"Options\.cnmkit\.overlay"):
        h1.request_pool("cnmkit-local", "10.78.0.0/24", "", {"cnmkit.overlay": "-bad/"}, False)
