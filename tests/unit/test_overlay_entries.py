"""The overlay agent's derivation (agent/overlay.py) and the overlay address spaces (ipam/service.py),
on the memory store and a fake kernel side: which FDB and neighbour entries each host needs."""

from __future__ import annotations

import threading
from dataclasses import replace
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
    """What the agent asks of drivers/overlay_ns.py, as sets in memory; ``ops`` counts the kernel work."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.made: dict[int, Entries] = {}
        self.epochs: dict[int, int] = {}
        self.ops: list[str] = []

    def name(self, vni: int) -> str:
        return f"ns{vni}"

    def ready(self, vni: int) -> bool:
        return vni in self.made

    def exists(self, vni: int) -> bool:
        return vni in self.made

    def local_vnis(self) -> set[int]:
        return set(self.made)

    def epoch(self, vni: int) -> int:
        return self.epochs.get(vni, 0)

    def ensure(self, ov: OverlayRecord) -> list[str]:
        if ov.vni in self.made:
            return []
        self.made[ov.vni] = Entries()
        self.epochs[ov.vni] = self.epoch(ov.vni) + 1
        self.ops.append(f"ensure {ov.vni}")
        return [f"create {ov.vni}"]

    def teardown(self, vni: int) -> bool:
        self.epochs[vni] = self.epoch(vni) + 1
        return self.made.pop(vni, None) is not None

    def entries(self, vni: int) -> tuple[set[Any], set[Any]]:
        self.ops.append(f"dump {vni}")
        return set(self.made[vni].fdb), set(self.made[vni].neigh)

    def apply(self, vni: int, *, fdb_add: set[Any], fdb_del: set[Any], neigh_add: set[Any],
              neigh_del: set[Any]) -> None:
        self.ops += [f"fdb del {e}" for e in sorted(fdb_del)] + [f"neigh del {e}" for e in sorted(neigh_del)]
        self.ops += [f"fdb add {e}" for e in sorted(fdb_add)] + [f"neigh add {e}" for e in sorted(neigh_add)]
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
    driver = cast(VxlanDriver, type("D", (), {"host": fake, "forget_overlay": lambda self, name: None})())
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
    # The same through the batched path (ipam/batcher.py) that a dockerd's dynamic requests take:
    # a gateway request in a batch is still the overlay's one gateway, never the next free offset.
    h3 = IpamService(store, host_id="h3")
    assert h3.request_pool("cnmkit-local", "", "", opt, False)[0] == pid1
    batched = h3.request_addresses(pid1, [gw, None])
    assert batched[0] == ("10.77.0.1/24", {}) and isinstance(batched[1], tuple) and batched[1][0] != "10.77.0.1/24"
    h3.release_address(pid1, str(batched[1][0]).split("/")[0])
    got = {h.request_address(pid1, "", None)[0] for h in (h1, h2, h1, h2)}
    assert len(got) == 4 and "10.77.0.1/24" not in got
    assert overlay_pool_hosts(store, "blue", "10.77.0.0/24") == ["h1", "h2", "h3"]
    # The same subnet in another overlay and in a host's local space: no clash (namespaces apart).
    assert h1.request_pool("cnmkit-local", "10.77.0.0/24", "", {"cnmkit.overlay": "red"}, False)[0] \
        == "cnmkit-overlay.red/10.77.0.0/24"
    assert h1.request_pool("cnmkit-local", "10.77.0.0/24", "", None, False)[0] == "cnmkit-local/10.77.0.0/24"
    with pytest.raises(PoolOverlap):                       # a second network of h1 in blue
        h1.request_pool("cnmkit-local", "10.77.0.0/24", "", opt, False)
    with pytest.raises(InvalidRequest, match=r"Options\.cnmkit\.overlay"):
        h1.request_pool("cnmkit-local", "10.78.0.0/24", "", {"cnmkit.overlay": "-bad/"}, False)


def _busy_overlay(store: MemoryStore, remotes: int) -> None:
    """Overlay blue (VNI 42): h1 holds a network, h2 and h3 ``remotes`` endpoints between them."""
    store.put(records.overlay_key("blue"), OverlayRecord("blue", 42, 1450, ("10.1.0.0/16",), ("10.1.0.1/16",)).encode())
    for h in VTEPS:
        _host(store, h)
    _net(store, "n1", "h1")
    _net(store, "n2", "h2")
    for i in range(remotes):
        _ep(store, "n2", f"e{i}", ("h2", "h3")[i % 2], f"02:00:00:00:01:{i:02x}", f"10.1.1.{i + 2}/16")


def test_an_endpoint_event_writes_that_endpoints_entries_only_and_reads_no_kernel_table() -> None:
    store = MemoryStore()
    _busy_overlay(store, 40)
    agent, fake = _agent(store)
    rev = agent.relist()
    agent.sync(refresh=True)
    assert len(fake.made[42].neigh) == 40 and fake.ops[:2] == ["ensure 42", "dump 42"]
    fake.ops.clear()
    # A new endpoint on h3: its FDB and neighbour entries, nothing else, and no dump of vxlan0's tables.
    _ep(store, "n2", "new", "h3", "02:00:00:00:02:01", "10.1.2.1/16")
    for ev in store.watch("", rev + 1, timeout=0):
        rev = ev.revision
        agent.on_event(ev)
    assert fake.ops == ["fdb add ('02:00:00:00:02:01', '192.0.2.3')", "neigh add ('10.1.2.1', '02:00:00:00:02:01')"]
    # Its Join (the record's sandbox changes): no kernel work at all.
    fake.ops.clear()
    key = records.endpoint_key("n2", "new")
    kv = store.get(key)
    assert kv is not None
    rec = EndpointRecord.decode(kv.value)
    store.put(key, EndpointRecord(spec=rec.spec, mac=rec.mac, host=rec.host, sandbox="/run/netns/c").encode())
    # Its address reused with another MAC on h2: the old neighbour and FDB entries go, first.
    _ep(store, "n2", "new", "h2", "02:00:00:00:02:02", "10.1.2.1/16")
    for ev in store.watch("", rev + 1, timeout=0):
        rev = ev.revision
        agent.on_event(ev)
    assert fake.ops == ["fdb del ('02:00:00:00:02:01', '192.0.2.3')", "neigh del ('10.1.2.1', '02:00:00:00:02:01')",
                        "fdb add ('02:00:00:00:02:02', '192.0.2.2')", "neigh add ('10.1.2.1', '02:00:00:00:02:02')"]
    assert ("10.1.2.1", "02:00:00:00:02:02") in fake.made[42].neigh and len(fake.made[42].neigh) == 41


def test_entries_written_in_an_earlier_namespace_are_not_trusted_after_it_was_made_again() -> None:
    store = MemoryStore()
    _busy_overlay(store, 2)
    agent, fake = _agent(store)
    rev = agent.relist()
    agent.sync(refresh=True)
    fake.teardown(42)                      # e.g. the driver removed and re-made it between two events
    fake.ensure(OverlayRecord("blue", 42, 1450, ("10.1.0.0/16",), ("10.1.0.1/16",)))
    fake.ops.clear()
    _ep(store, "n2", "new", "h3", "02:00:00:00:02:01", "10.1.2.1/16")
    for ev in store.watch("", rev + 1, timeout=0):
        agent.on_event(ev)
    assert fake.ops[0] == "dump 42"        # the new vxlan0 is read, and gets every remote entry again
    assert len(fake.made[42].neigh) == 3 and len(fake.made[42].fdb) == 5


class CountingStore(MemoryStore):
    """A memory store that counts the watch streams opened."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = 0

    def watch(self, prefix: str, from_rev: int, *, timeout: float | None = None) -> Any:
        self.opened += 1
        return super().watch(prefix, from_rev, timeout=timeout)


def test_one_watch_stream_carries_every_event_it_is_not_reopened_per_event() -> None:
    store = CountingStore()
    _busy_overlay(store, 0)
    agent, fake = _agent(store)
    rev = agent.relist()
    agent.sync(refresh=True)
    for i in range(20):
        _ep(store, "n2", f"e{i}", "h2", f"02:00:00:00:03:{i:02x}", f"10.1.3.{i + 2}/16")
    last = store.revision()
    seen: list[int] = []
    on_event = agent.on_event

    def counted(ev: Event) -> list[str]:
        seen.append(ev.revision)
        if ev.revision == last:
            agent._stop.set()              # end follow() at the last event, not on a clock
        return on_event(ev)

    agent.on_event = counted               # type: ignore[method-assign]
    assert agent.follow(rev, float("inf")) == last
    assert store.opened == 1 and agent.watches == 1
    assert seen == list(range(rev + 1, last + 1)) and len(fake.made[42].neigh) == 20


class CountingGets(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets: list[str] = []

    def get(self, key: str) -> Any:
        self.gets.append(key)
        return super().get(key)


def test_join_reads_the_overlay_record_once_and_an_event_for_it_makes_it_read_again() -> None:
    store = CountingGets()
    ov = OverlayRecord("blue", 42, 1450, ("10.1.0.0/16",), ("10.1.0.1/16",))
    store.put(records.overlay_key("blue"), ov.encode())
    driver = VxlanDriver(cast(Any, None), store, "h1", "192.0.2.1")
    assert driver.overlay("blue", cached=True) == driver.overlay("blue", cached=True) == ov
    assert store.gets == [records.overlay_key("blue")]
    # Deleted and made again (another VNI) on another host: this host's agent sees the events.
    agent = OverlayAgent(store, driver, "h1")
    rev = agent.relist()
    store.delete(records.overlay_key("blue"))
    store.put(records.overlay_key("blue"), replace(ov, vni=43).encode())
    for ev in store.watch("", rev + 1, timeout=0):
        agent.apply_event(ev)
    got = driver.overlay("blue", cached=True)
    assert got is not None and got.vni == 43 and len(store.gets) == 2


def test_a_lagging_view_does_not_make_a_namespace_the_store_no_longer_wants() -> None:
    """The agent still holds our network's record (its DELETE not yet applied: a loaded host's
    watch lags) while the store has none: no namespace is made for it (one was, then removed
    again when the event came: a namespace appearing for an overlay already gone)."""
    store = MemoryStore()
    store.put(records.overlay_key("blue"), OverlayRecord("blue", 42, 1450, ("10.1.0.0/24",), ("10.1.0.1/24",)).encode())
    _host(store, "h1")
    _net(store, "n1", "h1")
    agent, fake = _agent(store)
    agent.relist()
    store.delete(records.network_key("n1"))
    agent.sync()
    assert fake.made == {} and fake.ops == []
    _net(store, "n1", "h1")                  # control: wanted on a fresh read, it is made
    agent.sync()
    assert 42 in fake.made
