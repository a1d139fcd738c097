"""A stock dockerd 20.10 drives cnmkit as its network and IPAM driver (issue 2, point 2).

Connectivity is proven with pings that must succeed and pings that must fail; kernel state
is read with ``ip -j`` and ``iptables -S``, never with cnmkit's own code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import ip_json
from tests.docker.conftest import CnmkitDaemon, docker

pytestmark = pytest.mark.docker


def run(image: str, name: str, *args: str) -> None:
    docker("run", "-d", "--name", name, *args, image, "sleep", "100000")


def sh(container: str, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
    return docker("exec", container, *cmd, check=check)


def pings(container: str, target: str, v6: bool = False) -> bool:
    cmd = ["ping", "-6" if v6 else "-4", "-c", "1", "-W", "2", target]
    return sh(container, *cmd).returncode == 0


def ip_of(container: str, network: str, key: str = "IPAddress") -> str:
    out = docker("inspect", container, "--format", "{{json .NetworkSettings.Networks}}").stdout
    return str(json.loads(out)[network][key])


def network_id(name: str) -> str:
    return docker("network", "inspect", name, "--format", "{{.Id}}").stdout.strip()


def owned_links() -> list[dict]:
    return [link for link in ip_json("link", "show") if str(link.get("ifalias", "")).startswith("cnmkit:")]


def left_of(nid: str) -> list[dict]:
    """Our links of network ``nid`` still in service: a doomed bridge (down, awaiting the reaper,
    drivers/reaper.py) is not, whenever the reaper's batch happens to run."""
    return [link for link in owned_links() if nid in link["ifalias"]
            and not (link["ifalias"] == f"cnmkit:doomed:{nid}" and "UP" not in link["flags"])]


def our_rules() -> str:
    rules = ""
    for table in ("filter", "nat"):
        rules += subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
    return "\n".join(line for line in rules.splitlines() if "cnmkit:" in line)


def create(name: str, *args: str) -> str:
    docker("network", "create", "-d", "cnmkit-bridge", "--ipam-driver", "cnmkit", *args, name)
    return network_id(name)


@dataclass(frozen=True)
class Upstream:
    netns: str
    addr: str                      # the outside world's address
    host_addr: str                 # the host's address on the link to it


@pytest.fixture
def upstream(netns_factory: Callable[[str], str]) -> Iterator[Upstream]:
    """A namespace standing in for the outside world, routed from the host by a /30 of the test's own."""
    ns = netns_factory("up")
    host_end = f"cnmtup{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", "up0", "netns", ns], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.253.99.1/30", "dev", host_end], check=True)
        subprocess.run(["ip", "link", "set", host_end, "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "10.253.99.2/30", "dev", "up0"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "up0", "up"], check=True)
        # Deliberately no route back to container subnets: only masqueraded traffic can be answered.
        yield Upstream(netns=ns, addr="10.253.99.2", host_addr="10.253.99.1")
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)


def test_network_create_options_reach_the_kernel(cnmkit: CnmkitDaemon, names: Callable[[str], str]) -> None:
    net = names("opts")
    nid = create(net, "--subnet", "10.231.1.0/24", "--gateway", "10.231.1.254", "--ip-range", "10.231.1.128/26",
                 "--aux-address", "router=10.231.1.10", "-o", "com.docker.network.driver.mtu=1400")
    bridge = next(link for link in owned_links() if link["ifalias"] == f"cnmkit:net:{nid}")
    assert bridge["mtu"] == 1400 and bridge["linkinfo"]["info_kind"] == "bridge"
    addrs = {a["local"] for a in ip_json("addr", "show", "dev", bridge["ifname"])[0]["addr_info"]}
    assert "10.231.1.254" in addrs
    listed = json.loads(cnmkit.cli("--format", "json", "network", "ls").stdout)
    assert {n["Id"]: n.get("DockerName") for n in listed}[nid] == net
    assert f"{net} (docker)" in cnmkit.cli("network", "ls").stdout
    docker("network", "rm", net)
    assert not left_of(nid)
    assert nid[:12] not in our_rules()


def test_containers_talk_on_one_network_and_not_across(image: str, cnmkit: CnmkitDaemon,
                                                       names: Callable[[str], str]) -> None:
    net1, net2 = names("n1"), names("n2")
    create(net1, "--subnet", "10.231.2.0/24", "-o", "com.docker.network.driver.mtu=1450")
    create(net2, "--subnet", "10.231.3.0/24")
    c1, c2, c3 = names("c1"), names("c2"), names("c3")
    run(image, c1, "--network", net1)
    run(image, c2, "--network", net1, "--ip", "10.231.2.50")
    run(image, c3, "--network", net2)
    assert ip_of(c2, net1) == "10.231.2.50"
    assert pings(c1, "10.231.2.50")
    assert pings(c1, c2), "dockerd's DNS resolves names on our network"
    assert pings(c1, "10.231.2.1"), "the gateway answers"
    assert not pings(c1, ip_of(c3, net2)), "two cnmkit networks are isolated"
    assert not pings(c3, ip_of(c1, net1))
    links = sh(c1, "ls", "/sys/class/net", check=True).stdout.split()
    assert sorted(links) == ["eth0", "lo"], "no docker_gwbridge leg"
    assert sh(c1, "cat", "/sys/class/net/eth0/mtu", check=True).stdout.strip() == "1450"
    mac = ip_of(c1, net1, "MacAddress")
    assert mac and sh(c1, "cat", "/sys/class/net/eth0/address", check=True).stdout.strip() == mac


def test_masquerade_and_internal(image: str, cnmkit: CnmkitDaemon, names: Callable[[str], str],
                                 upstream: Upstream) -> None:
    out, internal = names("out"), names("int")
    create(out, "--subnet", "10.231.4.0/24")
    create(internal, "--subnet", "10.231.5.0/24", "--internal")
    c_out, c_int = names("cout"), names("cint")
    run(image, c_out, "--network", out)
    run(image, c_int, "--network", internal)
    assert pings(c_out, upstream.addr), "a non-internal network reaches beyond the host through masquerade"
    assert not pings(c_int, upstream.addr), "an internal network has no way out"
    assert sorted(sh(c_int, "ls", "/sys/class/net", check=True).stdout.split()) == ["eth0", "lo"]
    assert "default" not in sh(c_int, "ip", "route", check=True).stdout


def test_ipv6(image: str, cnmkit: CnmkitDaemon, names: Callable[[str], str]) -> None:
    net = names("v6")
    create(net, "--ipv6", "--subnet", "10.231.6.0/24", "--subnet", "fd00:231:6::/64")
    a, b = names("a"), names("b")
    run(image, a, "--network", net)
    run(image, b, "--network", net, "--ip6", "fd00:231:6::77")
    assert ip_of(b, net, "GlobalIPv6Address") == "fd00:231:6::77"
    assert pings(a, "fd00:231:6::77", v6=True)
    assert pings(a, ip_of(b, net))


def test_automatic_pool(image: str, cnmkit: CnmkitDaemon, names: Callable[[str], str]) -> None:
    n1, n2 = names("auto1"), names("auto2")
    create(n1)
    create(n2)
    s1 = docker("network", "inspect", n1, "--format", "{{(index .IPAM.Config 0).Subnet}}").stdout.strip()
    s2 = docker("network", "inspect", n2, "--format", "{{(index .IPAM.Config 0).Subnet}}").stdout.strip()
    assert s1 and s2 and s1 != s2
    c = names("c")
    run(image, c, "--network", n1)
    assert pings(c, docker("network", "inspect", n1, "--format",
                           "{{(index .IPAM.Config 0).Gateway}}").stdout.strip())


def test_connect_disconnect_stop_start(image: str, cnmkit: CnmkitDaemon, names: Callable[[str], str]) -> None:
    n1, n2 = names("m1"), names("m2")
    create(n1, "--subnet", "10.231.7.0/24")
    create(n2, "--subnet", "10.231.8.0/24")
    a, b = names("a"), names("b")
    run(image, a, "--network", n1, "--ip", "10.231.7.7")
    run(image, b, "--network", n2)
    assert not pings(a, ip_of(b, n2))
    docker("network", "connect", "--ip", "10.231.8.8", n2, a)
    assert sorted(sh(a, "ls", "/sys/class/net", check=True).stdout.split()) == ["eth0", "eth1", "lo"]
    assert pings(a, ip_of(b, n2)) and pings(b, "10.231.8.8")
    docker("network", "disconnect", n2, a)
    assert not pings(b, "10.231.8.8")
    docker("stop", "-t", "1", a)
    docker("start", a)
    assert ip_of(a, n1) == "10.231.7.7"
    docker("restart", "-t", "1", a)
    assert ip_of(a, n1) == "10.231.7.7"
    c = names("c")
    run(image, c, "--network", n1)
    assert pings(c, "10.231.7.7")


def test_nothing_left_after_rm(image: str, cnmkit: CnmkitDaemon, names: Callable[[str], str]) -> None:
    net = names("gone")
    nid = create(net, "--subnet", "10.231.9.0/24", "--aux-address", "x=10.231.9.9")
    cs = [names(f"c{i}") for i in range(3)]
    for c in cs:
        run(image, c, "--network", net)
    assert len([link for link in owned_links() if "cnmkit:ep:" in link["ifalias"]]) >= 3
    for c in cs:
        docker("rm", "-f", c)
    docker("network", "rm", net)
    # What is left is only marked doomed (a bridge down), awaiting the reaper ...
    assert not left_of(nid) and not [link for link in owned_links() if "cnmkit:ep:" in link["ifalias"]]
    assert nid[:12] not in our_rules()
    cnmkit.stop()                                     # ... and a stopping daemon deletes what is marked
    assert not [link for link in owned_links() if link["ifalias"].startswith("cnmkit:doomed:")]
    cnmkit.start()
    pools = json.loads(cnmkit.cli("--format", "json", "network", "ls").stdout)
    assert nid not in [n["Id"] for n in pools]
    assert "10.231.9.0/24" not in cnmkit.cli("network", "ls").stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_daemon_restart_loses_nothing(image: str, cnmkit: CnmkitDaemon, names: Callable[[str], str],
                                      sig: int) -> None:
    net = names("rs")
    nid = create(net, "--subnet", "10.231.10.0/24")
    a, b = names("a"), names("b")
    run(image, a, "--network", net)
    run(image, b, "--network", net, "--ip", "10.231.10.20")
    cnmkit.stop(sig)
    try:
        assert pings(a, "10.231.10.20"), "running containers keep their network while the daemon is down"
    finally:
        cnmkit.start()
    assert pings(a, "10.231.10.20")
    docker("stop", "-t", "1", b)          # Leave, DeleteEndpoint, ReleaseAddress for pre-restart objects
    docker("start", b)
    assert ip_of(b, net) == "10.231.10.20" and pings(a, "10.231.10.20")
    docker("rm", "-f", a, b)
    docker("network", "rm", net)
    assert not left_of(nid)


def test_with_dockers_own_ipam(image: str, cnmkit: CnmkitDaemon, names: Callable[[str], str]) -> None:
    """-d cnmkit-bridge without --ipam-driver: dockerd's built-in IPAM hands out the addresses."""
    net = names("dipam")
    docker("network", "create", "-d", "cnmkit-bridge", "--subnet", "10.231.12.0/24", net)
    nid = network_id(net)
    a, b = names("a"), names("b")
    run(image, a, "--network", net)
    run(image, b, "--network", net, "--ip", "10.231.12.40")
    assert pings(a, "10.231.12.40") and pings(a, b)
    assert pings(a, "10.231.12.1"), "the gateway dockerd's IPAM picked is on our bridge"
    docker("rm", "-f", a, b)
    docker("network", "rm", net)
    assert not left_of(nid)


def test_parallel_runs_on_one_network(image: str, cnmkit: CnmkitDaemon, names: Callable[[str], str]) -> None:
    """dockerd starts containers concurrently (restore, compose): no duplicate address, all reachable."""
    from concurrent.futures import ThreadPoolExecutor

    net = names("par")
    create(net, "--subnet", "10.231.13.0/24")
    cs = [names(f"p{i}") for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda c: run(image, c, "--network", net), cs))
    ips = [ip_of(c, net) for c in cs]
    assert len(set(ips)) == len(cs), ips
    assert all(pings(cs[0], ip) for ip in ips[1:])
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda c: docker("rm", "-f", c), cs))
    docker("network", "rm", net)
    assert "10.231.13.0/24" not in cnmkit.cli("network", "ls").stdout


HTTPD = ["sh", "-c", "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www"]


def fetch(netns: str, url: str) -> str:
    """An HTTP GET from inside ``netns`` (Python's client: busybox's static wget crashes on this host)."""
    code = ("import sys, urllib.request\n"
            "try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().strip())\n"
            "except OSError as exc:\n    print(f'(failed: {exc})')")
    proc = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, url],
                          capture_output=True, text=True)
    return proc.stdout.strip()


def test_published_ports(image: str, cnmkit: CnmkitDaemon, names: Callable[[str], str],
                         upstream: Upstream) -> None:
    """-p reaches the container from outside through the host's address; -P picks a free port."""
    outside = upstream.netns
    net = names("ports")
    nid = create(net, "--subnet", "10.231.14.0/24")
    web, auto = names("web"), names("auto")
    docker("run", "-d", "--name", web, "--hostname", "web", "--network", net, "-p", "18080:80", image, *HTTPD)
    docker("run", "-d", "--name", auto, "--hostname", "auto", "--network", net, "-P", "--expose", "80",
           image, *HTTPD)
    host = upstream.host_addr
    assert fetch(outside, f"http://{host}:18080/") == "hello-from-web"
    eps = json.loads(cnmkit.cli("network", "inspect", nid).stdout)[0]["EndpointList"]
    ports = {b["host_port"] for ep in eps for b in ep["Ports"]}
    assert 18080 in ports and len(ports) == 2
    (dynamic,) = ports - {18080}
    assert 49153 <= dynamic <= 60999
    assert fetch(outside, f"http://{host}:{dynamic}/") == "hello-from-auto"
    assert fetch(outside, f"http://{host}:18081/").startswith("(failed"), "an unpublished port stays closed"
    # a second container asking for a port already published is refused, naming the port
    clash = docker("run", "-d", "--name", names("clash"), "--network", net, "-p", "18080:80", image, *HTTPD,
                   check=False)
    assert clash.returncode != 0 and "18080/tcp" in clash.stderr
    docker("rm", "-f", web, auto)
    assert f"cnmkit:{nid[:12]}:" not in our_rules(), "port rules go with their containers"
    assert fetch(outside, f"http://{host}:18080/").startswith("(failed")
