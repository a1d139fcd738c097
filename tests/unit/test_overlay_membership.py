"""The overlay record's membership (drivers/vxlan.py ``_register`` / ``_leave``) on the in-memory store.

Two deletes of an overlay's last networks at once (two hosts' ``docker network rm``, or two on
one host) each read the other's network record before either was dropped, so neither took the
overlay record (and its VNI claim) away, nor this host's namespace. Reproduced here
deterministically: both drivers' deletes run before the managers drop the network records,
which is the interleaving two concurrent DeleteNetworks can take.
"""

from __future__ import annotations

from typing import Any, cast

from netaddr import IPNetwork

from drivers.base import IPAMData, NetworkSpec
from drivers.vxlan import DRIVER_NAME, VxlanConfig, VxlanDriver
from ipam.pools import OVERLAY_OPTION
from store import records
from store.memory import MemoryStore
from store.records import NetworkRecord, OverlayRecord


class Teardowns:
    """Stands in for the host's overlay namespaces: records which VNIs were torn down."""

    def __init__(self) -> None:
        self.vnis: list[int] = []

    def teardown(self, vni: int) -> bool:
        self.vnis.append(vni)
        return True


def driver(store: MemoryStore, host: str) -> tuple[VxlanDriver, Teardowns]:
    made = VxlanDriver(cast(Any, None), store, host, "192.0.2.1")
    made.host = cast(Any, Teardowns())
    return made, cast(Teardowns, made.host)


def network(store: MemoryStore, drv: VxlanDriver, tag: str) -> NetworkSpec:
    """A network of overlay "duo" created on ``drv``'s host: its record, then the driver's create."""
    spec = NetworkSpec(network_id=tag * 64, options={OVERLAY_OPTION: "duo", "vni": "7001"},
                       ipv4=(IPAMData(pool=IPNetwork("10.5.0.0/24"), gateway=IPNetwork("10.5.0.1/24")),))
    store.put(records.network_key(spec.network_id),
              NetworkRecord(driver=DRIVER_NAME, spec=spec, host=drv.host_id).encode())
    drv._register(spec, VxlanConfig.parse(spec), 1500)
    return spec


def drop(store: MemoryStore, *specs: NetworkSpec) -> None:
    for spec in specs:
        store.delete(records.network_key(spec.network_id))


def test_concurrent_deletes_of_the_last_networks_on_two_hosts_remove_the_overlay() -> None:
    store = MemoryStore()
    (d1, t1), (d2, t2) = driver(store, "h1"), driver(store, "h2")
    n1, n2 = network(store, d1, "a"), network(store, d2, "b")
    ov = store.get(records.overlay_key("duo"))
    assert ov is not None and OverlayRecord.decode(ov.value).networks == {n1.network_id: "h1", n2.network_id: "h2"}
    d1.delete_network(n1)
    d2.delete_network(n2)                     # both in flight: neither record dropped yet
    drop(store, n1, n2)
    assert store.get(records.overlay_key("duo")) is None
    assert store.get(records.vni_claim_key(7001)) is None
    assert t1.vnis == [7001] and t2.vnis == [7001]


def test_concurrent_deletes_of_two_networks_on_one_host_tear_its_namespace_down_once() -> None:
    store = MemoryStore()
    d1, t1 = driver(store, "h1")
    n1, n2 = network(store, d1, "a"), network(store, d1, "b")
    d1.delete_network(n1)
    assert t1.vnis == [] and store.get(records.overlay_key("duo")) is not None    # n2 still needs it
    d1.delete_network(n2)
    drop(store, n1, n2)
    assert t1.vnis == [7001] and store.get(records.overlay_key("duo")) is None


def test_a_record_from_before_membership_takes_it_from_the_network_records() -> None:
    store = MemoryStore()
    (d1, t1), (d2, _) = driver(store, "h1"), driver(store, "h2")
    n1, n2 = network(store, d1, "a"), network(store, d2, "b")
    key = records.overlay_key("duo")
    kv = store.get(key)
    assert kv is not None
    legacy = OverlayRecord.decode(kv.value).to_dict()
    del legacy["Networks"]
    store.put(key, records.encode(legacy))
    d1.delete_network(n1)
    drop(store, n1)
    kv = store.get(key)
    assert kv is not None and OverlayRecord.decode(kv.value).networks == {n2.network_id: "h2"}
    assert t1.vnis == [7001]
