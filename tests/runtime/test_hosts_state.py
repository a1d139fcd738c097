"""Pure logic of the runtime: hosts/resolv rendering, --network parsing, the record store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime import hosts
from runtime.hosts import HostEntry, render_hosts, render_resolv, write_in_place
from runtime.state import ContainerConfig, NetworkRequest, StateStore


def test_hosts_lists_self_then_peers_with_aliases_merged_per_address() -> None:
    text = render_hosts([HostEntry("10.0.0.2", ("web", "web"))],
                        [HostEntry("10.0.0.10", ("db", "db", "database")), HostEntry("10.0.0.3", ("cache",)),
                         HostEntry("10.0.0.10", ("db", "primary"))])
    lines = text.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert "10.0.0.2\tweb" in lines
    assert lines[-2:] == ["10.0.0.3\tcache", "10.0.0.10\tdb database primary"]


def test_resolv_drops_loopback_nameservers_and_keeps_the_rest() -> None:
    host = "# generated\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver ::1\nsearch example.org\n" \
           "options edns0\n"
    assert render_resolv(host) == "nameserver 192.0.2.1\nsearch example.org\noptions edns0\n"
    assert render_resolv("nameserver 127.0.0.1\n") == ""


def test_write_in_place_keeps_the_inode(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("a much longer original content\n")
    inode = os.stat(path).st_ino
    write_in_place(str(path), "short\n")
    assert os.stat(path).st_ino == inode
    assert path.read_text() == "short\n"


def test_network_request_parsing() -> None:
    req = NetworkRequest.parse("front,ip=10.0.0.5,alias=web,alias=www")
    assert (req.network, req.ip, req.aliases) == ("front", "10.0.0.5", ["web", "www"])
    for bad in ("", "ip=10.0.0.5", "front,ip", "front,color=red"):
        with pytest.raises(ValueError):
            NetworkRequest.parse(bad)


def test_store_finds_by_name_id_and_prefix_and_deletes(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    cfg = ContainerConfig(id="ab" * 32, name="web", command=["true"], hostname="web",
                          networks=[NetworkRequest("n1", ip="10.0.0.5")])
    with store.locked():
        store.create(cfg)
    assert store.find("web") == cfg.id and store.find(cfg.id) == cfg.id and store.find("abab") == cfg.id
    assert store.find("nope") is None
    assert store.name_taken("web")
    assert store.load_config(cfg.id).networks[0].ip == "10.0.0.5"
    store.delete(cfg.id)
    assert store.ids() == [] and not store.name_taken("web")


def test_render_all_matches_rendering_each_file_alone() -> None:
    """The one-pass renderer gives every container exactly the file render_hosts gives it."""
    def att(net: str, v4: str, v6: str = "", aliases: tuple[str, ...] = ()) -> dict:
        return {"network_id": net, "address": v4, "address_v6": v6, "aliases": list(aliases)}

    members = {
        "a": hosts.Member("a", "ha", (att("n1", "10.0.0.9/24", "fd00::9/64"),)),
        "b": hosts.Member("b", "hb", (att("n1", "10.0.0.10/24", aliases=("db",)), att("n2", "10.1.0.2/24"))),
        "c": hosts.Member("c", "hc", (att("n2", "10.1.0.3/24"),)),
        "d": hosts.Member("d", "hd", (att("n3", "10.2.0.2/24"),)),
    }
    rendered = hosts.render_all(members)
    for cid, m in members.items():
        own = [hosts.HostEntry(a[k].split("/")[0], (m.hostname, m.name))
               for a in m.attachments for k in ("address", "address_v6") if a.get(k)]
        nets = {a["network_id"] for a in m.attachments}
        peers = [hosts.HostEntry(a[k].split("/")[0], (o.name, o.hostname, *a["aliases"]))
                 for oid, o in members.items() if oid != cid
                 for a in o.attachments if a["network_id"] in nets
                 for k in ("address", "address_v6") if a.get(k)]
        assert rendered[cid] == hosts.render_hosts(own, peers)
    assert "10.0.0.10\tb hb db" in rendered["a"] and "10.1.0" not in rendered["a"]
    assert "10.0.0.9\ta ha" in rendered["b"] and "10.1.0.3\tc hc" in rendered["b"]
    assert "10.0.0" not in rendered["d"] and "10.1.0" not in rendered["d"]
