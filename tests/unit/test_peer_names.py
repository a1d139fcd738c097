"""agent/peer_names.py on the in-memory store and a real runtime state dir: the hosts files it writes.

Fast tier; end to end (two hosts, etcd, nsenter into the container) in tests/overlay/test_overlay_hosts.py.
"""

from __future__ import annotations

from pathlib import Path

from netaddr import IPNetwork

from agent.peer_names import RemotePeerNames
from client.engine import NAMES_OPTION
from drivers.base import EndpointSpec, NetworkSpec
from runtime.hostsfiles import MULTI_HOST_DRIVER
from runtime.state import STATUS_RUNNING, ContainerConfig, ContainerState, StateStore
from store import records
from store.memory import MemoryStore
from store.records import EndpointRecord, NetworkRecord

OV, BR = "a" * 64, "b" * 64


def endpoint(store: MemoryStore, net: str, eid: str, address: str, names: str, host: str) -> None:
    spec = EndpointSpec(network_id=net, endpoint_id=eid, address=IPNetwork(address), options={NAMES_OPTION: names})
    store.put(records.endpoint_key(net, eid), EndpointRecord(spec=spec, mac="", sandbox="", host=host).encode())


def setup(tmp_path: Path) -> tuple[MemoryStore, StateStore, str]:
    store = MemoryStore()
    store.put(records.network_key(OV), NetworkRecord(driver=MULTI_HOST_DRIVER, spec=NetworkSpec(network_id=OV),
                                                     host="h1").encode())
    store.put(records.network_key(BR), NetworkRecord(driver="cnmkit-bridge", spec=NetworkSpec(network_id=BR),
                                                     host="h2").encode())
    endpoint(store, OV, "e1", "10.9.0.2/24", "web,web", "h1")            # the local container's own
    endpoint(store, OV, "e9", "10.9.0.7/24", "db,db-host,store", "h2")   # another host's, with an alias
    endpoint(store, BR, "e7", "10.8.0.9/24", "other,other", "h2")        # a bridge network's: not a peer
    state = StateStore(str(tmp_path / "state"))
    cid = "c" * 64
    state.create(ContainerConfig(id=cid, name="web", command=["sleep"], hostname="web"))
    state.save_state(cid, ContainerState(status=STATUS_RUNNING, attachments=[
        {"network_id": OV, "endpoint_id": "e1", "address": "10.9.0.2/24", "network_name": "ov"},
        {"network_id": BR, "endpoint_id": "e2", "address": "10.8.0.2/24", "network_name": "br"}]))
    return store, state, cid


def test_other_hosts_endpoints_are_written_and_removed_and_the_own_one_is_not_a_peer(tmp_path: Path) -> None:
    store, state, cid = setup(tmp_path)
    peers = RemotePeerNames(store, str(tmp_path / "state"))
    assert peers.refresh() == [cid]
    text = Path(state.path(cid, "hosts")).read_text()
    assert "10.9.0.7\tdb db-host store" in text and "other" not in text
    assert [line for line in text.splitlines() if line.startswith("10.9.0.2\t")] == ["10.9.0.2\tweb"]
    assert peers.refresh() == []                                         # nothing changed: no write
    store.delete(records.endpoint_key(OV, "e9"))
    assert peers.refresh() == [cid]
    assert "db" not in Path(state.path(cid, "hosts")).read_text()


def test_a_host_without_runtime_containers_writes_nothing_and_makes_no_directory(tmp_path: Path) -> None:
    peers = RemotePeerNames(MemoryStore(), str(tmp_path / "daemon-state"))
    assert peers.refresh() == []
    assert not (tmp_path / "daemon-state").exists()


def test_the_thread_rewrites_after_changed(tmp_path: Path) -> None:
    store, state, cid = setup(tmp_path)
    peers = RemotePeerNames(store, str(tmp_path / "state"))
    peers.start()
    try:
        peers.changed()
        assert peers.wait_rewrites(1, timeout=60.0)
    finally:
        peers.stop()
    assert "10.9.0.7\tdb" in Path(state.path(cid, "hosts")).read_text()
