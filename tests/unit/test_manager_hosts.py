"""The network manager shared by several daemons on one store (issue 7, item 4), on memory and SQLite.

Two ``NetworkManager`` objects stand for two daemons (processes or hosts): only the store is
shared, so no in-process lock can help them. ``Interleave`` pins the interleaving a race needs:
the other daemon commits between our read and our transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from netaddr import IPNetwork

from drivers.base import EndpointSpec, IPAMData, JoinRequest, NetworkSpec, PortRequest
from drivers.errors import Conflict
from drivers.manager import NetworkManager
from store import records
from store.base import Store
from store.memory import MemoryStore
from store.records import EndpointRecord, NetworkRecord
from store.sqlite import SQLiteStore
from tests.unit.test_ipam_service import Interleave
from tests.unit.test_ports import RecordingPublisher

LOCAL, GLOBAL = "cnmkit-local", "cnmkit-global"


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "state.db"))
    yield s
    s.close()


def net(nid: str, cidr: str, space: str = LOCAL) -> NetworkSpec:
    return NetworkSpec(network_id=nid * 64, ipv4=(IPAMData(pool=IPNetwork(cidr), address_space=space),))


def run(store: Store, host: str, fn: Callable[[NetworkManager], object]) -> object:
    async def go() -> object:
        with ThreadPoolExecutor(max_workers=2) as pool:
            driver = RecordingPublisher()
            mgr = NetworkManager(store, {driver.name: driver}, pool, host_id=host)
            result = fn(mgr)
            return await result if asyncio.iscoroutine(result) else result

    return asyncio.run(go())


def create(store: Store, host: str, spec: NetworkSpec) -> object:
    return run(store, host, lambda m: m.create_network("cnmkit-null", spec))


def test_overlap_check_is_decided_by_the_store_not_a_lock(store: Store) -> None:
    """h2 commits an overlapping network after h1 listed the networks and before h1's txn."""
    racing = Interleave(store, lambda k: k == records.NETWORKS,
                        lambda: create(store, "h2", net("b", "10.90.1.0/24", GLOBAL)))
    with pytest.raises(Conflict, match=r"10\.90\.0\.0/16 overlaps 10\.90\.1\.0/24"):
        create(racing, "h1", net("a", "10.90.0.0/16", GLOBAL))  # type: ignore[arg-type]
    assert [kv.key for kv in store.list(records.NETWORKS)[0]] == [records.network_key("b" * 64)]


def test_local_subnets_of_different_hosts_may_overlap_global_ones_may_not(store: Store) -> None:
    create(store, "h1", net("a", "10.91.0.0/24"))
    create(store, "h2", net("b", "10.91.0.0/24"))  # each host's bridge is its own
    with pytest.raises(Conflict, match="overlaps"):
        create(store, "h1", net("c", "10.91.0.0/25"))
    with pytest.raises(Conflict, match="overlaps"):
        create(store, "h3", net("d", "10.91.0.0/24", GLOBAL))
    hosts = {NetworkRecord.decode(kv.value).host for kv in store.list(records.NETWORKS)[0]}
    assert hosts == {"h1", "h2"}


def test_port_choice_is_decided_by_the_store_not_a_lock(store: Store) -> None:
    """Another daemon of the same host publishes port 8080 between our read and our txn."""
    spec = net("a", "10.92.0.0/24")
    ep1, ep2 = EndpointSpec(network_id=spec.network_id, endpoint_id="1" * 64), \
        EndpointSpec(network_id=spec.network_id, endpoint_id="2" * 64)
    want = (PortRequest("tcp", 80, host_port_first=8080, host_port_last=8081),)

    async def setup(m: NetworkManager) -> None:
        await m.create_network("cnmkit-null", spec)
        await m.create_endpoint(ep1)
        await m.create_endpoint(ep2)

    run(store, "h1", setup)
    other: list[object] = []
    racing = Interleave(store, lambda k: k == records.ENDPOINTS,
                        lambda: other.append(run(store, "h1", lambda m: m.program_external(
                            spec.network_id, ep2.endpoint_id, want))))
    got = run(racing, "h1", lambda m: m.program_external(  # type: ignore[arg-type]
        spec.network_id, ep1.endpoint_id, want))
    assert [b.host_port for b in other[0]] == [8080]  # type: ignore[attr-defined]
    assert [b.host_port for b in got] == [8081], "chose again after the other daemon's claim"  # type: ignore[attr-defined]
    # Another host's endpoints take none of this host's ports.
    assert [b.host_port for b in run(store, "h2", lambda m: m.program_external(  # type: ignore[attr-defined]
        spec.network_id, ep1.endpoint_id, want))] == [8080]


def test_join_and_leave_do_not_lose_a_concurrent_change(store: Store) -> None:
    """A publish recorded between Join's read and its write survives (was an unconditional put)."""
    spec = net("a", "10.93.0.0/24")
    ep = EndpointSpec(network_id=spec.network_id, endpoint_id="1" * 64)
    want = (PortRequest("tcp", 80, host_port_first=9090, host_port_last=9090),)

    async def setup(m: NetworkManager) -> None:
        await m.create_network("cnmkit-null", spec)
        await m.create_endpoint(ep)

    run(store, "h1", setup)
    key = records.endpoint_key(spec.network_id, ep.endpoint_id)
    racing = Interleave(store, lambda k: k == key,
                        lambda: run(store, "h1", lambda m: m.program_external(spec.network_id, ep.endpoint_id, want)))
    run(racing, "h1", lambda m: m.join(JoinRequest(  # type: ignore[arg-type]
        network_id=spec.network_id, endpoint_id=ep.endpoint_id, sandbox_key="/var/run/netns/x", options={})))
    rec = EndpointRecord.decode(store.get(key).value)  # type: ignore[union-attr]
    assert rec.sandbox == "/var/run/netns/x" and [p.host_port for p in rec.ports or ()] == [9090]
    assert rec.host == "h1"


class RecordingConverger(RecordingPublisher):
    """Says what the agent asked it to make right, and what it counted as known for orphans."""

    def __init__(self) -> None:
        super().__init__()
        self.networks: list[str] = []
        self.endpoints: list[str] = []
        self.known: tuple[set[str], set[str]] = (set(), set())

    def ensure_network(self, spec: NetworkSpec, *, dry_run: bool) -> list[str]:
        self.networks.append(spec.network_id[:1])
        return []

    def ensure_endpoints(self, network: NetworkSpec, endpoints: object, *, dry_run: bool) -> list[str]:
        self.endpoints += [e.spec.endpoint_id[:1] for e in endpoints]  # type: ignore[attr-defined]
        return []

    def reconcile(self, known: Callable[[], tuple[set[str], set[str]]], *, dry_run: bool) -> list[str]:
        self.known = known()
        return []


def test_the_agent_converges_only_its_own_hosts_records_and_knows_every_hosts(store: Store) -> None:
    from agent.reconcile import Agent

    async def make(m: NetworkManager, nid: str, cidr: str, eid: str) -> None:
        spec = net(nid, cidr)
        await m.create_network("cnmkit-null", spec)
        await m.create_endpoint(EndpointSpec(network_id=spec.network_id, endpoint_id=eid * 64))

    run(store, "h1", lambda m: make(m, "a", "10.94.0.0/24", "1"))
    run(store, "h2", lambda m: make(m, "b", "10.94.0.0/24", "2"))
    driver = RecordingConverger()

    async def reconcile() -> list[str]:
        with ThreadPoolExecutor(max_workers=2) as pool:
            return await Agent(store, {driver.name: driver}, pool, host_id="h1").reconcile()

    asyncio.run(reconcile())
    assert (driver.networks, driver.endpoints) == (["a"], ["1"])  # h2's network is h2's to make
    assert driver.known == ({"a" * 64, "b" * 64}, {"1" * 64, "2" * 64})  # never an orphan of ours
