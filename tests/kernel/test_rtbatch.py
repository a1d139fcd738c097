"""drivers/rtbatch.py against the real kernel, in a throwaway namespace entered by this thread:
many requests per sendmsg answered one errno each and in order (across chunks), a dump's fields
as iproute2 reports them, veth pairs born in two namespaces, and a group delete that takes only
the group. iproute2 is the oracle."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from drivers import rtbatch
from drivers.errors import LinkExists
from drivers.kernel import entered_netns
from tests.conftest import ip_json

pytestmark = pytest.mark.kernel


def _links(ns: str) -> dict[str, dict]:
    return {x["ifname"]: x for x in ip_json("link", "show", netns=ns)}


def test_batch_answers_every_request_in_order_and_dump_matches_iproute2(
        netns_factory: Callable[[str], str]) -> None:
    host, node = netns_factory("h"), netns_factory("n")
    count = 70                                          # more than one chunk of requests
    with entered_netns(f"/var/run/netns/{host}"), rtbatch.LinkBatch() as nl:
        names = [f"rb{i}" for i in range(count)]
        requests = [rtbatch.bridge(n, mtu=1500) for n in names]
        requests.insert(35, rtbatch.bridge("rb3", mtu=1500))            # taken: fails alone
        codes = nl.run(requests)
        assert codes == [0] * 35 + [errno.EEXIST] + [0] * (count - 35)
        assert isinstance(rtbatch.kernel_error("create bridge rb3", codes[35]), LinkExists)
        assert nl.run([rtbatch.set_link(name="rb1", alias="cnmkitlab:x", group=4321)]) == [0]
        index = {link.name: link.index for link in nl.dump()}
        made = rtbatch.make_veths(nl, [
            rtbatch.Veth("rbp", "eth1", "/proc/thread-self/ns/net", f"/var/run/netns/{node}", 1400, index["rb1"]),
            rtbatch.Veth("rbq", "lo", "/proc/thread-self/ns/net", f"/var/run/netns/{node}")])   # lo exists there
        assert made[0] is None and isinstance(made[1], LinkExists)
        dumped = {link.name: link for link in nl.dump()}
    got = _links(host)
    assert set(names) <= set(got) and all("UP" in got[n]["flags"] for n in names)
    assert dumped["rb1"] == rtbatch.Link(got["rb1"]["ifindex"], "rb1", "cnmkitlab:x", 4321, 0, "bridge",
                                         dumped["rb1"].flags)
    assert dumped["rb1"].flags & rtbatch.IFF_UP
    assert dumped["rbp"].master == got["rb1"]["ifindex"] and dumped["rbp"].kind == "veth"
    assert got["rbp"]["master"] == "rb1" and got["rbp"]["mtu"] == 1400 and "UP" in got["rbp"]["flags"]
    assert "rbq" not in got and _links(node)["eth1"]["mtu"] == 1400

    with entered_netns(f"/var/run/netns/{host}"), rtbatch.LinkBatch() as nl:
        assert nl.run([rtbatch.set_link(index=dumped[n].index, group=4321) for n in ("rb2", "rbp")]) == [0, 0]
        assert nl.run([rtbatch.delete_group(4321)]) == [0]
        assert nl.run([rtbatch.delete(name="rb9"), rtbatch.delete(name="rb9")]) == [0, errno.ENODEV]
    left = set(_links(host))
    assert not {"rb1", "rb2", "rbp", "rb9"} & left and {"rb0", "rb3", "rb69"} <= left
    assert set(_links(node)) == {"lo"}                                   # the peer went with rbp


def test_get_rename_mac_mtu_up_down_address_and_route(netns_factory: Callable[[str], str]) -> None:
    """The requests of the runtime's configure step and of the doom mark, checked with iproute2."""
    ns = netns_factory("g")
    with entered_netns(f"/var/run/netns/{ns}"), rtbatch.LinkBatch() as nl:
        assert nl.get("nosuch0") is None
        assert nl.run([rtbatch.veth("rga", "rgb", mtu=1500)]) == [0]
        link = nl.get("rga")
        assert link is not None and link.kind == "veth" and not link.flags & rtbatch.IFF_UP
        assert nl.run([rtbatch.set_link(index=link.index, new_name="eth7", mac="02:00:00:00:77:07", mtu=1400,
                                        up=True),
                       rtbatch.address(link.index, "10.77.0.2/24"), rtbatch.address(link.index, "fd00:77::2/64"),
                       rtbatch.route("default", gateway="10.77.0.1"),
                       rtbatch.route("198.51.100.0/24", oif=link.index),
                       rtbatch.address(link.index, "10.77.0.2/24")]) == [0, 0, 0, 0, 0, errno.EEXIST]
        renamed = nl.get("eth7")
        assert renamed is not None and renamed.index == link.index and renamed.flags & rtbatch.IFF_UP
        (eth7,) = ip_json("link", "show", "eth7", netns=ns)
        assert eth7["address"] == "02:00:00:00:77:07" and eth7["mtu"] == 1400
        addrs = {(a["local"], a["prefixlen"], bool(a.get("nodad"))) for a in ip_json("addr", "show", "eth7",
                                                                                      netns=ns)[0]["addr_info"]}
        assert {("10.77.0.2", 24, False), ("fd00:77::2", 64, True)} <= addrs
        routes = {r["dst"]: r for r in ip_json("route", netns=ns)}
        assert routes["default"]["gateway"] == "10.77.0.1" and routes["default"]["dev"] == "eth7"
        assert "gateway" not in routes["198.51.100.0/24"] and routes["198.51.100.0/24"]["scope"] == "link"
        assert nl.run([rtbatch.set_link(index=link.index, down=True)]) == [0]
        down = nl.get("eth7")
        assert down is not None and not down.flags & rtbatch.IFF_UP
