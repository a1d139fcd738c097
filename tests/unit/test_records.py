"""The record format (store/records.py) against the bytes the previous layout wrote.

Before the format had one owner, records were built inline in drivers/manager.py and
agent/hosts.py, with ``json.dumps``'s default separators on create and the canonical form on
updates. ``MAIN_STORE`` is what that code stored (captured by running it: a network, an endpoint,
a joined endpoint with a published port, the name and the claims), byte for byte. A store written
by it must read back the same through the new module and the manager; what the new code writes
must be the same JSON (now always in canonical form, which the old code reads as well).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from netaddr import IPNetwork

from agent.hosts import HostLiveness
from drivers.base import EndpointSpec, IPAMData, JoinRequest, NetworkSpec, PortBinding, PortRequest
from drivers.manager import NetworkManager
from store import records
from store.base import Store
from store.memory import MemoryStore
from store.records import EndpointRecord, NetworkRecord
from tests.unit.test_ports import RecordingPublisher

NID, EID, EID2 = "a" * 64, "e" * 64, "f" * 64
NET_KEY = "networks/" + NID
EP_KEY = f"endpoints/{NID}/{EID}"
EP2_KEY = f"endpoints/{NID}/{EID2}"

MAIN_STORE: dict[str, bytes] = {
    "claims/ports/h1": b"1",
    "claims/subnets": b"1",
    EP_KEY: b'{"Spec": {"NetworkID": "' + NID.encode() + b'", "EndpointID": "' + EID.encode() + b'", '
            b'"Address": "10.88.0.2/24", "AddressIPv6": "fd00:88::2/64", "MacAddress": "02:42:0a:58:00:02", '
            b'"Options": {"k": "v", "n": 1}}, "Result": {"mac": ""}, "Sandbox": "", "Host": "h1"}',
    EP2_KEY: b'{"Host": "h1", "Result": {"mac": ""}, "Sandbox": "/var/run/netns/x", "Spec": {"Address": '
             b'"10.88.0.3/24", "AddressIPv6": "", "EndpointID": "' + EID2.encode() + b'", "MacAddress": '
             b'"02:42:0a:58:00:03", "NetworkID": "' + NID.encode() + b'", "Options": {}}, "Ports": '
             b'[{"proto": "tcp", "port": 80, "host_port": 8080, "host_ip": ""}]}',
    "names/web": NID.encode(),
    NET_KEY: b'{"Driver": "cnmkit-null", "Spec": {"NetworkID": "' + NID.encode() + b'", "Name": "web", '
             b'"Options": {"com.docker.network.bridge.name": "x"}, "EnableIPv6": true, "Internal": false, '
             b'"IPv4": [{"Pool": "10.88.0.0/24", "Gateway": "10.88.0.1/24", "AuxAddresses": {"r": "10.88.0.9/24"}, '
             b'"AddressSpace": "cnmkit-local"}], "IPv6": [{"Pool": "fd00:88::/64", "Gateway": "", '
             b'"AuxAddresses": {}, "AddressSpace": "cnmkit-local"}]}, "Host": "h1"}',
}
MAIN_HOST = b'{"HostID": "h1", "Advertise": "10.0.0.1", "Started": 1700000000.5, "PID": 42}'

SPEC = NetworkSpec(network_id=NID, name="web", options={"com.docker.network.bridge.name": "x"}, enable_ipv6=True,
                   ipv4=(IPAMData(pool=IPNetwork("10.88.0.0/24"), gateway=IPNetwork("10.88.0.1/24"),
                                  aux_addresses={"r": IPNetwork("10.88.0.9/24")}, address_space="cnmkit-local"),),
                   ipv6=(IPAMData(pool=IPNetwork("fd00:88::/64"), address_space="cnmkit-local"),))
EP = EndpointSpec(network_id=NID, endpoint_id=EID, address=IPNetwork("10.88.0.2/24"),
                  address_v6=IPNetwork("fd00:88::2/64"), mac="02:42:0a:58:00:02", options={"k": "v", "n": 1})
EP2 = EndpointSpec(network_id=NID, endpoint_id=EID2, address=IPNetwork("10.88.0.3/24"), mac="02:42:0a:58:00:03")
PORT = PortBinding(proto="tcp", port=80, host_port=8080)


def loaded(extra: dict[str, bytes] | None = None) -> MemoryStore:
    store = MemoryStore()
    for key, value in {**MAIN_STORE, **(extra or {})}.items():
        store.put(key, value)
    return store


def run(store: Store, fn: Callable[[NetworkManager], Any]) -> Any:
    async def go() -> Any:
        with ThreadPoolExecutor(max_workers=2) as pool:
            driver = RecordingPublisher()
            return await fn(NetworkManager(store, {driver.name: driver}, pool, host_id="h1"))

    return asyncio.run(go())


# -- reading what the previous layout wrote ----------------------------------------------------------

def test_previous_records_decode_to_the_specs_they_were_written_from() -> None:
    net = NetworkRecord.decode(MAIN_STORE[NET_KEY])
    assert (net.driver, net.spec, net.host) == ("cnmkit-null", SPEC, "h1")
    ep = EndpointRecord.decode(MAIN_STORE[EP_KEY])
    assert (ep.spec, ep.mac, ep.sandbox, ep.joined, ep.host, ep.ports) == (EP, "", "", False, "h1", None)
    ep2 = EndpointRecord.decode(MAIN_STORE[EP2_KEY])
    assert (ep2.spec, ep2.sandbox, ep2.joined, ep2.ports) == (EP2, "/var/run/netns/x", True, (PORT,))
    assert records.decode_name(MAIN_STORE["names/web"]) == NID
    assert records.decode_host(MAIN_HOST) == {"HostID": "h1", "Advertise": "10.0.0.1", "Started": 1700000000.5,
                                              "PID": 42}
    assert records.endpoint_ids_of(EP2_KEY) == (NID, EID2) and records.network_id_of(NET_KEY) == NID


def test_a_record_from_before_hosts_is_every_hosts_and_stays_without_host() -> None:
    legacy = json.loads(MAIN_STORE[EP_KEY])
    del legacy["Host"]
    rec = EndpointRecord.from_dict(legacy)
    assert rec.host is None and rec.owned_by("h1") and rec.owned_by("h2") and rec.owned_by("")
    assert "Host" not in rec.to_dict()
    assert not EndpointRecord.decode(MAIN_STORE[EP_KEY]).owned_by("h2")


def test_previous_records_round_trip_unchanged_so_an_update_that_changes_nothing_writes_nothing() -> None:
    for key in (NET_KEY, EP_KEY, EP2_KEY):
        raw = json.loads(MAIN_STORE[key])
        cls = NetworkRecord if key == NET_KEY else EndpointRecord
        assert cls.from_dict(raw).to_dict() == raw, key  # type: ignore[attr-defined]
    newer = {**json.loads(MAIN_STORE[EP_KEY]), "Future": {"x": 1}}
    assert EndpointRecord.from_dict(newer).to_dict() == newer  # a newer version's key is kept


def test_the_manager_shows_a_previous_store_as_the_previous_manager_did() -> None:
    """Inspect and ls of MAIN_STORE equal what the previous manager answered (captured with it)."""
    store = loaded()
    shown = run(store, lambda m: m.inspect_network("web"))
    spec = json.loads(MAIN_STORE[NET_KEY])["Spec"]
    assert shown == {"Id": NID, "Name": "web", "Driver": "cnmkit-null", "Internal": False, "EnableIPv6": True,
                     "IPv4": spec["IPv4"], "IPv6": spec["IPv6"], "Options": spec["Options"], "Endpoints": 2,
                     "EndpointList": [
                         {**json.loads(MAIN_STORE[EP_KEY])["Spec"], "Sandbox": "", "Ports": []},
                         {**json.loads(MAIN_STORE[EP2_KEY])["Spec"], "Sandbox": "/var/run/netns/x",
                          "Ports": [{"proto": "tcp", "port": 80, "host_port": 8080, "host_ip": ""}]}]}
    listed = run(store, lambda m: m.list_networks())
    assert listed == [{k: v for k, v in shown.items() if k != "EndpointList"}]


def test_updates_of_a_previous_record_keep_what_they_do_not_change() -> None:
    store = loaded({EP2_KEY: json.dumps({**json.loads(MAIN_STORE[EP2_KEY]), "Future": 1}).encode()})
    run(store, lambda m: m.leave(NID, EID2))
    run(store, lambda m: m.revoke_external(NID, EID2))
    after = json.loads(store.get(EP2_KEY).value)  # type: ignore[union-attr]
    before = json.loads(MAIN_STORE[EP2_KEY])
    del before["Ports"]
    assert after == {**before, "Sandbox": "", "Future": 1}


# -- writing ---------------------------------------------------------------------------------------

def test_the_manager_writes_the_same_records_in_canonical_form() -> None:
    """The same calls as made MAIN_STORE: same keys, same JSON, and the bytes are the canonical form."""
    store = MemoryStore()

    async def calls(m: NetworkManager) -> None:
        await m.create_network("cnmkit-null", SPEC)
        await m.create_endpoint(EP)
        await m.create_endpoint(EP2)
        await m.join(JoinRequest(network_id=NID, endpoint_id=EID2, sandbox_key="/var/run/netns/x", options={}))
        await m.program_external(NID, EID2, (PortRequest("tcp", 80, host_port_first=8080, host_port_last=8080),))

    run(store, calls)
    written = {kv.key: kv.value for kv in store.list("")[0]}
    assert written.keys() == MAIN_STORE.keys()
    for key, value in MAIN_STORE.items():
        if value.startswith(b"{"):
            assert json.loads(written[key]) == json.loads(value), key
            assert written[key] == json.dumps(json.loads(value), sort_keys=True, separators=(",", ":")).encode()
        else:
            assert written[key] == value, key


def test_records_built_from_specs_encode_to_the_previous_json() -> None:
    assert json.loads(NetworkRecord("cnmkit-null", SPEC, "h1").encode()) == json.loads(MAIN_STORE[NET_KEY])
    assert json.loads(EndpointRecord(EP, host="h1").encode()) == json.loads(MAIN_STORE[EP_KEY])
    ep2 = EndpointRecord(EP2, sandbox="/var/run/netns/x", host="h1", ports=(PORT,))
    assert json.loads(ep2.encode()) == json.loads(MAIN_STORE[EP2_KEY])
    assert records.next_claim(None) == b"1" and records.encode_name(NID) == MAIN_STORE["names/web"]


def test_the_host_record_is_the_previous_json() -> None:
    store = MemoryStore()
    live = HostLiveness(store, "h1", "10.0.0.1")
    live.started = 1700000000.5
    live.register()
    rec = json.loads(store.get(records.host_key("h1")).value)  # type: ignore[union-attr]
    assert rec == {**json.loads(MAIN_HOST), "PID": rec["PID"]} and isinstance(rec["PID"], int)
    assert [h["HostID"] for h in live.hosts()] == ["h1"]
    live.deregister()
