"""Names of other hosts' containers in the runtime's hosts files (the overlay tier proves it end to end).

The runtime learns them from the endpoint records of a multi-host (cnmkit-vxlan) network, where each
runtime put its container's name, hostname and aliases (engine NAMES_OPTION). Checked here on a fake
engine: only other hosts' endpoints of a vxlan network count, and a daemon that does not answer
leaves the hosts files as they were rather than failing the operation.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from netaddr import IPNetwork

from client.engine import NAMES_OPTION, DaemonUnavailable
from drivers.base import EndpointSpec, NetworkSpec
from drivers.manager import NetworkManager
from runtime import hosts
from runtime.containers import MULTI_HOST_DRIVER, ContainerService
from store import records
from store.memory import MemoryStore
from store.records import EndpointRecord, NetworkRecord


class FakeEngine:
    def __init__(self, nets: dict[str, dict[str, Any]], down: bool = False) -> None:
        self.nets, self.down = nets, down

    def inspect_network(self, ref: str, *, overlay: bool = False) -> dict[str, Any]:
        if self.down:
            raise DaemonUnavailable("no daemon")
        return self.nets[ref]


def _service(tmp_path: Path, engine: FakeEngine) -> ContainerService:
    svc = ContainerService(str(tmp_path / "state"), str(tmp_path / "plugins"), str(tmp_path / "run"))
    svc._engine = engine  # type: ignore[assignment]
    return svc


LOCAL = {"web": hosts.Member("web", "web", ({"network_id": "ov", "endpoint_id": "e1", "address": "10.9.0.2/24"},
                                             {"network_id": "br", "endpoint_id": "e2", "address": "10.8.0.2/24"}))}


def _ep(eid: str, address: str, names: str | None) -> dict[str, Any]:
    return {"EndpointID": eid, "Address": address, "AddressIPv6": "",
            "Options": {NAMES_OPTION: names} if names is not None else {}}


def test_other_hosts_endpoints_of_a_vxlan_network_become_peers_with_their_names(tmp_path: Path) -> None:
    engine = FakeEngine({
        "ov": {"Driver": MULTI_HOST_DRIVER, "EndpointList": [
            _ep("e1", "10.9.0.2/24", "web,web"),                 # this host's own: not a remote peer
            _ep("e9", "10.9.0.7/24", "db,db-host,store"),        # another host's, with an alias
            _ep("e8", "10.9.0.8/24", None)]},                    # dockerd's: no names, left out
        "br": {"Driver": "cnmkit-bridge", "EndpointList": [_ep("e7", "10.8.0.9/24", "other,other")]},
    })
    remote = _service(tmp_path, engine)._remote_members(LOCAL)
    assert list(remote.values()) == [hosts.Member("db", "db-host", (
        {"network_id": "ov", "address": "10.9.0.7/24", "address_v6": "", "aliases": ["store"]},))]
    text = hosts.render_all({**LOCAL, **remote})["web"]
    assert "10.9.0.7\tdb db-host store" in text and "other" not in text


def test_without_the_daemon_there_are_no_remote_peers_and_no_error(tmp_path: Path) -> None:
    assert _service(tmp_path, FakeEngine({}, down=True))._remote_members(LOCAL) == {}


def test_the_daemon_lists_every_network_record_of_the_overlay_when_asked() -> None:
    """Each dockerd mints its own id for one overlay: the names of h1's dockerd containers sit under
    h1's network record, so the runtime on h2 asks for the overlay's endpoints (``overlay=True``)."""
    store = MemoryStore()
    for nid, overlay, host in (("a", "blue", "h1"), ("b", "blue", "h2"), ("c", "red", "h1")):
        spec = NetworkSpec(network_id=nid * 64, name=f"{overlay}-{host}", options={"cnmkit.overlay": overlay})
        store.put(records.network_key(nid * 64), NetworkRecord(MULTI_HOST_DRIVER, spec, host=host).encode())
        store.put(records.name_key(spec.name), records.encode_name(spec.network_id))
        ep = EndpointSpec(network_id=nid * 64, endpoint_id=nid * 63 + "e", address=IPNetwork("10.9.0.2/24"))
        store.put(records.endpoint_key(nid * 64, ep.endpoint_id), EndpointRecord(spec=ep, host=host).encode())

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        with ThreadPoolExecutor(max_workers=1) as pool:
            manager = NetworkManager(store, {}, pool, host_id="h2")
            return (await manager.inspect_network("blue-h2"),
                    await manager.inspect_network("blue-h2", overlay=True))

    plain, whole = asyncio.run(go())
    assert "OverlayEndpointList" not in plain and [e["NetworkID"][0] for e in plain["EndpointList"]] == ["b"]
    assert sorted(e["NetworkID"][0] for e in whole["OverlayEndpointList"]) == ["a", "b"]
    assert [e["NetworkID"][0] for e in whole["EndpointList"]] == ["b"]      # `network rm` still sees its own
