"""Deferred veth deletion in a real daemon (issue 11 item 1), read back with ``ip -j link``.

DeleteEndpoint answers once the host end is marked (alias ``cnmkit:doomed:<id>``, netdev group
DOOMED_GROUP); the background reaper deletes the marked links later, in batches. The test hook
``CNMKIT_TEST_HOLD_REAPER=1`` holds the reaper, so the daemon can be SIGKILLed exactly "between
the answer and the deletion": the restarted daemon's start-up reconcile must remove every marked
link, and nothing else. A fast re-create of an endpoint with the same id must not collide with
its doomed predecessor. A SIGTERM'd daemon deletes what is marked before it exits.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client.engine import Engine
from drivers import naming
from tests.conftest import ip_json
from tests.kernel.test_daemon_process import HostDaemon

SANDBOX = "/var/run/docker/netns/cnmkit-test-none"          # dockerd-style Join: never opened


@pytest.fixture
def host(netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HostDaemon]:
    monkeypatch.setenv("CNMKIT_TEST_HOLD_REAPER", "1")
    daemon = HostDaemon(netns, tmp_path)
    daemon.start("--reconcile-interval", "0")
    yield daemon
    if daemon.proc is not None:
        daemon.stop(signal.SIGKILL)


def restart_reaping(host: HostDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL "between the answer and the deletion", then a daemon whose reaper is not held;
    its start-up pass runs before the sockets appear."""
    assert host.stop(signal.SIGKILL) != 0
    monkeypatch.delenv("CNMKIT_TEST_HOLD_REAPER")
    host.start("--reconcile-interval", "0")


def settled(host: HostDaemon) -> bool:
    return host.cli("reconcile").stdout.strip() == "nothing to do: the kernel matches the store"


def links(netns: str) -> dict[str, dict]:
    return {link["ifname"]: link for link in ip_json("link", "show", netns=netns)}


def endpoint(engine: Engine, nid: str, eid: str, address: str) -> None:
    """CreateEndpoint + Join of a chosen id, as dockerd sends them."""
    bridge = engine.driver("bridge")
    ref = {"NetworkID": nid, "EndpointID": eid}
    bridge.call("NetworkDriver.CreateEndpoint", {**ref, "Interface": {"Address": address, "AddressIPv6": "",
                                                                      "MacAddress": ""}, "Options": {}})
    bridge.call("NetworkDriver.Join", {**ref, "SandboxKey": SANDBOX, "Options": {}})


def remove(engine: Engine, nid: str, eid: str) -> None:
    ref = {"NetworkID": nid, "EndpointID": eid}
    engine.driver("bridge").call("NetworkDriver.Leave", ref)
    engine.driver("bridge").call("NetworkDriver.DeleteEndpoint", ref)


def test_sigkill_before_the_deletion_leaves_marked_links_that_the_restart_removes(
        host: HostDaemon, netns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(str(host.plugins))
    try:
        nid = engine.create_network("doom", subnets=["10.96.0.0/24"])
        eids = [f"{i:x}" * 64 for i in range(10, 14)]
        for i, eid in enumerate(eids):
            endpoint(engine, nid, eid, f"10.96.0.{10 + i}/24")
        keep = eids[-1]
        for eid in eids[:-1]:
            remove(engine, nid, eid)
        now = links(netns)
        for eid in eids[:-1]:                          # answered, marked, not deleted
            link = now[naming.host_veth_name(eid)]
            assert link["ifalias"] == naming.doomed_alias(eid)
            assert int(link["group"]) == naming.DOOMED_GROUP
            assert naming.container_veth_name(eid) in now            # the pair is still whole
        assert now[naming.host_veth_name(keep)]["ifalias"] == naming.endpoint_alias(keep)
        eps = engine.inspect_network(nid)["EndpointList"]
        assert [e["EndpointID"] for e in eps] == [keep]             # the records are gone already
        unrelated = {name for name in now if not name.startswith(("cnv", "cni"))}

        restart_reaping(host, monkeypatch)

        after = links(netns)
        for eid in eids[:-1]:
            assert naming.host_veth_name(eid) not in after and naming.container_veth_name(eid) not in after
        assert after[naming.host_veth_name(keep)]["ifalias"] == naming.endpoint_alias(keep)
        assert {name for name in after if not name.startswith(("cnv", "cni"))} == unrelated
        log = (host.state.parent / "daemon.log").read_text()
        for eid in eids[:-1]:
            assert f"delete link {naming.host_veth_name(eid)} (endpoint {eid[:12]} was deleted" in log
        assert settled(host)
    finally:
        engine.close()


def test_recreating_an_endpoint_id_before_the_reaper_ran_does_not_collide(host: HostDaemon, netns: str) -> None:
    engine = Engine(str(host.plugins))
    try:
        nid = engine.create_network("again", subnets=["10.95.0.0/24"])
        eid = "ab" * 32
        name = naming.host_veth_name(eid)
        endpoint(engine, nid, eid, "10.95.0.10/24")
        first = links(netns)[name]["ifindex"]
        remove(engine, nid, eid)
        assert links(netns)[name]["ifalias"] == naming.doomed_alias(eid)
        endpoint(engine, nid, eid, "10.95.0.10/24")   # the same id again, the reaper held
        link = links(netns)[name]
        assert link["ifalias"] == naming.endpoint_alias(eid) and link["ifindex"] != first
        assert link["master"] == f"cnm-{nid[:11]}" and str(link.get("group")) != str(naming.DOOMED_GROUP)
        remove(engine, nid, eid)
        assert engine.driver("bridge").call("NetworkDriver.DeleteNetwork", {"NetworkID": nid}) is not None
    finally:
        engine.close()


def test_sigterm_deletes_what_is_marked_before_the_daemon_exits(netns: str, tmp_path: Path) -> None:
    daemon = HostDaemon(netns, tmp_path)
    daemon.start("--reconcile-interval", "0")
    engine = Engine(str(daemon.plugins))
    try:
        nid = engine.create_network("term", subnets=["10.94.0.0/24"])
        eids = [f"{i:x}" * 64 for i in range(10, 15)]
        for i, eid in enumerate(eids):
            endpoint(engine, nid, eid, f"10.94.0.{10 + i}/24")
        for eid in eids:
            remove(engine, nid, eid)
    finally:
        engine.close()
        assert daemon.stop(signal.SIGTERM) == 0
    left = [name for name, link in links(netns).items()
            if name.startswith(("cnv", "cni")) or str(link.get("ifalias", "")).startswith("cnmkit:doomed:")]
    assert left == []


def delete_network(engine: Engine, nid: str) -> None:
    engine.driver("bridge").call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})


def test_deleted_network_bridge_is_marked_down_and_a_restart_removes_it(
        host: HostDaemon, netns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(str(host.plugins))
    try:
        gone = engine.create_network("brdoom", subnets=["10.93.0.0/24"])
        keep = engine.create_network("brkeep", subnets=["10.92.0.0/24"])
        delete_network(engine, gone)
        bridge = links(netns)[naming.bridge_name(gone)]              # answered, marked, not deleted
        assert bridge["ifalias"] == naming.doomed_alias(gone)
        assert int(bridge["group"]) == naming.DOOMED_GROUP
        assert "UP" not in bridge["flags"]                           # down: it routes nothing
        assert not [r for r in ip_json("route", "show", netns=netns) if r.get("dev") == naming.bridge_name(gone)]
        assert engine.driver("bridge").call("NetworkDriver.DeleteNetwork", {"NetworkID": gone}) is not None
        unrelated = {name for name in links(netns) if name != naming.bridge_name(gone)}

        restart_reaping(host, monkeypatch)

        after = links(netns)
        assert naming.bridge_name(gone) not in after
        assert set(after) == unrelated
        assert after[naming.bridge_name(keep)]["ifalias"] == naming.network_alias(keep)
        log = (host.state.parent / "daemon.log").read_text()
        assert f"delete link {naming.bridge_name(gone)} (network {gone[:12]} was deleted" in log
        assert settled(host)
    finally:
        engine.close()


def test_recreating_a_network_id_before_the_reaper_ran_does_not_collide(host: HostDaemon, netns: str) -> None:
    """The same network id (so the same bridge name) again while its doomed bridge awaits the reaper."""
    engine = Engine(str(host.plugins))
    bridge = engine.driver("bridge")
    nid = "cd" * 32
    create = {"NetworkID": nid, "Options": {"com.docker.network.generic": {}},
              "IPv4Data": [{"AddressSpace": "", "Pool": "10.91.0.0/24", "Gateway": "10.91.0.1/24"}],
              "IPv6Data": []}
    try:
        bridge.call("NetworkDriver.CreateNetwork", create)
        first = links(netns)[naming.bridge_name(nid)]["ifindex"]
        delete_network(engine, nid)
        assert links(netns)[naming.bridge_name(nid)]["ifalias"] == naming.doomed_alias(nid)
        bridge.call("NetworkDriver.CreateNetwork", create)
        link = links(netns)[naming.bridge_name(nid)]
        assert link["ifalias"] == naming.network_alias(nid) and link["ifindex"] != first
        assert "UP" in link["flags"] and str(link.get("group")) != str(naming.DOOMED_GROUP)
        addrs = {a["local"] for i in ip_json("addr", "show", "dev", naming.bridge_name(nid), netns=netns)
                 for a in i["addr_info"]}
        assert "10.91.0.1" in addrs
        delete_network(engine, nid)
    finally:
        engine.close()


def test_reconciler_recreates_a_bridge_doomed_by_a_delete_whose_record_stayed(host: HostDaemon, netns: str) -> None:
    """A crash between the mark and the record's removal: the record wins, a fresh bridge is made."""
    engine = Engine(str(host.plugins))
    try:
        nid = engine.create_network("halfgone", subnets=["10.90.0.0/24"])
        name = naming.bridge_name(nid)
        subprocess.run(["ip", "-n", netns, "link", "set", name, "down", "alias", naming.doomed_alias(nid),
                        "group", str(naming.DOOMED_GROUP)], check=True)
        out = host.cli("reconcile").stdout
        assert f"delete doomed bridge {name}, network {nid[:12]} is still on record" in out
        link = links(netns)[name]
        assert link["ifalias"] == naming.network_alias(nid) and "UP" in link["flags"]
        assert str(link.get("group")) != str(naming.DOOMED_GROUP)
        assert settled(host)
        delete_network(engine, nid)
    finally:
        engine.close()


def test_leave_dooms_the_pair_so_it_goes_while_still_in_the_sandbox(
        host: HostDaemon, netns: str, netns_factory: Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> None:
    """dockerd moves the container end into its sandbox after Join and, after Leave, would move it
    back only for DeleteEndpoint to delete it: Leave hands the pair to the reaper instead. Held
    reaper, SIGKILL: the restart's reconcile deletes the pair, the end in the sandbox with it."""
    sandbox = netns_factory("sb")
    engine = Engine(str(host.plugins))
    eid = "ef" * 32
    try:
        nid = engine.create_network("leave", subnets=["10.89.0.0/24"])
        endpoint(engine, nid, eid, "10.89.0.10/24")
        subprocess.run(["ip", "-n", netns, "link", "set", naming.container_veth_name(eid), "netns", sandbox],
                       check=True)                       # what dockerd's prestart hook does
        engine.driver("bridge").call("NetworkDriver.Leave", {"NetworkID": nid, "EndpointID": eid})
        link = links(netns)[naming.host_veth_name(eid)]
        assert link["ifalias"] == naming.doomed_alias(eid) and int(link["group"]) == naming.DOOMED_GROUP
        assert naming.container_veth_name(eid) in links(sandbox)   # held: nothing deleted yet
        restart_reaping(host, monkeypatch)
        assert naming.host_veth_name(eid) not in links(netns)
        assert naming.container_veth_name(eid) not in links(sandbox)
        # The endpoint is still on record (no DeleteEndpoint came), left, so no pair is re-made;
        # the DeleteEndpoint that follows finds nothing to do.
        engine.driver("bridge").call("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
        assert settled(host)
    finally:
        engine.close()
