"""The VXLAN overlay across the lab's hosts (issue 8 item 7): runtime and dockerd containers, etcd.

Each test uses the session lab (tests/overlay/conftest.py): three hosts on one underlay, a daemon
per host on a 3-member etcd. Oracles: ``ping`` between containers for the datapath, ``bridge -j
fdb`` and ``ip -j neigh`` in each host's overlay namespace for the entries the agents derive
(tests/overlay/oracle.py), etcdctl for the store. The tests that kill a daemon or etcd members
come last and bring them back before they end.
"""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tests.overlay import oracle
from tests.overlay.dockerd import HostDockerd
from tests.overlay.harness import Lab, OverlayHost, eventually, run

Names = Callable[[str], str]


@dataclass(frozen=True)
class Box:
    """A runtime container on one host and what the overlay gave it."""

    host: OverlayHost
    name: str
    ip: str
    mac: str


def overlay(lab: Lab, names: Names, subnet: str, vni: int, via: OverlayHost | None = None) -> str:
    """An overlay created once, through one host's CLI, and usable from every host."""
    name = names("ov")
    (via or lab.hosts[0]).cli("network", "create", "-d", "vxlan", "--subnet", subnet, "-o", f"vni={vni}", name)
    return name


def box(host: OverlayHost, names: Names, network: str, ip: str = "") -> Box:
    name = names("c")
    spec = network + (f",ip={ip}" if ip else "")
    host.cli("run", "-d", "--name", name, "--network", spec, "--", "sleep", "100000")
    info = host.json("inspect", name)[0]["NetworkSettings"]["Networks"][network]
    return Box(host, name, str(info["address"]).split("/")[0], str(info["mac"]))


def entries_of(boxes: list[Box], on: OverlayHost) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """The FDB and neighbour entries ``on`` must hold for the remote ones among ``boxes``."""
    remote = [b for b in boxes if b.host is not on]
    fdb = {(b.mac, b.host.address) for b in remote} | {(oracle.ZERO_MAC, b.host.address) for b in remote}
    return fdb, {(b.ip, b.mac) for b in remote}


def converged(vni: int, boxes: list[Box], hosts: list[OverlayHost]) -> Callable[[], bool]:
    """True when every host with a VTEP holds exactly the entries for the others' endpoints."""
    def check() -> bool:
        for host in hosts:
            fdb, neigh = entries_of(boxes, host)
            if oracle.vtep(host, vni) is None:
                if any(b.host is host for b in boxes):
                    return False            # a host with an endpoint must have its VTEP
                continue
            if oracle.fdb(host, vni) != fdb or oracle.neigh(host, vni) != neigh:
                return False
        return True
    return check


def test_runtime_containers_on_three_hosts_talk_over_one_overlay_created_once(lab: Lab, names: Names) -> None:
    net = overlay(lab, names, "10.90.0.0/24", 9001)
    boxes = [box(h, names, net) for h in lab.hosts]
    eventually("every host holds the others' endpoints", converged(9001, boxes, lab.hosts))
    for src in boxes:
        for dst in boxes:
            if dst is not src:
                assert src.host.ping(src.name, dst.ip), f"{src.host.name}/{src.name} -> {dst.host.name}/{dst.ip}"
    # One gateway address on every host, answered by each container's own host.
    gateways = {str(b.host.json("inspect", b.name)[0]["NetworkSettings"]["Networks"][net]["gateway"])
                for b in boxes}
    assert len(gateways) == 1
    gateway = next(iter(gateways)).split("/")[0]
    assert all(b.host.ping(b.name, gateway) for b in boxes)
    # 1472 bytes of ICMP payload over a 1500-byte underlay: fragmented to fit, never dropped.
    assert boxes[0].host.ping(boxes[0].name, boxes[1].ip, "-s", "1472")


def test_runtime_containers_on_two_hosts_reach_each_other_by_name_and_alias(lab: Lab, names: Names) -> None:
    """Names ride on the endpoint records (engine NAMES_OPTION); each runtime lists the other
    hosts' containers of a multi-host network in its hosts files, refreshed at every run/exec."""
    h1, h2 = lab.hosts[0], lab.hosts[1]
    net = overlay(lab, names, "10.89.0.0/24", 8901)
    first = names("c")
    h1.cli("run", "-d", "--name", first, "--network", f"{net},alias=www", "--", "sleep", "100000")
    second = box(h2, names, net)                   # started after: knows ``first`` from its start
    eventually("converged", lambda: oracle.fdb(h1, 8901) != set() and oracle.fdb(h2, 8901) != set())
    assert h2.ping(second.name, first) and h2.ping(second.name, "www")
    assert h1.ping(first, second.name)             # started before: learns ``second`` at exec
    h2.cli("rm", "-f", second.name)
    assert second.name not in h1.exec(first, "cat", "/etc/hosts", check=True).stdout


def test_a_runtime_container_learns_other_hosts_peers_with_nothing_run_on_its_host(lab: Lab, names: Names) -> None:
    """A on h1, then B on h2: A resolves B by name with no cnmkit call on h1 after A's start
    (no run, exec or connect there: the test enters A's namespaces with nsenter); h1's daemon
    rewrote A's hosts file on its store watch. B removed: A's hosts file loses it the same way."""
    h1, h2 = lab.hosts[0], lab.hosts[1]
    net = overlay(lab, names, "10.88.0.0/24", 8801)
    a = box(h1, names, net)
    pid = int(h1.json("inspect", a.name)[0]["State"]["init_pid"])

    def in_a(*cmd: str) -> subprocess.CompletedProcess:
        return run("nsenter", "-t", str(pid), "-m", "-n", *cmd, check=False)

    assert in_a("getent", "hosts", a.name).stdout.split()[:1] == [a.ip]      # control: the oracle works
    b = box(h2, names, net)
    eventually("A resolves B", lambda: in_a("getent", "hosts", b.name).stdout.split()[:1] == [b.ip])
    eventually("converged", converged(8801, [a, b], [h1, h2]))
    assert in_a("ping", "-c", "1", "-W", "2", b.name).returncode == 0
    h2.cli("rm", "-f", b.name)
    eventually("B gone from A's hosts file", lambda: b.name not in in_a("cat", "/etc/hosts").stdout)
    assert in_a("getent", "hosts", b.name).returncode != 0


def test_two_overlays_with_one_subnet_on_the_same_hosts_stay_isolated(lab: Lab, names: Names) -> None:
    h1, h2 = lab.hosts[0], lab.hosts[1]
    red, blue = overlay(lab, names, "10.91.0.0/24", 9011), overlay(lab, names, "10.91.0.0/24", 9012)
    r1, r2 = box(h1, names, red, "10.91.0.10"), box(h2, names, red, "10.91.0.20")
    b1, b2 = box(h1, names, blue, "10.91.0.10"), box(h2, names, blue, "10.91.0.30")
    eventually("red converged", converged(9011, [r1, r2], lab.hosts))
    eventually("blue converged", converged(9012, [b1, b2], lab.hosts))
    assert h1.ping(r1.name, r2.ip) and h2.ping(b2.name, b1.ip)
    assert h1.ping(b1.name, b2.ip)
    assert not h1.ping(r1.name, b2.ip)           # 10.91.0.30 is only on blue
    assert not h1.ping(b1.name, r2.ip)           # 10.91.0.20 is only on red
    # Same address on both overlays on one host: two VTEPs in two namespaces, not one table.
    for host in (h1, h2):
        red_vtep, blue_vtep = oracle.vtep(host, 9011), oracle.vtep(host, 9012)
        assert red_vtep is not None and blue_vtep is not None and red_vtep.netns != blue_vtep.netns


def test_endpoints_added_and_removed_on_one_host_are_seen_on_the_others(lab: Lab, names: Names) -> None:
    h1, h2, h3 = lab.hosts
    net = overlay(lab, names, "10.93.0.0/24", 9031)
    anchors = [box(h1, names, net), box(h3, names, net)]
    eventually("anchors converged", converged(9031, anchors, lab.hosts))
    added = [box(h2, names, net) for _ in range(3)]
    eventually("h2's endpoints on h1 and h3", converged(9031, anchors + added, lab.hosts))
    for gone in added[:2]:
        h2.cli("rm", "-f", gone.name)
    eventually("h2's removed endpoints gone from h1 and h3", converged(9031, anchors + added[2:], lab.hosts))
    h2.cli("rm", "-f", added[2].name)
    eventually("h2's last endpoint gone, and its flood entry with it", converged(9031, anchors, lab.hosts))
    assert h2.address not in oracle.flood(h1, 9031) | oracle.flood(h3, 9031)


def test_a_dockerd_container_on_one_host_pings_a_runtime_container_on_another(
        lab: Lab, names: Names, docker_h1: HostDockerd) -> None:
    """Docker's way (the same overlay name created on each host through its own engine) meets the
    runtime's: dockerd on h1 creates it, h2's CLI creates its own record of the same overlay."""
    h2 = lab.hosts[1]
    name, subnet = names("mix"), "10.94.0.0/24"
    docker_h1.docker("network", "create", "-d", "cnmkit-vxlan", "--ipam-driver", "cnmkit",
                     "--ipam-opt", f"cnmkit.overlay={name}", "-o", f"cnmkit.overlay={name}", "-o", "vni=9041",
                     "--subnet", subnet, name)
    try:
        h2.cli("network", "create", "-d", "vxlan", "--subnet", subnet, "--ipam-opt", f"cnmkit.overlay={name}",
               "-o", f"cnmkit.overlay={name}", "-o", "vni=9041", name)
        target = box(h2, names, name)
        out = docker_h1.docker("run", "--rm", "--network", name, docker_h1.image, "ping", "-c", "1", "-W", "2",
                               target.ip, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        docker_h1.docker("network", "rm", name, check=False)


def _names_on_record(host: OverlayHost, network: str) -> set[str]:
    """Every name the store holds for the network's endpoints (``cnmkit.names``), read through ``host``."""
    eps = host.json("network", "inspect", network)[0]["EndpointList"]
    return {n for ep in eps for n in str((ep.get("Options") or {}).get("cnmkit.names", "")).split(",") if n}


def test_a_dockerd_container_and_a_runtime_container_on_two_hosts_reach_each_other_by_name(
        lab: Lab, names: Names, docker_h1: HostDockerd) -> None:
    """Both ways, by name: h1's daemon learns the dockerd container's name from dockerd after
    its Join and records it (agent/dockernames.py), so h2's runtime lists it in its hosts files;
    the dockerd container resolves h2's runtime container through its embedded DNS, which
    forwards to the overlay's gateway (``--dns``), answered by h1's daemon (agent/dns.py)."""
    h2 = lab.hosts[1]
    name, subnet = names("dns"), "10.98.0.0/24"
    docker_h1.docker("network", "create", "-d", "cnmkit-vxlan", "--ipam-driver", "cnmkit",
                     "--ipam-opt", f"cnmkit.overlay={name}", "-o", f"cnmkit.overlay={name}", "-o", "vni=9081",
                     "--subnet", subnet, name)
    web = names("dweb")
    try:
        h2.cli("network", "create", "-d", "vxlan", "--subnet", subnet, "--ipam-opt", f"cnmkit.overlay={name}",
               "-o", f"cnmkit.overlay={name}", "-o", "vni=9081", name)
        # dockerd shows no gateway its remote IPAM chose (only a --gateway given): cnmkit's inspect does.
        gateway = str(h2.json("network", "inspect", name)[0]["IPv4"][0]["Gateway"]).split("/")[0]
        early = box(h2, names, name)                      # running before dockerd's container exists
        docker_h1.docker("run", "-d", "--name", web, "--network", name, "--network-alias", "www",
                         "--dns", gateway, docker_h1.image, "sleep", "100000")
        network_id = docker_h1.docker("network", "inspect", "-f", "{{.Id}}", name).stdout.strip()
        eventually("the dockerd container's names on its endpoint record",
                   lambda: {web, "www"} <= _names_on_record(h2, network_id))
        # The names came after the Join: h2's daemon rewrites the earlier container's hosts file
        # on its watch (read through nsenter: a cnmkit exec would refresh the file itself).
        pid = int(h2.json("inspect", early.name)[0]["State"]["init_pid"])
        eventually("the earlier container's hosts file names web",
                   lambda: web in run("nsenter", "-t", str(pid), "-m", "cat", "/etc/hosts", check=False).stdout.split())
        peer = box(h2, names, name)                       # started after: its hosts file has ``web``
        eventually("converged", lambda: oracle.fdb(h2, 9081) != set())
        assert h2.ping(peer.name, web) and h2.ping(peer.name, "www")
        out = docker_h1.docker("exec", web, "ping", "-c", "1", "-W", "2", peer.name, check=False)
        assert out.returncode == 0 and f"({peer.ip})" in out.stdout, out.stdout + out.stderr
        # The gateway answers only the overlay's names, and refuses what is not one.
        out = docker_h1.docker("exec", web, "nslookup", "nowhere.invalid", gateway, check=False)
        assert out.returncode != 0 and peer.ip not in out.stdout
    finally:
        docker_h1.docker("rm", "-f", web, check=False)
        docker_h1.docker("network", "rm", name, check=False)


def _resolves(host: OverlayHost, container: str, name: str, server: str) -> str:
    """``name`` as the DNS server at ``server`` answers it to ``container`` (busybox's own resolver)."""
    out = host.exec(container, "busybox", "nslookup", "-type=a", name, server)
    return out.stdout if out.returncode == 0 else ""


def test_the_gateway_answers_the_overlays_names_and_never_keeps_its_namespace_alive(
        lab: Lab, names: Names) -> None:
    """The DNS responder (agent/dns.py) in h1's overlay namespace answers a runtime container there
    with h2's container's address, refuses other names, and closes its socket before the
    namespace goes: the overlay made again with the same VNI gets a new vxlan0 (a socket left
    open would pin the old namespace and its VNI) and a responder again."""
    h1, h2 = lab.hosts[0], lab.hosts[1]
    net = overlay(lab, names, "10.99.0.0/24", 9091)
    a, b = box(h1, names, net), box(h2, names, net)
    eventually("converged", converged(9091, [a, b], lab.hosts))
    assert b.ip in _resolves(h1, a.name, b.name, "10.99.0.1")
    assert _resolves(h1, a.name, "nowhere.invalid", "10.99.0.1") == ""
    for host, gone in ((h1, a), (h2, b)):
        host.cli("rm", "-f", gone.name)
    h1.cli("network", "rm", net)
    eventually("the overlay's namespaces gone", lambda: all(oracle.vtep(h, 9091) is None for h in lab.hosts))
    again = overlay(lab, names, "10.99.0.0/24", 9091)
    c, d = box(h1, names, again), box(h2, names, again)
    eventually("converged again", converged(9091, [c, d], lab.hosts))
    assert h1.ping(c.name, d.ip) and d.ip in _resolves(h1, c.name, d.name, "10.99.0.1")


def test_a_sigkilled_host_leaves_the_others_tables_once_its_lease_expires(lab: Lab, names: Names) -> None:
    h1, h2, h3 = lab.hosts
    net = overlay(lab, names, "10.95.0.0/24", 9051)
    boxes = [box(h, names, net) for h in lab.hosts]
    eventually("converged", converged(9051, boxes, lab.hosts))
    h3.stop_daemon(signal.SIGKILL)
    try:
        eventually("h3 gone from h1 and h2", converged(9051, boxes[:2], [h1, h2]))
        assert h1.host_ids() == ["h1", "h2"]
        assert h1.ping(boxes[0].name, boxes[1].ip)          # what is left still works
    finally:
        h3.start_daemon()
    # Back within the grace period: its endpoint is still its own and returns to every table.
    eventually("h3 back", converged(9051, boxes, lab.hosts))
    assert h1.ping(boxes[0].name, boxes[2].ip)


def test_the_etcd_leader_killed_while_endpoints_are_created_loses_and_doubles_nothing(
        lab: Lab, names: Names) -> None:
    assert lab.etcd is not None
    net = overlay(lab, names, "10.96.0.0/26", 9061)
    made: list[Box] = []
    errors: list[str] = []
    lock = threading.Lock()
    started = threading.Event()

    def create(host: OverlayHost, count: int) -> None:
        for _ in range(count):
            try:
                b = box(host, names, net)
            except AssertionError as exc:
                with lock:
                    errors.append(str(exc))
                continue
            with lock:
                made.append(b)
            started.set()

    threads = [threading.Thread(target=create, args=(h, 2)) for h in lab.hosts]
    for t in threads:
        t.start()
    started.wait(timeout=120)
    leader = lab.etcd.leader()
    lab.etcd.kill(leader)
    try:
        for t in threads:
            t.join()
    finally:
        lab.etcd.start_member(leader)
        lab.etcd.wait_healthy()
    assert errors == [] and len(made) == 2 * len(lab.hosts), errors
    ips = [b.ip for b in made]
    assert len(set(ips)) == len(ips), sorted(ips)
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.96.0.0/26") for ip in ips)
    eventually("every endpoint in every other host's tables", converged(9061, made, lab.hosts))


def test_traffic_keeps_flowing_while_the_whole_store_is_down(lab: Lab, names: Names) -> None:
    assert lab.etcd is not None
    h1, h2 = lab.hosts[0], lab.hosts[1]
    net = overlay(lab, names, "10.97.0.0/24", 9071)
    a, b = box(h1, names, net), box(h2, names, net)
    eventually("converged", converged(9071, [a, b], lab.hosts))
    members = [i for i, p in enumerate(lab.etcd.procs) if p is not None]
    for i in members:
        lab.etcd.kill(i)
    try:
        # Longer than the hosts' lease TTL (2 s): nothing derived from the store may be dropped.
        out = h1.exec(a.name, "ping", "-c", "25", "-i", "0.2", "-W", "1", b.ip)
        assert out.returncode == 0 and " 0% packet loss" in out.stdout, out.stdout
        assert oracle.fdb(h1, 9071) == entries_of([a, b], h1)[0]
    finally:
        for i in members:
            lab.etcd.start_member(i)
        lab.etcd.wait_healthy()
    lab.wait_hosts([h.name for h in lab.hosts])
    assert h2.ping(b.name, a.ip)
