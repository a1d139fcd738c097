"""Crash consistency, proven (issue 7 item 2): SIGKILL the real daemon at random moments, many times.

16 client threads run network and endpoint lifecycles through the sockets, as dockerd would
(RequestPool, gateway, CreateNetwork; RequestAddress, CreateEndpoint, Join; and back). The daemon,
a real process in a throwaway host netns, is killed with SIGKILL at a random moment; restarted (its
reconcile pass runs before it serves), the host must show, every round:

- every operation the client saw succeed: its records and kernel objects exist;
- every operation in flight: complete (records and all kernel objects) or entirely gone;
- store and kernel agree: every network record has its bridge, gateway and rules, every joined
  endpoint record its veth on that bridge; every marked link and rule has a record;
- every address on record is held by IPAM, none by two endpoints;

then the client unwinds what was in flight (as dockerd does for a failed call). At the end every
object is deleted through the sockets, after which no pool, address, marked link or rule is left.
The seed is printed, so a failing sequence can be replayed (CNMKIT_CRASH_SEED).

It runs against both stores (item 2): the embedded SQLite file, read directly, and a real
3-member etcd cluster in the host namespace, read with ``etcdctl`` (an oracle independent of
our client).
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client.transport import DaemonUnavailable, PluginError, PluginTransport
from store.sqlite import SQLiteStore
from tests.conftest import in_netns, ip_json
from tests.etcd_cluster import ETCDCTL, EtcdCluster, require_etcd
from tests.kernel.test_daemon_process import HostDaemon

ROUNDS = 20
THREADS = 16
SANDBOX = "/var/run/docker/netns/cnmkit-crash-none"
SPACE = "LocalDefault"


@dataclass
class Ep:
    eid: str
    address: str                       # 10.x.y.n/24
    state: str = "uncertain"           # live | uncertain


@dataclass
class Net:
    nid: str
    subnet: str
    state: str = "uncertain"           # live | uncertain
    pool_id: str = ""
    eps: dict[str, Ep] = field(default_factory=dict)
    next_host: int = 10

    @property
    def gateway(self) -> str:
        return self.subnet.replace(".0/24", ".1/24")


class Client:
    """One worker's view: the networks it owns and what it saw succeed."""

    def __init__(self, index: int, plugins: Path, rng: random.Random) -> None:
        self.index, self.plugins, self.rng = index, plugins, rng
        self.nets: dict[str, Net] = {}
        self.next_subnet = 0
        self.errors: list[str] = []

    def tx(self) -> tuple[PluginTransport, PluginTransport]:
        return (PluginTransport(str(self.plugins / "cnmkit.sock"), 30),
                PluginTransport(str(self.plugins / "cnmkit-bridge.sock"), 30))

    def run(self, stop: threading.Event) -> None:
        """Lifecycles until the daemon goes away; an answered error is a finding."""
        ipam, bridge = self.tx()
        try:
            while not stop.is_set():
                self.step(ipam, bridge)
        except DaemonUnavailable:
            pass
        except PluginError as exc:
            self.errors.append(f"client {self.index}: {exc}")
        finally:
            ipam.close()
            bridge.close()

    def step(self, ipam: PluginTransport, bridge: PluginTransport) -> None:
        live = [n for n in self.nets.values() if n.state == "live"]
        choice = self.rng.random()
        if (not live or choice < 0.2) and self.next_subnet < 250 and len(self.nets) < 4:
            self.create_network(ipam, bridge)
        elif live and choice < 0.3 and not (net := self.rng.choice(live)).eps:
            self.delete_network(ipam, bridge, net)
        elif live:
            net = self.rng.choice(live)
            eps = [e for e in net.eps.values() if e.state == "live"]
            if eps and (choice < 0.6 or len(eps) >= 4):
                self.detach(ipam, bridge, net, self.rng.choice(eps))
            else:
                self.attach(ipam, bridge, net)

    def create_network(self, ipam: PluginTransport, bridge: PluginTransport) -> None:
        subnet = f"10.{100 + self.index}.{self.next_subnet}.0/24"
        self.next_subnet += 1
        net = Net(nid=os.urandom(32).hex(), subnet=subnet)
        self.nets[net.nid] = net
        net.pool_id = ipam.call("IpamDriver.RequestPool", {"AddressSpace": SPACE, "Pool": subnet,
                                                           "Options": {}})["PoolID"]
        ipam.call("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": net.gateway.split("/")[0],
                                                "Options": {"RequestAddressType": "com.docker.network.gateway"}})
        bridge.call("NetworkDriver.CreateNetwork", {
            "NetworkID": net.nid, "Options": {"com.docker.network.generic": {}},
            "IPv4Data": [{"AddressSpace": SPACE, "Pool": subnet, "Gateway": net.gateway}], "IPv6Data": []})
        net.state = "live"

    def delete_network(self, ipam: PluginTransport, bridge: PluginTransport, net: Net) -> None:
        net.state = "uncertain"
        bridge.call("NetworkDriver.DeleteNetwork", {"NetworkID": net.nid})
        ipam.call("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": net.gateway.split("/")[0]})
        ipam.call("IpamDriver.ReleasePool", {"PoolID": net.pool_id})
        del self.nets[net.nid]

    def attach(self, ipam: PluginTransport, bridge: PluginTransport, net: Net) -> None:
        ep = Ep(eid=os.urandom(32).hex(), address=net.subnet.replace(".0/24", f".{net.next_host}/24"))
        net.next_host += 1
        net.eps[ep.eid] = ep
        ipam.call("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": ep.address.split("/")[0],
                                                "Options": {}})
        ref = {"NetworkID": net.nid, "EndpointID": ep.eid}
        bridge.call("NetworkDriver.CreateEndpoint", {**ref, "Interface": {"Address": ep.address}, "Options": {}})
        bridge.call("NetworkDriver.Join", {**ref, "SandboxKey": SANDBOX, "Options": {}})
        ep.state = "live"

    def detach(self, ipam: PluginTransport, bridge: PluginTransport, net: Net, ep: Ep) -> None:
        ep.state = "uncertain"
        ref = {"NetworkID": net.nid, "EndpointID": ep.eid}
        bridge.call("NetworkDriver.Leave", ref)
        bridge.call("NetworkDriver.DeleteEndpoint", ref)
        ipam.call("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": ep.address.split("/")[0]})
        del net.eps[ep.eid]


def _tolerant(tx: PluginTransport, method: str, body: dict) -> None:
    """An unwinding step of an operation that may or may not have happened: 'not held' is fine."""
    try:
        tx.call(method, body)
    except PluginError:
        pass


@dataclass
class Seen:
    """One consistent look at the host: store records (read directly) and kernel objects (ip, iptables)."""

    networks: dict[str, dict]
    endpoints: dict[str, dict]              # endpoint id -> record (with "net")
    addresses: dict[str, set[str]]          # pool id -> addresses held
    links: dict[str, dict]
    addrs: dict[str, set[str]]
    marks: set[str]                         # network ids on marked rules


Records = Callable[[str], list[tuple[str, bytes]]]     # prefix -> (key, value) in key order


def sqlite_records(path: Path) -> Records:
    def read(prefix: str) -> list[tuple[str, bytes]]:
        store = SQLiteStore(str(path))
        try:
            return [(kv.key, kv.value) for kv in store.list(prefix)[0]]
        finally:
            store.close()
    return read


def etcd_records(cluster: EtcdCluster) -> Records:
    def read(prefix: str) -> list[tuple[str, bytes]]:
        out = subprocess.run([*cluster.wrap, ETCDCTL or "etcdctl", "--endpoints", ",".join(cluster.endpoints),
                              "--command-timeout", "10s", "get", "--prefix", prefix, "-w", "json"],
                             capture_output=True, text=True, check=True, env={**os.environ, "ETCDCTL_API": "3"})
        kvs = json.loads(out.stdout).get("kvs") or []
        return sorted((base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", ""))) for kv in kvs)
    return read


class CrashHost(HostDaemon):
    """The daemon, the options that name its store, and how the test reads that store."""

    def __init__(self, netns: str, tmp: Path, store_args: tuple[str, ...], records: Records | None = None) -> None:
        super().__init__(netns, tmp)
        self.store_args = store_args
        self.records = records or sqlite_records(self.state / "state.db")

    def start_daemon(self) -> None:
        self.start("--reconcile-interval", "0", *self.store_args)


def look(host: CrashHost) -> Seen:
    read = host.records
    nets = {key.split("/", 1)[1]: json.loads(value) for key, value in read("networks/")}
    eps = {}
    for key, value in read("endpoints/"):
        _, nid, eid = key.split("/")
        eps[eid] = {**json.loads(value), "net": nid}
    held: dict[str, set[str]] = {}
    for key, _ in read("ipam/addrs/"):
        pool_id, _, address = key[len("ipam/addrs/"):].rpartition("/")
        held.setdefault(pool_id, set()).add(address)
    links = {link["ifname"]: link for link in ip_json("link", "show", netns=host.netns)}
    addrs = {a["ifname"]: {f"{i['local']}/{i['prefixlen']}" for i in a.get("addr_info", [])}
             for a in ip_json("addr", "show", netns=host.netns)}
    rules = in_netns(host.netns, "iptables", "-S").stdout + in_netns(host.netns, "iptables", "-t", "nat", "-S").stdout
    marks = {word.split(":")[1].rstrip('"') for word in rules.split() if word.startswith('"cnmkit:')}
    return Seen(nets, eps, held, links, addrs, marks)


def check_agreement(seen: Seen) -> list[str]:
    """Store and kernel agree, in both directions, and IPAM holds every address on record once."""
    bad: list[str] = []
    for nid, rec in seen.networks.items():
        bridge = f"cnm-{nid[:11]}"
        link = seen.links.get(bridge)
        if link is None or link.get("ifalias") != f"cnmkit:net:{nid}":
            bad.append(f"network {nid[:12]}: bridge {bridge} missing or unmarked")
        gateway = rec["Spec"]["IPv4"][0]["Gateway"]
        if gateway not in seen.addrs.get(bridge, set()):
            bad.append(f"network {nid[:12]}: gateway {gateway} missing")
        if nid not in seen.marks:
            bad.append(f"network {nid[:12]}: no rules")
    owners: dict[str, str] = {}
    for eid, rec in seen.endpoints.items():
        address = rec["Spec"]["Address"].split("/")[0]
        if address in owners:
            bad.append(f"address {address} on endpoints {owners[address][:12]} and {eid[:12]}")
        owners[address] = eid
        if not any(address in held for held in seen.addresses.values()):
            bad.append(f"endpoint {eid[:12]}: address {address} not held by IPAM")
        if rec["net"] not in seen.networks:
            bad.append(f"endpoint {eid[:12]}: network {rec['net'][:12]} not on record")
        link = seen.links.get(f"cnv{eid[:12]}")
        if rec.get("Sandbox") and (link is None or link.get("ifalias") != f"cnmkit:ep:{eid}"
                                   or link.get("master") != f"cnm-{rec['net'][:11]}"):
            bad.append(f"joined endpoint {eid[:12]}: veth missing, unmarked or detached ({link})")
    for name, link in seen.links.items():
        alias = str(link.get("ifalias", ""))
        kind, _, owner = alias.removeprefix("cnmkit:").partition(":")
        if alias.startswith("cnmkit:") and owner not in (seen.networks if kind == "net" else seen.endpoints):
            bad.append(f"link {name} ({alias}) has no record")
        if name.startswith(("cnv", "cnm-")) and not alias:
            bad.append(f"link {name} has our name and no mark")
    bad += [f"rules marked {m[:12]} have no network record" for m in seen.marks if m not in seen.networks]
    return bad


def check_clients(seen: Seen, clients: list[Client]) -> list[str]:
    """What succeeded exists; what was in flight is complete or gone (agreement covers 'complete')."""
    bad: list[str] = []
    for client in clients:
        for net in client.nets.values():
            if net.state == "live" and net.nid not in seen.networks:
                bad.append(f"network {net.nid[:12]} created (the client saw it) but not on record")
            if net.nid not in seen.networks and (f"cnm-{net.nid[:11]}" in seen.links or net.nid in seen.marks):
                bad.append(f"network {net.nid[:12]}: not on record but kernel objects remain")
            for ep in net.eps.values():
                if ep.state == "live" and (ep.eid not in seen.endpoints or not seen.endpoints[ep.eid].get("Sandbox")):
                    bad.append(f"endpoint {ep.eid[:12]} joined (the client saw it) but not on record as joined")
                if ep.eid not in seen.endpoints and f"cnv{ep.eid[:12]}" in seen.links:
                    bad.append(f"endpoint {ep.eid[:12]}: not on record but its veth remains")
    return bad


def settle(client: Client, seen: Seen) -> None:
    """Unwind what was in flight, as dockerd does after a failed call; each step may find it done."""
    ipam, bridge = client.tx()
    try:
        for net in list(client.nets.values()):
            for ep in [e for e in net.eps.values() if e.state == "uncertain"]:
                ref = {"NetworkID": net.nid, "EndpointID": ep.eid}
                if net.nid in seen.networks:
                    bridge.call("NetworkDriver.Leave", ref)
                    bridge.call("NetworkDriver.DeleteEndpoint", ref)
                if net.pool_id:
                    _tolerant(ipam, "IpamDriver.ReleaseAddress",
                              {"PoolID": net.pool_id, "Address": ep.address.split("/")[0]})
                del net.eps[ep.eid]
            if net.state == "uncertain":
                if net.eps:                      # a delete never starts with endpoints left: none here
                    net.state = "live"
                    continue
                bridge.call("NetworkDriver.DeleteNetwork", {"NetworkID": net.nid})
                pool_id = net.pool_id or f"{SPACE}/{net.subnet}"
                _tolerant(ipam, "IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": net.gateway.split("/")[0]})
                _tolerant(ipam, "IpamDriver.ReleasePool", {"PoolID": pool_id})
                del client.nets[net.nid]
    finally:
        ipam.close()
        bridge.close()


@pytest.fixture(params=["sqlite", "etcd"])
def host(request: pytest.FixtureRequest, netns: str, tmp_path: Path) -> Iterator[CrashHost]:
    """The daemon and how to read its store: SQLite's file directly, or etcd through etcdctl."""
    cluster: EtcdCluster | None = None
    if request.param == "etcd":
        require_etcd()
        cluster = EtcdCluster(netns=netns)          # members on the host namespace's loopback
    try:
        if cluster is not None:
            cluster.start()
            daemon = CrashHost(netns, tmp_path, ("--store", cluster.url), etcd_records(cluster))
        else:
            daemon = CrashHost(netns, tmp_path, ())
        try:
            yield daemon
        finally:
            if daemon.proc is not None:
                daemon.stop(signal.SIGKILL)
    finally:
        if cluster is not None:
            cluster.stop()


def test_sigkill_at_random_moments_loses_nothing_and_leaks_nothing(host: CrashHost) -> None:
    seed = int(os.environ.get("CNMKIT_CRASH_SEED") or random.randrange(1 << 32))
    print(f"CNMKIT_CRASH_SEED={seed}")
    rng = random.Random(seed)
    clients = [Client(i, host.plugins, random.Random(rng.random())) for i in range(THREADS)]
    findings: list[str] = []
    for round_no in range(ROUNDS):
        host.start_daemon()
        seen = look(host)
        problems = check_agreement(seen) + check_clients(seen, clients)
        findings += [f"round {round_no}: {p}" for p in problems]
        assert not problems, f"seed {seed}, round {round_no}: {problems}"
        for client in clients:
            settle(client, seen)
        stop = threading.Event()
        workers = [threading.Thread(target=c.run, args=(stop,)) for c in clients]
        for w in workers:
            w.start()
        time.sleep(rng.uniform(0.05, 1.0))              # the random moment of the kill, not a wait for a race
        host.stop(signal.SIGKILL)
        stop.set()
        for w in workers:
            w.join()
        errors = [e for c in clients for e in c.errors]
        assert not errors, f"seed {seed}, round {round_no}: answered errors {errors}"

    host.start_daemon()
    seen = look(host)
    assert not check_agreement(seen) + check_clients(seen, clients), seed
    made = sum(1 for _ in seen.networks) + len(seen.endpoints)
    for client in clients:
        settle(client, seen)
        ipam, bridge = client.tx()
        for net in list(client.nets.values()):
            for ep in list(net.eps.values()):
                client.detach(ipam, bridge, net, ep)
            client.delete_network(ipam, bridge, net)
        ipam.close()
        bridge.close()
    assert json.loads(host.cli("--format", "json", "network", "ls").stdout) == []
    pools = PluginTransport(str(host.plugins / "cnmkit.sock")).call("Cnmkit.PoolList", {})["Pools"]
    assert pools == [], (seed, pools)
    # DeleteEndpoint answers before its veth is deleted (drivers/reaper.py): a SIGTERM'd daemon
    # deletes every link still marked doomed before it exits, so the kernel is looked at after.
    assert host.stop(signal.SIGTERM) == 0
    final = look(host)
    assert final.networks == {} and final.endpoints == {} and final.addresses == {}, (seed, final)
    assert not [n for n, link in final.links.items() if n.startswith(("cnv", "cni", "cnm-"))
                or str(link.get("ifalias", "")).startswith("cnmkit:")], (seed, final.links)
    assert final.marks == set(), seed
    assert made > 0
