"""Two real daemons on one store, each in its own throwaway "host" namespace (issue 7, items 4-5).

The store is the only thing they share: a SQLite file both processes open, or a real 3-member
etcd cluster (running in host A's namespace on an address host B reaches through a veth pair
the test makes between the two namespaces). Requests come through their sockets, as from
two dockerds. Proven here:

- one /28 in the global address space, 16 clients (8 per daemon) allocating at once: exhausted
  exactly (14 addresses, each once), then a clear "no free address" error;
- ReleasePool on one host leaves the other's addresses alone;
- two daemons racing to create overlapping global networks: exactly one wins, every round;
- a SIGKILLed daemon leaves the other's host list once its lease expires, keeps its addresses
  while within the grace period, and loses them after it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.transport import PluginError, PluginTransport
from tests.conftest import ip_json
from tests.etcd_cluster import EtcdCluster, require_etcd
from tests.kernel.test_daemon_process import HostDaemon

GLOBAL = "cnmkit-global"
SAFETY = 120.0  # seconds before a hang becomes a failure; nothing is timed against it
VETH_A, VETH_B = "169.254.77.1", "169.254.77.2"


@dataclass
class Host:
    name: str
    daemon: HostDaemon
    args: list[str]

    def ipam(self) -> PluginTransport:
        return PluginTransport(str(self.daemon.plugins / "cnmkit.sock"))

    def bridge(self) -> PluginTransport:
        return PluginTransport(str(self.daemon.plugins / "cnmkit-bridge.sock"))

    def start(self, *extra: str) -> None:
        self.daemon.start(*self.args, *extra)

    def host_ids(self) -> list[str]:
        return [h["HostID"] for h in self.ipam().call("Cnmkit.HostList", {})["Hosts"]]


@pytest.fixture(params=["sqlite", "etcd"])
def hosts(request: pytest.FixtureRequest, netns_factory: Callable[[str], str], tmp_path: Path
          ) -> Iterator[tuple[Host, Host]]:
    ns_a, ns_b = netns_factory("a"), netns_factory("b")
    # A link between the two test hosts, inside the namespaces (it goes with them).
    tag = f"cnmv{os.getpid() % 100000}"
    subprocess.run(["ip", "-n", ns_a, "link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b",
                    "netns", ns_b], check=True)
    for ns, dev, addr in ((ns_a, f"{tag}a", VETH_A), (ns_b, f"{tag}b", VETH_B)):
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    cluster: EtcdCluster | None = None
    if request.param == "etcd":
        require_etcd()
        cluster = EtcdCluster(netns=ns_a, host=VETH_A)
        cluster.start()
        store = cluster.url
    else:
        store = f"sqlite://{tmp_path}/shared/state.db"
    made: list[Host] = []
    for name, ns, addr in (("hA", ns_a, VETH_A), ("hB", ns_b, VETH_B)):
        (tmp_path / name).mkdir()
        made.append(Host(name, HostDaemon(ns, tmp_path / name),
                         ["--store", store, "--host-id", name, "--advertise", addr, "--host-ttl", "2",
                          "--reconcile-interval", "0"]))
    try:
        for host in made:
            host.start()
        yield made[0], made[1]
    finally:
        for host in made:
            if host.daemon.proc is not None:
                host.daemon.stop(signal.SIGKILL)
        if cluster is not None:
            cluster.stop()


def request_pool(host: Host, cidr: str) -> str:
    return str(host.ipam().call("IpamDriver.RequestPool", {"AddressSpace": GLOBAL, "Pool": cidr,
                                                           "Options": {}, "V6": False})["PoolID"])


def fill(hosts: tuple[Host, Host], pool_id: str, clients: int = 16) -> dict[str, list[str]]:
    """``clients`` threads, alternating between the daemons, allocate until the pool says no."""
    got: dict[str, list[str]] = {h.name: [] for h in hosts}
    endings: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(host: Host) -> None:
        ipam = host.ipam()
        start.wait()
        while True:
            try:
                addr = ipam.call("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": {}})
            except PluginError as exc:
                with lock:
                    endings.append(str(exc))
                return
            with lock:
                got[host.name].append(str(addr["Address"]))

    threads = [threading.Thread(target=client, args=(hosts[i % 2],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(endings) == clients and all("no free address" in e for e in endings), endings
    return got


def test_two_daemons_exhaust_one_global_pool_exactly_and_release_only_their_own(
        hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    pool_id = request_pool(a, "10.66.0.0/28")
    assert request_pool(b, "10.66.0.0/28") == pool_id  # one pool, a reference per host
    # One address each first: under load the scheduler may let one daemon's clients take the
    # whole pool, and the release checks below need both hosts to hold some.
    first = {h.name: str(h.ipam().call("IpamDriver.RequestAddress",
                                       {"PoolID": pool_id, "Address": "", "Options": {}})["Address"])
             for h in hosts}
    got = fill(hosts, pool_id)
    for name, addr in first.items():
        got[name].append(addr)
    everything = got["hA"] + got["hB"]
    assert len(everything) == len(set(everything)) == 14, got  # /28: 14 usable, each handed out once
    # Releasing A's reference releases A's addresses only: B can now get exactly those, not its own.
    a.ipam().call("IpamDriver.ReleasePool", {"PoolID": pool_id})
    for addr in got["hB"]:
        with pytest.raises(PluginError, match="already allocated"):
            b.ipam().call("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": addr.split("/")[0],
                                                        "Options": {}})
    regained = fill((b, b), pool_id, clients=4)["hB"]
    assert sorted(regained) == sorted(got["hA"])
    # A's ReleaseAddress of one of B's addresses (A no longer holds the pool) changes nothing.
    a.ipam().call("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": got["hB"][0].split("/")[0]})
    with pytest.raises(PluginError, match="no free address"):
        b.ipam().call("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": {}})


def race_create(hosts: tuple[Host, Host], bodies: dict[str, dict]) -> dict[str, str]:
    """Both daemons' CreateNetwork released at once; each one's "ok" or error text."""
    outcome: dict[str, str] = {}
    start = threading.Barrier(len(hosts))

    def create(host: Host) -> None:
        bridge = host.bridge()
        start.wait()
        try:
            bridge.call("NetworkDriver.CreateNetwork", bodies[host.name])
            outcome[host.name] = "ok"
        except PluginError as exc:
            outcome[host.name] = str(exc)

    threads = [threading.Thread(target=create, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcome


def test_two_daemons_racing_overlapping_networks_exactly_one_wins(hosts: tuple[Host, Host]) -> None:
    for rnd in range(6):
        bodies = {h.name: {"NetworkID": os.urandom(32).hex(), "Options": {"com.docker.network.generic": {}},
                           "IPv4Data": [{"AddressSpace": GLOBAL, "Pool": f"10.67.{rnd}.0/{24 + i}",
                                         "Gateway": f"10.67.{rnd}.1/{24 + i}"}], "IPv6Data": []}
                  for i, h in enumerate(hosts)}
        outcome = race_create(hosts, bodies)
        winners = [name for name, result in outcome.items() if result == "ok"]
        assert len(winners) == 1, outcome
        loser = next(h for h in hosts if h.name not in winners)
        assert "overlaps" in outcome[loser.name]
        winner = next(h for h in hosts if h.name in winners)
        aliases = {str(link.get("ifalias", "")) for link in ip_json("link", "show", netns=winner.daemon.netns)}
        assert f"cnmkit:net:{bodies[winner.name]['NetworkID']}" in aliases  # the winner's bridge is real
        aliases = {str(link.get("ifalias", "")) for link in ip_json("link", "show", netns=loser.daemon.netns)}
        assert f"cnmkit:net:{bodies[loser.name]['NetworkID']}" not in aliases
        winner.bridge().call("NetworkDriver.DeleteNetwork", {"NetworkID": bodies[winner.name]["NetworkID"]})


def test_a_killed_daemon_leaves_the_host_list_and_loses_its_addresses_only_after_the_grace(
        hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    pool_id = request_pool(a, "10.68.0.0/28")
    request_pool(b, "10.68.0.0/28")
    theirs = [str(b.ipam().call("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "",
                                                              "Options": {}})["Address"]) for _ in range(3)]
    assert a.host_ids() == ["hA", "hB"]
    b.daemon.stop(signal.SIGKILL)  # no goodbye: its lease just stops being refreshed
    deadline = time.monotonic() + SAFETY
    while "hB" in a.host_ids():
        assert time.monotonic() < deadline, "hB never left hA's host list"
        time.sleep(0.1)
    assert a.host_ids() == ["hA"]
    # Gone, but within the grace period (the default, 10 minutes): its addresses are still its own.
    for addr in theirs:
        with pytest.raises(PluginError, match="already allocated"):
            a.ipam().call("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": addr.split("/")[0],
                                                        "Options": {}})
    # A restarted with a short grace finds hB absent, waits that long, then reclaims.
    a.daemon.stop(signal.SIGTERM)
    a.start("--host-grace", "1")
    deadline = time.monotonic() + SAFETY
    reclaimed: list[str] = []
    while len(reclaimed) < len(theirs):
        assert time.monotonic() < deadline, "hB's addresses were never reclaimed"
        try:
            reclaimed.append(str(a.ipam().call("IpamDriver.RequestAddress", {
                "PoolID": pool_id, "Address": theirs[len(reclaimed)].split("/")[0], "Options": {}})["Address"]))
        except PluginError as exc:
            assert "already allocated" in str(exc)
            time.sleep(0.2)
    assert reclaimed == theirs
    pools = a.ipam().call("Cnmkit.PoolList", {})["Pools"]
    assert [p["PoolID"] for p in pools] == [pool_id]
    listed = a.daemon.cli("--format", "json", "host", "ls")
    assert listed.returncode == 0, listed.stderr
    assert [(h["HostID"], h["Self"]) for h in json.loads(listed.stdout)] == [("hA", True)]


def rules_of(host: Host, network_id: str) -> list[str]:
    """The host's iptables rules marked with the network's id (``iptables -S``, every table)."""
    lines: list[str] = []
    for table in ("filter", "nat"):
        out = subprocess.run(["ip", "netns", "exec", host.daemon.netns, "iptables", "-w", "-t", table, "-S"],
                             capture_output=True, text=True, check=True).stdout
        lines += [line for line in out.splitlines() if network_id in line]
    return lines


def test_a_network_removed_from_another_host_goes_from_its_owner_at_once(hosts: tuple[Host, Host]) -> None:
    """``cnmkit network rm`` on hB of hA's network: hA's bridge and rules go on the store's watch
    event, not at a periodic pass (the daemons run with ``--reconcile-interval 0``: none)."""
    a, b = hosts
    made = a.daemon.cli("network", "create", "--subnet", "10.69.0.0/24", "farnet")
    assert made.returncode == 0, made.stderr
    (net,) = json.loads(a.daemon.cli("network", "inspect", "farnet").stdout)
    assert [br["ifalias"] for br in a.daemon.bridges()] == [f"cnmkit:net:{net['Id']}"]
    assert rules_of(a, net["Id"]), "control: the owner has the network's rules"
    removed = b.daemon.cli("network", "rm", "farnet")
    assert removed.returncode == 0, removed.stderr
    deadline = time.monotonic() + SAFETY
    while a.daemon.bridges() or rules_of(a, net["Id"]):
        assert time.monotonic() < deadline, f"hA kept the removed network: {a.daemon.bridges()}"
        time.sleep(0.02)
