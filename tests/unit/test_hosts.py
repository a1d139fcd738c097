"""Host identity and liveness (agent/hosts.py) on memory and SQLite stores.

Two ``HostLiveness`` objects on one store stand for two daemons. A daemon "dies" by no longer
refreshing its lease (what SIGKILL amounts to for the store); the kernel tier does it for real.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.hosts import HOSTS, HostLiveness, check_advertise, check_host_id, default_advertise, default_host_id
from ipam.service import IpamService
from store.base import Store
from store.memory import MemoryStore
from store.sqlite import SQLiteStore

SAFETY = 60.0  # seconds before a hang becomes a failure; nothing is timed


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "state.db"))
    yield s
    s.close()


def wait_for(live: HostLiveness, cond: str, want: bool) -> None:
    deadline = time.monotonic() + SAFETY
    with live.changed:
        while (cond in {h["HostID"] for h in live.hosts_cached()}) != want:
            assert time.monotonic() < deadline, f"host {cond} {'never came' if want else 'never left'}"
            live.store.expire_leases()
            live.changed.wait(0.1)


def test_identity_checks(tmp_path: Path) -> None:
    assert check_host_id("node-1.example") == "node-1.example"
    for bad in ["", "-x", "a/b", "a b", "x" * 64, "é"]:
        with pytest.raises(ValueError, match="--host-id"):
            check_host_id(bad)
    with pytest.raises(ValueError, match="--advertise"):
        check_advertise("10.0.0.300")
    (tmp_path / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    assert default_host_id(str(tmp_path / "machine-id")) == "0123456789abcdef0123456789abcdef"
    assert default_host_id(str(tmp_path / "absent"))  # the hostname
    (tmp_path / "route").write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
                                    "lo\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\n")
    assert default_advertise(str(tmp_path / "route")) == ""  # no default route: nothing to guess
    (tmp_path / "route").write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
                                    "lo\t00000000\t0100007F\t0003\t0\t0\t0\t00000000\n")
    assert default_advertise(str(tmp_path / "route")) == "127.0.0.1"  # lo's address, read by ioctl


def test_a_host_that_stops_refreshing_leaves_and_its_addresses_go_after_the_grace(store: Store) -> None:
    ipam1, ipam2 = IpamService(store, host_id="h1"), IpamService(store, host_id="h2")
    h1 = HostLiveness(store, "h1", "192.0.2.1", ttl=1, grace=0.0, reclaim=ipam1.reclaim_host,
                      holders=ipam1.hosts_holding)
    h2 = HostLiveness(store, "h2", "192.0.2.2", ttl=1)
    pid = ipam1.request_pool("cnmkit-global", "10.80.0.0/28", "", None, False)[0]
    ipam2.request_pool("cnmkit-global", "10.80.0.0/28", "", None, False)
    theirs = ipam2.request_address(pid, "", None)[0]
    h1.register()
    h2.register()
    h1.start_watch()
    try:
        wait_for(h1, "h2", True)
        assert [h["HostID"] for h in h1.hosts()] == ["h1", "h2"]
        # h2 "dies": no more keepalives. h1 keeps its own lease alive while it waits.
        deadline = time.monotonic() + SAFETY
        while "h2" in {h["HostID"] for h in h1.hosts_cached()}:
            assert time.monotonic() < deadline, "h2 never left"
            h1.refresh()
            with h1.changed:
                h1.changed.wait(0.2)
        assert store.get(HOSTS + "h1") is not None and store.get(HOSTS + "h2") is None
        assert h1.tick() == ["h2"]  # grace 0: reclaimed at the next tick
        assert ipam1.pool_usage(pid)["allocated"] == 0
        assert ipam1.request_address(pid, theirs.split("/")[0], None)[0] == theirs
    finally:
        h1.stop_watch()


def test_a_host_back_within_the_grace_keeps_its_addresses(store: Store) -> None:
    ipam1, ipam2 = IpamService(store, host_id="h1"), IpamService(store, host_id="h2")
    h1 = HostLiveness(store, "h1", "192.0.2.1", ttl=30, grace=3600.0, reclaim=ipam1.reclaim_host,
                      holders=ipam1.hosts_holding)
    h2 = HostLiveness(store, "h2", "192.0.2.2", ttl=30)
    pid = ipam2.request_pool("cnmkit-global", "10.81.0.0/28", "", None, False)[0]
    ipam2.request_address(pid, "", None)
    h1.register()
    h2.register()
    h1.start_watch()
    try:
        wait_for(h1, "h2", True)
        store.revoke(h2.lease)  # gone (as after a clean stop) ...
        wait_for(h1, "h2", False)
        assert h1.tick() == []  # ... but not for the grace period yet
        h2.register()  # ... and back
        wait_for(h1, "h2", True)
        h1.grace = 0.0
        assert h1.tick() == []  # it is alive: nothing is ever reclaimed from it
        assert ipam1.pool_usage(pid)["allocated"] == 1
    finally:
        h1.stop_watch()


def test_a_host_found_absent_at_start_is_reclaimed_after_the_grace(store: Store) -> None:
    ipam1, ipam2 = IpamService(store, host_id="h1"), IpamService(store, host_id="h2")
    local = ipam2.request_pool("cnmkit-local", "10.82.0.0/24", "", None, False)[0]
    ipam2.request_address(local, "", None)
    h1 = HostLiveness(store, "h1", "", ttl=30, grace=0.0, reclaim=ipam1.reclaim_host,
                      holders=ipam1.hosts_holding)
    h1.register()
    h1.start_watch()
    try:
        wait_for(h1, "h1", True)
        assert h1.tick() == ["h2"]
        assert ipam1.hosts_holding() == set()
        assert ipam2.list_pools() == []
    finally:
        h1.stop_watch()
