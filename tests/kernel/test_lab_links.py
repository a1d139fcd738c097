"""lab/links.py against the real kernel: point-to-point veths between two namespaces, a bridge
port, addresses, MTU, ownership and rollback. Everything happens in throwaway namespaces (the
"host" side inside one too, entered by this thread); iproute2 is the oracle."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from drivers.errors import LinkExists
from drivers.kernel import entered_netns
from lab import links
from tests.conftest import in_netns, ip_json

pytestmark = pytest.mark.kernel


def _path(ns: str) -> str:
    return f"/var/run/netns/{ns}"


def _links(ns: str) -> dict[str, dict]:
    return {x["ifname"]: x for x in ip_json("link", "show", netns=ns)}


def _addrs(ns: str, ifname: str) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for i in ip_json("addr", "show", "dev", ifname, netns=ns)
            for a in i["addr_info"] if a.get("scope") != "link"]


def _end(kind: str, node: str, ifname: str, *addrs: str) -> dict:
    return {"kind": kind, "node": node, "ifname": ifname, "addresses": list(addrs)}


def test_p2p_link_between_two_namespaces(netns_factory: Callable[[str], str]) -> None:
    a, b = netns_factory("a"), netns_factory("b")
    links.make_link("t1", _end("node", "a", "eth1", "10.83.0.1/30", "fd00:83::1/64"),
                    _end("node", "b", "eth7", "10.83.0.2/30"), _path(a), _path(b), 9000)
    la, lb = _links(a)["eth1"], _links(b)["eth7"]
    assert la["ifalias"] == "cnmkitlab:t1" and la["mtu"] == lb["mtu"] == 9000
    assert la["linkinfo"]["info_kind"] == lb["linkinfo"]["info_kind"] == "veth"
    assert "UP" in la["flags"] and "UP" in lb["flags"]
    assert _addrs(a, "eth1") == ["10.83.0.1/30", "fd00:83::1/64"] and _addrs(b, "eth7") == ["10.83.0.2/30"]
    assert in_netns(a, "ping", "-c", "1", "-W", "2", "10.83.0.2", check=False).returncode == 0
    # Only the owner's alias deletes it; the peer goes with it.
    with pytest.raises(LinkExists):
        links.remove_link("other", "eth1", _path(a))
    links.remove_link("t1", "eth1", _path(a))
    assert set(_links(a)) == {"lo"} and set(_links(b)) == {"lo"}
    links.remove_link("t1", "eth1", _path(a))                        # already gone: fine
    links.remove_link("t1", "eth1", "/var/run/netns/no-such-namespace")


def test_a_failed_link_leaves_nothing(netns_factory: Callable[[str], str]) -> None:
    a, b = netns_factory("a"), netns_factory("b")
    # The same address twice on b's end: the second add fails after the pair exists.
    with pytest.raises(LinkExists):
        links.make_link("t2", _end("node", "a", "eth1", "10.84.0.1/30"),
                        _end("node", "b", "eth1", "10.84.0.2/30", "10.84.0.2/30"), _path(a), _path(b), None)
    assert set(_links(a)) == {"lo"} and set(_links(b)) == {"lo"}
    # A name taken by somebody else's link: refused, and theirs is left alone.
    in_netns(a, "ip", "link", "add", "eth1", "type", "bridge")
    with pytest.raises(LinkExists):
        links.make_link("t2", _end("node", "a", "eth1"), _end("node", "b", "eth1"), _path(a), _path(b), None)
    assert _links(a)["eth1"]["linkinfo"]["info_kind"] == "bridge" and set(_links(b)) == {"lo"}


def test_bridge_ports_and_host_ends(netns_factory: Callable[[str], str]) -> None:
    host, node = netns_factory("h"), netns_factory("n")
    with entered_netns(_path(host)):                  # this thread's namespace plays the host's
        assert links.make_bridge("t3", "labbr") is True
        links.make_link("t3", _end("bridge", "labbr", "labbr-n"), _end("node", "n", "eth1", "10.85.0.2/24"),
                        None, _path(node), None)
        links.make_link("t3", _end("host", "host", "t3-host", "10.86.0.1/30"),
                        _end("node", "n", "eth2", "10.86.0.2/30"), None, _path(node), None)
        in_netns(host, "ip", "link", "add", "extbr", "type", "bridge")
        assert links.make_bridge("t3", "extbr") is False          # somebody else's: used, not claimed
    got = _links(host)
    assert got["labbr"]["ifalias"] == "cnmkitlab:t3" and got["labbr-n"]["master"] == "labbr"
    assert got["t3-host"]["ifalias"] == "cnmkitlab:t3" and _addrs(host, "t3-host") == ["10.86.0.1/30"]
    assert "ifalias" not in got["extbr"]
    assert in_netns(node, "ping", "-c", "1", "-W", "2", "10.86.0.1", check=False).returncode == 0
    with entered_netns(_path(host)):
        links.remove_link("t3", "t3-host", None)
        links.remove_bridge("t3", "labbr")
        with pytest.raises(LinkExists):
            links.remove_bridge("t3", "extbr")
    assert set(_links(host)) == {"lo", "extbr", "labbr-n"}          # a port outlives its bridge
    assert set(_links(node)) == {"lo", "eth1"}


def test_make_links_batch_bridges_ports_and_doomed_group_removal(netns_factory: Callable[[str], str]) -> None:
    """The deployer's batched path: bridges after one dump, node-to-node, node-to-bridge and
    bridge-to-bridge links in one ``make_links`` (bridge ports born enslaved and up), a failing
    link reported alone with nothing left of it, and the host-side rest removed as one group."""
    host, a, b = netns_factory("h"), netns_factory("a"), netns_factory("b")
    with entered_netns(_path(host)):
        assert links.make_bridges("t4", ["br1", "br2"]) == [True, True]
        new = [links.NewLink(_end("node", "a", "eth1", "10.87.0.1/30"), _end("node", "b", "eth1", "10.87.0.2/30"),
                             _path(a), _path(b), None),
               links.NewLink(_end("node", "a", "eth2", "10.88.0.1/24"), _end("bridge", "br1", "br1-a"),
                             _path(a), None, None),
               links.NewLink(_end("bridge", "br2", "br2-b"), _end("node", "b", "eth2", "10.88.0.2/24"),
                             None, _path(b), 1400),
               links.NewLink(_end("bridge", "br1", "br1-br2"), _end("bridge", "br2", "br2-br1"), None, None, None),
               links.NewLink(_end("node", "a", "eth3"), _end("node", "b", "lo"), _path(a), _path(b), None)]
        errors = links.make_links("t4", new)
    assert [e is None for e in errors] == [True, True, True, True, False]
    got = _links(host)
    assert got["br1"]["ifalias"] == "cnmkitlab:t4" and "UP" in got["br1"]["flags"]
    assert {n: got[n]["master"] for n in ("br1-a", "br2-b", "br1-br2", "br2-br1")} == {
        "br1-a": "br1", "br2-b": "br2", "br1-br2": "br1", "br2-br1": "br2"}
    assert all("UP" in got[n]["flags"] for n in ("br1-a", "br2-b", "br1-br2", "br2-br1"))
    assert got["br2-br1"]["ifalias"] == "cnmkitlab:t4" and got["br2-b"]["mtu"] == 1400
    assert set(_links(a)) == {"lo", "eth1", "eth2"} and _addrs(a, "eth2") == ["10.88.0.1/24"]
    assert _addrs(b, "eth1") == ["10.87.0.2/30"]
    assert in_netns(a, "ping", "-c", "1", "-W", "2", "10.87.0.2", check=False).returncode == 0
    assert in_netns(a, "ping", "-c", "1", "-W", "2", "10.88.0.2", check=False).returncode == 0   # br1-br2
    assert links.recorded_end("t4", new[1].a, new[1].b, _path(a), None) == ("eth2", _path(a), "")
    assert links.recorded_end("t4", new[3].a, new[3].b, None, None) == ("br2-br1", None, "cnmkitlab:t4")
    with entered_netns(_path(host)):
        in_netns(host, "ip", "link", "add", "stranger", "type", "bridge")
        errors = links.remove_links("t4", [("br2-br1", None, "cnmkitlab:t4"), ("stranger", None, None)])
        assert errors[0] is None and isinstance(errors[1], LinkExists)       # not ours: refused, kept
        assert links.remove_bridges("t4", ["br1", "br2"]) == [None, None]
    assert set(_links(host)) == {"lo", "stranger", "br1-a", "br2-b"}          # node links: with their nodes
