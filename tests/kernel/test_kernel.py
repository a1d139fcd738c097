"""drivers.kernel.Kernel against the real kernel, inside throwaway namespaces.

Every Kernel here is bound to a test namespace (``Kernel.for_netns``), so nothing is made in the
root namespace; results are checked with iproute2 (``ip -j -d``, ``bridge -j``), not our code.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from drivers import naming
from drivers.errors import KernelError, LinkExists, LinkNotFound
from drivers.kernel import Kernel
from tests.conftest import in_netns, ip_json
from tests.fakekernel import FakeKernel

pytestmark = pytest.mark.kernel

ALIAS = "cnmkit:net:" + "a" * 64
EP_ALIAS = "cnmkit:ep:" + "b" * 64


def path(ns: str) -> str:
    return f"/var/run/netns/{ns}"


def link(ns: str, name: str) -> dict | None:
    found = [x for x in ip_json("link", "show", netns=ns) if x["ifname"] == name]
    return found[0] if found else None


def root_link_names() -> set[str]:
    return {x["ifname"] for x in ip_json("link", "show")}


@pytest.fixture
def kernel(netns: str) -> Iterator[Kernel]:
    k = Kernel.for_netns(path(netns))
    yield k
    k.close()


def test_ensure_bridge_sets_alias_mtu_mac_and_is_idempotent(kernel: Kernel, netns: str) -> None:
    assert kernel.ensure_bridge("cnm-test", alias=ALIAS, mtu=1450, mac="02:12:34:56:78:9a") is True
    assert kernel.ensure_bridge("cnm-test", alias=ALIAS, mtu=1450, mac="02:12:34:56:78:9a") is False
    br = link(netns, "cnm-test")
    assert br is not None
    assert br["linkinfo"]["info_kind"] == "bridge"
    assert (br["ifalias"], br["mtu"], br["address"]) == (ALIAS, 1450, "02:12:34:56:78:9a")
    assert "cnm-test" not in root_link_names()


def test_addresses_and_up(kernel: Kernel, netns: str) -> None:
    kernel.ensure_bridge("cnm-test", alias=ALIAS, mtu=1500)
    for _ in range(2):
        kernel.addr_ensure("cnm-test", "10.77.0.1/24")
        kernel.addr_ensure("cnm-test", "fd00:77::1/64")
    kernel.set_up("cnm-test")
    shown = ip_json("addr", "show", "dev", "cnm-test", netns=netns)[0]
    addrs = sorted(f"{a['local']}/{a['prefixlen']}" for a in shown["addr_info"] if a["scope"] == "global")
    assert addrs == ["10.77.0.1/24", "fd00:77::1/64"]
    assert "UP" in shown["flags"]
    assert sorted(kernel.addrs("cnm-test"))[:2] == ["10.77.0.1/24", "fd00:77::1/64"]


def test_ensure_veth_in_host_namespace(kernel: Kernel, netns: str) -> None:
    kernel.ensure_bridge("cnm-test", alias=ALIAS, mtu=1400)
    created = kernel.ensure_veth("cnvhost", "cnipeer", alias=EP_ALIAS, mtu=1400,
                                 peer_mac="02:aa:bb:cc:dd:ee", master="cnm-test")
    assert created is True
    host, peer = link(netns, "cnvhost"), link(netns, "cnipeer")
    assert host is not None and peer is not None
    assert (host["master"], host["mtu"], host["ifalias"]) == ("cnm-test", 1400, EP_ALIAS)
    assert "UP" in host["flags"]
    assert (peer["address"], peer["mtu"]) == ("02:aa:bb:cc:dd:ee", 1400)
    ports = subprocess.run(["bridge", "-n", netns, "-j", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    assert '"ifname":"cnvhost"' in ports.replace(" ", "") and '"master":"cnm-test"' in ports.replace(" ", "")
    # A retried Join: the pair is found by name + alias and reused.
    assert kernel.ensure_veth("cnvhost", "cnipeer", alias=EP_ALIAS, mtu=1400,
                              peer_mac="02:aa:bb:cc:dd:ee", master="cnm-test") is False
    assert [x["ifname"] for x in ip_json("link", "show", netns=netns)].count("cnvhost") == 1


def test_ensure_veth_creates_the_peer_directly_in_another_namespace(
        kernel: Kernel, netns: str, netns_factory: Callable[[str], str]) -> None:
    container = netns_factory("c")
    kernel.ensure_bridge("cnm-test", alias=ALIAS, mtu=1500)
    kernel.ensure_veth("cnvhost", "cnipeer", alias=EP_ALIAS, mtu=1480, peer_mac="02:aa:bb:cc:dd:01",
                       master="cnm-test", peer_netns_path=path(container))
    assert link(netns, "cnipeer") is None
    peer = link(container, "cnipeer")
    assert peer is not None and (peer["address"], peer["mtu"]) == ("02:aa:bb:cc:dd:01", 1480)
    assert link(netns, "cnvhost")["master"] == "cnm-test"  # type: ignore[index]
    # Deleting the host end takes the peer with it, wherever it lives.
    assert kernel.link_delete("cnvhost", alias=EP_ALIAS) is True
    assert link(container, "cnipeer") is None


def test_link_delete_refuses_links_without_our_alias(kernel: Kernel, netns: str) -> None:
    subprocess.run(["ip", "-n", netns, "link", "add", "foreign0", "type", "bridge"], check=True)
    with pytest.raises(LinkExists):
        kernel.link_delete("foreign0", alias=ALIAS)
    assert link(netns, "foreign0") is not None
    with pytest.raises(LinkExists):
        kernel.ensure_bridge("foreign0", alias=ALIAS, mtu=1500)
    assert link(netns, "foreign0").get("ifalias") != ALIAS  # type: ignore[union-attr]


def test_an_unaliased_bridge_is_adopted_only_when_asked(kernel: Kernel, netns: str) -> None:
    subprocess.run(["ip", "-n", netns, "link", "add", "cnm-half", "type", "bridge"], check=True)
    with pytest.raises(LinkExists):
        kernel.ensure_bridge("cnm-half", alias=ALIAS, mtu=1500)
    assert kernel.ensure_bridge("cnm-half", alias=ALIAS, mtu=1500, adopt=True) is False
    assert link(netns, "cnm-half")["ifalias"] == ALIAS  # type: ignore[index]


def test_link_delete_is_repeatable(kernel: Kernel, netns: str) -> None:
    kernel.ensure_bridge("cnm-test", alias=ALIAS, mtu=1500)
    assert kernel.link_delete("cnm-test", alias=ALIAS) is True
    assert kernel.link_delete("cnm-test", alias=ALIAS) is False
    assert link(netns, "cnm-test") is None


def test_links_owned_lists_only_ours(kernel: Kernel, netns: str) -> None:
    subprocess.run(["ip", "-n", netns, "link", "add", "foreign0", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "foreign0", "alias", "someone:else"], check=True)
    kernel.ensure_bridge("cnm-test", alias=ALIAS, mtu=1500)
    assert kernel.links_owned("cnmkit:") == [("cnm-test", ALIAS)]
    assert kernel.links_owned("cnmkit:ep:") == []


def test_errors_are_ours_not_pyroute2s(kernel: Kernel) -> None:
    with pytest.raises(LinkNotFound):
        kernel.ensure_veth("cnvx", "cnix", alias=EP_ALIAS, mtu=1500, peer_mac=None, master="nosuchbr")
    with pytest.raises(LinkNotFound):
        kernel.set_up("nosuchlink")
    assert kernel.link_get("nosuchlink") is None
    with pytest.raises(KernelError) as exc:
        kernel.ensure_bridge("cnm-test", alias=ALIAS, mtu=20)          # below the minimum MTU
    assert exc.value.errno is not None


def test_netns_scoped_verbs_configure_a_container(netns_factory: Callable[[str], str]) -> None:
    container = netns_factory("c")
    subprocess.run(["ip", "-n", container, "link", "add", "cniabc", "type", "veth", "peer", "name", "cnvabc"],
                   check=True)
    with Kernel.for_netns(path(container)) as k:
        k.link_rename("cniabc", "eth0")
        k.link_set("eth0", mac="02:00:00:00:00:42", mtu=1400)
        k.addr_add("eth0", "10.88.0.2/24")
        k.link_set("eth0", up=True)
        k.set_up("cnvabc")
        k.route_add("default", gateway="10.88.0.1")
        k.route_add("10.99.0.0/16", oif="eth0")
        names = {x["name"] for x in k.links()}
        stats = k.link_stats("eth0")
    assert names == {"lo", "eth0", "cnvabc"}
    assert {"rx_bytes", "tx_bytes", "rx_packets", "tx_packets"} <= set(stats)
    eth0 = link(container, "eth0")
    assert eth0 is not None and (eth0["address"], eth0["mtu"]) == ("02:00:00:00:00:42", 1400)
    routes = ip_json("route", "show", netns=container)
    assert {"dst": "default", "gateway": "10.88.0.1", "dev": "eth0"}.items() <= routes[0].items()
    assert any(r["dst"] == "10.99.0.0/16" and r["dev"] == "eth0" for r in routes)


def test_one_kernel_shared_by_threads_stays_in_its_namespace(kernel: Kernel, netns: str) -> None:
    kernel.ensure_bridge("cnm-test", alias=ALIAS, mtu=1500)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(3):
                kernel.ensure_veth(f"cnvt{i}x{j}", f"cnit{i}x{j}", alias=f"{EP_ALIAS}{i}{j}", mtu=1500,
                                   peer_mac=None, master="cnm-test")
        except BaseException as exc:                       # reported below, with the thread's error
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    made = {x["ifname"] for x in ip_json("link", "show", netns=netns)}
    expected = {f"cnvt{i}x{j}" for i in range(4) for j in range(3)}
    assert expected <= made
    assert not expected & root_link_names()


# -- one contract, two implementations: FakeKernel must not drift from the real adapter -----

@pytest.fixture(params=["real", "fake"])
def ops(request: pytest.FixtureRequest, netns: str) -> Iterator[tuple[Any, Callable[[str], None]]]:
    """(kernel, plant_foreign_bridge) for the real adapter in a netns and for FakeKernel."""
    if request.param == "fake":
        fake = FakeKernel()
        yield fake, lambda name: fake.plant(name, "bridge", alias="someone:else")
        return
    real = Kernel.for_netns(path(netns))

    def plant(name: str) -> None:
        subprocess.run(["ip", "-n", netns, "link", "add", name, "type", "bridge"], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", name, "alias", "someone:else"], check=True)

    yield real, plant
    real.close()


def test_contract_shared_by_kernel_and_fake(ops: tuple[Any, Callable[[str], None]]) -> None:
    k, plant = ops
    assert k.link_get("cnm-c") is None
    assert k.ensure_bridge("cnm-c", alias=ALIAS, mtu=1400) is True
    assert k.ensure_bridge("cnm-c", alias=ALIAS, mtu=1400) is False
    k.addr_ensure("cnm-c", "10.66.0.1/24")
    k.addr_ensure("cnm-c", "10.66.0.1/24")
    assert [a for a in k.addrs("cnm-c") if a.startswith("10.")] == ["10.66.0.1/24"]
    k.set_up("cnm-c")
    got = k.link_get("cnm-c")
    assert (got["kind"], got["alias"], got["mtu"], got["up"]) == ("bridge", ALIAS, 1400, True)
    with pytest.raises(LinkNotFound):
        k.ensure_veth("cnvc", "cnic", alias=EP_ALIAS, mtu=1400, peer_mac=None, master="nosuch")
    assert k.ensure_veth("cnvc", "cnic", alias=EP_ALIAS, mtu=1400, peer_mac="02:00:00:00:66:02",
                         master="cnm-c") is True
    host, peer = k.link_get("cnvc"), k.link_get("cnic")
    assert (host["master"], host["up"], host["alias"]) == ("cnm-c", True, EP_ALIAS)
    assert (peer["mac"], peer["mtu"]) == ("02:00:00:00:66:02", 1400)
    plant("foreign0")
    with pytest.raises(LinkExists):
        k.ensure_bridge("foreign0", alias=ALIAS, mtu=1500, adopt=True)
    with pytest.raises(LinkExists):
        k.link_delete("foreign0", alias=ALIAS)
    assert sorted(k.links_owned("cnmkit:")) == [("cnm-c", ALIAS), ("cnvc", EP_ALIAS)]
    with pytest.raises(LinkNotFound):
        k.set_up("nosuch")
    with pytest.raises(LinkNotFound):
        k.addr_ensure("nosuch", "10.66.0.1/24")
    assert k.link_delete("cnvc", alias=EP_ALIAS) is True
    assert k.link_get("cnic") is None
    assert k.link_delete("cnvc", alias=EP_ALIAS) is False


def v6_addrs(ns: str, dev: str) -> dict[str, dict]:
    """Global IPv6 addresses of ``dev`` as ``ip -j -6 addr`` shows them (flags included)."""
    shown = ip_json("-6", "addr", "show", "dev", dev, netns=ns)[0]
    return {f"{a['local']}/{a['prefixlen']}": a for a in shown["addr_info"] if a["scope"] == "global"}


def test_ipv6_addresses_are_usable_at_once(netns_factory: Callable[[str], str]) -> None:
    """Container and gateway IPv6 addresses skip DAD (IFA_F_NODAD), as libnetwork's do.

    Under DAD an address stays "tentative" for ~1.5 s after the link comes up: a container's
    first ``ping -6`` fails (issue 6, scripts/demo.sh). Checked right after the runtime's own
    configure step, with nothing in between, and by one ping from the new address.
    """
    from runtime import sandbox

    host, box = netns_factory("h"), netns_factory("c")
    k = Kernel.for_netns(path(host))
    try:
        k.ensure_bridge("cnm-d", alias=ALIAS, mtu=1500)
        k.addr_ensure("cnm-d", "fd00:66::1/64")
        k.addr_ensure("cnm-d", "10.66.0.1/24")
        k.set_up("cnm-d")
        k.ensure_veth("cnvd", "cnid", alias=EP_ALIAS, mtu=1500, peer_mac="02:00:00:00:66:02",
                      master="cnm-d", peer_netns_path=path(box))
        sandbox.configure(path(box), {"src_name": "cnid", "address": "10.66.0.2/24",
                                      "address_v6": "fd00:66::2/64", "mac": "02:00:00:00:66:02",
                                      "mtu": 1500, "gateway": "10.66.0.1", "gateway_v6": "fd00:66::1"},
                          "eth0", True)
        for ns, dev, cidr in ((box, "eth0", "fd00:66::2/64"), (host, "cnm-d", "fd00:66::1/64")):
            addr = v6_addrs(ns, dev)[cidr]
            assert addr.get("nodad") is True and "tentative" not in addr, (dev, addr)
        assert "nodad" not in ip_json("-4", "addr", "show", "dev", "eth0", netns=box)[0]["addr_info"][0]
        assert in_netns(box, "ping", "-6", "-c", "1", "-W", "2", "fd00:66::1", check=False).returncode == 0
    finally:
        k.close()


def test_ensure_veth_finds_a_bridge_re_made_under_the_same_name(kernel: Kernel, netns: str) -> None:
    """The bridge's ifindex is remembered between Joins; a bridge re-made (the reconciler, an
    operator) has a new one, and the next veth must still land on it, not fail."""
    kernel.ensure_bridge("cnm-test", alias=ALIAS, mtu=1500)
    kernel.ensure_veth("cnvone", "cnione", alias=EP_ALIAS, mtu=1500, peer_mac=None, master="cnm-test")
    subprocess.run(["ip", "-n", netns, "link", "del", "cnm-test"], check=True)
    kernel.ensure_bridge("cnm-test", alias=ALIAS, mtu=1500)
    assert kernel.ensure_veth("cnvtwo", "cnitwo", alias=EP_ALIAS + "2", mtu=1500, peer_mac=None,
                              master="cnm-test") is True
    (two,) = ip_json("link", "show", "cnvtwo", netns=netns)
    assert two["master"] == "cnm-test" and two["ifalias"] == EP_ALIAS + "2"
    # A name already taken still takes the look-up path: the existing pair is re-attached.
    assert kernel.ensure_veth("cnvone", "cnione", alias=EP_ALIAS, mtu=1500, peer_mac=None,
                              master="cnm-test") is False
    (one,) = ip_json("link", "show", "cnvone", netns=netns)
    assert one["master"] == "cnm-test"


def test_reap_doomed_leaves_a_stranger_that_shares_the_group(kernel: Kernel, netns: str) -> None:
    """The doomed group is only a number: a foreign link set to it must survive the reaper."""
    kernel.ensure_bridge("cnm-reap", alias="cnmkit:net:reap", mtu=1500)
    kernel.ensure_veth("cnvdoomed", "cnidoomed", alias="cnmkit:ep:doomed", mtu=1500, peer_mac=None,
                       master="cnm-reap")
    subprocess.run(["ip", "-n", netns, "link", "add", "stranger", "type", "veth", "peer", "name", "stranger1"],
                   check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "stranger", "group", str(naming.DOOMED_GROUP)], check=True)
    assert kernel.link_doom("cnvdoomed", alias="cnmkit:ep:doomed", doomed_alias="cnmkit:doomed:doomed")
    kernel.reap_doomed()
    names = {x["ifname"] for x in ip_json("link", "show", netns=netns)}
    assert "cnvdoomed" not in names and "cnidoomed" not in names
    assert {"stranger", "stranger1"} <= names
    # Without a stranger, one group delete takes every doomed link.
    subprocess.run(["ip", "-n", netns, "link", "del", "stranger"], check=True)
    for n in ("a", "b"):
        kernel.ensure_veth(f"cnv{n}", f"cni{n}", alias=f"cnmkit:ep:{n}", mtu=1500, peer_mac=None, master="cnm-reap")
        kernel.link_doom(f"cnv{n}", alias=f"cnmkit:ep:{n}", doomed_alias=f"cnmkit:doomed:{n}")
    kernel.reap_doomed()
    assert not {"cnva", "cnvb"} & {x["ifname"] for x in ip_json("link", "show", netns=netns)}


def test_scan_links_agrees_with_iproute2_on_index_name_group_and_alias(kernel: Kernel, netns: str) -> None:
    """The reaper's cheap dump (drivers/rtbatch.py) reads the same four fields iproute2 shows,
    across more links than one netlink reply holds (the dump spans several recv calls)."""
    batch = "".join(f"link add scan{i} type veth peer name scanp{i}\n" for i in range(150))
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input=batch, text=True, check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "scan7", "group", "77", "alias", "cnmkit:doomed:x y"],
                   check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "scanp9", "alias", "ünï"], check=True)
    want = {(x["ifindex"], x["ifname"], int(x.get("group", "0")) if str(x.get("group", "0")).isdigit()
             else 0, x.get("ifalias", "")) for x in ip_json("link", "show", netns=netns)}
    got = {(b.index, b.name, b.group, b.alias) for b in kernel.scan_links()}
    assert got == want
    assert len(got) == 301
    assert (77, "cnmkit:doomed:x y") in {(g, a) for _, n, g, a in got if n == "scan7"}
    # One group only (what the reaper asks): the others are left out, not misread.
    assert [(b.name, b.group, b.alias) for b in kernel.scan_links(77)] == [("scan7", 77, "cnmkit:doomed:x y")]
    assert kernel.scan_links(78) == []


def test_link_doom_marks_once_and_takes_a_bridge_down(kernel: Kernel, netns: str) -> None:
    """Leave marks, DeleteEndpoint marks again: the second finds the mark and changes nothing;
    ``down`` (DeleteNetwork's bridge) also clears IFF_UP, even on a link marked before."""
    kernel.ensure_bridge("cnm-doom", alias="cnmkit:net:doom", mtu=1500)
    kernel.set_up("cnm-doom")
    assert kernel.link_doom("cnm-doom", alias="cnmkit:net:doom", doomed_alias="cnmkit:doomed:doom")
    (link,) = ip_json("link", "show", "cnm-doom", netns=netns)
    assert link["ifalias"] == "cnmkit:doomed:doom" and "UP" in link["flags"]
    assert kernel.link_doom("cnm-doom", alias="cnmkit:net:doom", doomed_alias="cnmkit:doomed:doom", down=True)
    (link,) = ip_json("link", "show", "cnm-doom", netns=netns)
    assert "UP" not in link["flags"] and int(link["group"]) == naming.DOOMED_GROUP
    assert kernel.link_doom("cnm-doom", alias="cnmkit:net:doom", doomed_alias="cnmkit:doomed:doom", down=True)
    kernel.reap_doomed()
    assert kernel.link_doom("cnm-doom", alias="cnmkit:net:doom", doomed_alias="cnmkit:doomed:doom") is False
