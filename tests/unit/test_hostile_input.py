"""Hostile input at the protocol edge: every refusal names its field, nothing is made, the daemon serves on.

Each test talks to a real Daemon over its unix sockets (tests/daemon_thread.py) exactly as dockerd or a
hostile client on the socket would. The bridge driver runs on the fake kernel and the fake iptables, so
"nothing is made" is checked on every link and every iptables call the driver issued; the kernel and
docker tiers check the same with real links and real iptables.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers import naming
from drivers.bridge import BridgeDriver
from drivers.firewall import Firewall
from plugin.quoting import bounded, shown
from plugin.server import DaemonConfig
from tests.daemon_thread import DaemonThread
from tests.fakekernel import HOST, FakeIptables, FakeKernel, FakeSysctl
from tests.unit.test_plugin_protocol import raw_post

NID = "a" * 64
NID2 = "c" * 64
EID = "b" * 64
GENERIC = "com.docker.network.generic"
BRIDGE_NAME = "com.docker.network.bridge.name"


@dataclass
class Plugin:
    """A daemon serving cnmkit-bridge on the fakes, plus its sockets and fakes for the oracle."""

    dir: Path
    kernel: FakeKernel
    ipt: FakeIptables
    sandboxes: Path

    def net(self, path: str, body: object) -> dict:
        status, reply = raw_post(str(self.dir / "cnmkit-bridge.sock"), path, _encode(body))
        assert status == 200, reply
        return reply

    def ipam(self, path: str, body: object) -> dict:
        status, reply = raw_post(str(self.dir / "cnmkit.sock"), path, _encode(body))
        assert status == 200, reply
        return reply

    def refused(self, path: str, body: object, field: str) -> str:
        """Send a request that must be refused; the error names ``field``; the daemon still serves."""
        sock = "cnmkit.sock" if path.startswith("/IpamDriver.") or path.startswith("/Cnmkit.") else \
            "cnmkit-bridge.sock"
        status, reply = raw_post(str(self.dir / sock), path, _encode(body))
        assert status == 200, reply
        err = reply.get("Err", "")
        assert err, f"{path} was accepted: {reply}"
        assert field in err, err
        assert "internal error" not in err, err
        assert self.serving()
        return err

    def serving(self) -> bool:
        return (self.net("/Plugin.Activate", b"") == {"Implements": ["NetworkDriver"]}
                and self.ipam("/Plugin.Activate", b"") == {"Implements": ["IpamDriver"]})

    def networks(self) -> list[dict]:
        return self.ipam("/Cnmkit.NetworkList", {})["Networks"]

    def nothing_made(self) -> None:
        assert self.networks() == []
        assert self.kernel.links() == []
        assert self.ipt.calls == []
        assert self.ipam("/Cnmkit.PoolList", {})["Pools"] == []


def _encode(body: object) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Plugin]:
    kernel, ipt = FakeKernel(), FakeIptables()
    sandboxes = tmp_path / "run" / "netns"
    sandboxes.mkdir(parents=True)
    driver = BridgeDriver(kernel, Firewall(run=ipt, sysctl=FakeSysctl()), sandbox_dirs=[str(sandboxes)])
    config = DaemonConfig(plugin_dir=str(tmp_path / "p"), state_dir=str(tmp_path / "s"),
                          store_url=f"sqlite://{tmp_path}/state.db")
    daemon = DaemonThread(config, drivers=[driver]).start()
    try:
        yield Plugin(tmp_path / "p", kernel, ipt, sandboxes)
    finally:
        daemon.stop()


def create_body(nid: str = NID, pool: str = "10.91.0.0/24", gateway: str = "10.91.0.1/24",
                **generic: str) -> dict:
    return {"NetworkID": nid, "Options": {GENERIC: generic, "com.docker.network.enable_ipv6": False},
            "IPv4Data": [{"AddressSpace": "x", "Pool": pool, "Gateway": gateway}], "IPv6Data": []}


# -- 1. driver options ----------------------------------------------------------------------------

def test_unknown_options_are_kept_shown_by_inspect_and_warned(plugin: Plugin,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cnmkit.manager")
    body = create_body(**{"foo": "bar", "com.example.tool.label": "v1", "cnmkit.name": "labelled"})
    assert plugin.net("/NetworkDriver.CreateNetwork", body) == {}
    options = plugin.ipam("/Cnmkit.NetworkInspect", {"Network": "labelled"})["Network"]["Options"]
    assert options == {"foo": "bar", "com.example.tool.label": "v1"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("foo" in w and "com.example.tool.label" in w and NID[:12] in w for w in warnings), warnings
    assert plugin.kernel.link_get(naming.bridge_name(NID)) is not None       # and the network works


@pytest.mark.parametrize("option,value", [
    ("cnmkit.bogus", "1"),                          # our own namespace: a key we lack is a typo
    ("cnmkit.direct", "true"),                      # a Join option, meaningless at create
    ("com.docker.network.driver.mtu", "abc"),
    ("com.docker.network.driver.mtu", "9" * 80),
    ("com.docker.network.driver.mtu", "1\n500"),
    (BRIDGE_NAME, "eth+"),
])
def test_our_namespace_and_malformed_known_options_are_refused(plugin: Plugin, option: str, value: str) -> None:
    err = plugin.refused("/NetworkDriver.CreateNetwork", create_body(**{option: value}), f"option {option}")
    assert "\n" not in err
    plugin.nothing_made()


# -- 2. interface names -------------------------------------------------------------------------------

HOSTILE_IFNAMES = ["eth+", "+", "br%d", "%d", 'q"', "q'", "a\\b", "-x", "--jump", "!x", "a b", "a\tb", "a\nb",
                   "x" * 16, ".", "..", ".x", "br/0", "br:0", "br\x00", "br\x1b", "é", "br*", "br$x", "br;x",
                   "br`x`", "a" * 15 + "\n"]


@pytest.mark.parametrize("name", HOSTILE_IFNAMES)
def test_hostile_bridge_names_are_refused_and_leave_nothing(plugin: Plugin, name: str) -> None:
    plugin.refused("/NetworkDriver.CreateNetwork", create_body(**{BRIDGE_NAME: name}), f"option {BRIDGE_NAME}")
    plugin.nothing_made()


@pytest.mark.parametrize("name", HOSTILE_IFNAMES)
def test_valid_ifname_refuses_what_iptables_or_the_kernel_treat_specially(name: str) -> None:
    assert naming.valid_ifname(name) is False


@pytest.mark.parametrize("name", ["br0", "br-lab_1.x", "_x", "0", "a" * 15, "Lab.Net-1"])
def test_plain_bridge_names_still_work(plugin: Plugin, name: str) -> None:
    assert naming.valid_ifname(name)
    assert plugin.net("/NetworkDriver.CreateNetwork", create_body(**{BRIDGE_NAME: name})) == {}
    assert plugin.kernel.link_get(name) is not None


# -- 3. ids ---------------------------------------------------------------------------------------------

BAD_IDS = ["a" * 64 + "\n", "a" * 64 + "\r\n", "\n" + "a" * 64, "A" * 64, "a" * 63, "a" * 65, " " + "a" * 63,
           "a" * 63 + "g", "a" * 12, "../" + "a" * 61]
ID_CALLS = ["CreateNetwork", "DeleteNetwork", "CreateEndpoint", "DeleteEndpoint", "Join", "Leave",
            "EndpointOperInfo", "ProgramExternalConnectivity", "RevokeExternalConnectivity"]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("call", ID_CALLS)
def test_every_id_taking_call_wants_exactly_64_lowercase_hex(plugin: Plugin, call: str, bad: str) -> None:
    good = {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/x", "Options": {}, "Interface": {}}
    fields = ["NetworkID"] if "Network" in call else ["NetworkID", "EndpointID"]
    for field in fields:
        err = plugin.refused(f"/NetworkDriver.{call}", {**good, field: bad}, f"{field}:")
        assert "64-character lowercase hex id" in err and "\n" not in err
    plugin.nothing_made()


@pytest.mark.parametrize("bad", BAD_IDS)
def test_check_id_refuses_anything_but_64_hex(bad: str) -> None:
    with pytest.raises(ValueError):
        naming.check_id(bad)
    with pytest.raises(ValueError):
        naming.bridge_name(bad)


# -- 4. pools -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data,field", [
    ({"IPv4Data": [{"Pool": "0.0.0.0/0"}]}, "IPv4Data[0].Pool"),
    ({"IPv4Data": [{"Pool": "10.0.0.0/7"}]}, "IPv4Data[0].Pool"),
    ({"IPv4Data": [{"Pool": "10.0.0.1/24"}]}, "IPv4Data[0].Pool"),
    ({"IPv4Data": [{"Pool": "10.92.0.0/24"}, {"Pool": "10.93.0.9/24"}]}, "IPv4Data[1].Pool"),
    ({"IPv6Data": [{"Pool": "::/0"}]}, "IPv6Data[0].Pool"),
    ({"IPv6Data": [{"Pool": "fd00::1/64"}]}, "IPv6Data[0].Pool"),
    ({"IPv4Data": [{"Pool": "10.94.0.0/24", "Gateway": "10.95.0.1/24"}]}, "IPv4Data[0].Gateway"),
    ({"IPv4Data": [{"Pool": "10.94.0.0/24", "AuxAddresses": {"router": "10.95.0.9/24"}}]},
     "IPv4Data[0].AuxAddresses.router"),
    ({"IPv4Data": [{"Pool": "10.94.0.0/24", "AuxAddresses": {"a\nb": "10.95.0.9/24"}}]},
     "IPv4Data[0].AuxAddresses.a\\nb"),
])
def test_create_network_refuses_hostile_pools_naming_the_field(plugin: Plugin, data: dict, field: str) -> None:
    plugin.refused("/NetworkDriver.CreateNetwork", {"NetworkID": NID, "Options": {GENERIC: {}}, **data}, field)
    plugin.nothing_made()


@pytest.mark.parametrize("body,field", [
    ({"AddressSpace": "cnmkit-local", "Pool": "10.96.0.1/24"}, "Pool: '10.96.0.1/24' has host bits set"),
    ({"AddressSpace": "cnmkit-local", "Pool": "0.0.0.0/0"}, "Pool:"),
    ({"AddressSpace": "cnmkit-local", "Pool": "10.0.0.0/4"}, "Pool:"),
    ({"AddressSpace": "cnmkit-local", "Pool": "::/0", "V6": True}, "Pool:"),
    ({"AddressSpace": "cnmkit-local", "Pool": "10.96.0.0/24", "SubPool": "10.96.0.129/25"}, "SubPool:"),
])
def test_request_pool_refuses_hostile_pools_naming_the_field(plugin: Plugin, body: dict, field: str) -> None:
    status, reply = raw_post(str(plugin.dir / "cnmkit.sock"), "/IpamDriver.RequestPool", json.dumps(body).encode())
    assert status == 200 and field in reply["Error"], reply
    assert plugin.serving()
    plugin.nothing_made()


# -- 5. MACs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mac", ["00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01",
                                 "33:33:00:00:00:01", "02:00:00:00:00:01\n", "02:00:00:00:00"])
def test_create_endpoint_refuses_zero_broadcast_and_multicast_macs(plugin: Plugin, mac: str) -> None:
    assert plugin.net("/NetworkDriver.CreateNetwork", create_body()) == {}
    body = {"NetworkID": NID, "EndpointID": EID, "Interface": {"MacAddress": mac}}
    plugin.refused("/NetworkDriver.CreateEndpoint", body, "Interface.MacAddress")
    assert plugin.ipam("/Cnmkit.NetworkInspect", {"Network": NID})["Network"]["EndpointList"] == []


def test_inspect_without_endpoints_answers_the_record_alone_and_checks_the_flag(plugin: Plugin) -> None:
    """What an attach asks (client/engine.py): the network's record, no listing of its endpoints."""
    assert plugin.net("/NetworkDriver.CreateNetwork", create_body()) == {}
    body = {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "10.91.0.5/24"}}
    assert "Interface" in plugin.net("/NetworkDriver.CreateEndpoint", body)
    full = plugin.ipam("/Cnmkit.NetworkInspect", {"Network": NID})["Network"]
    light = plugin.ipam("/Cnmkit.NetworkInspect", {"Network": NID, "Endpoints": False})["Network"]
    assert [ep["EndpointID"] for ep in full["EndpointList"]] == [EID] and full["Endpoints"] == 1
    assert light == {k: v for k, v in full.items() if k not in ("Endpoints", "EndpointList")}
    plugin.refused("/Cnmkit.NetworkInspect", {"Network": NID, "Endpoints": "some"}, "Endpoints")


# -- 6. sandbox keys -----------------------------------------------------------------------------------

def _endpoint(plugin: Plugin) -> dict:
    assert plugin.net("/NetworkDriver.CreateNetwork", create_body()) == {}
    ref = {"NetworkID": NID, "EndpointID": EID}
    assert plugin.net("/NetworkDriver.CreateEndpoint", {**ref, "Interface": {"Address": "10.91.0.5/24"}})
    return ref


def test_direct_join_opens_only_files_directly_in_the_sandbox_dirs(plugin: Plugin, tmp_path: Path) -> None:
    ref = _endpoint(plugin)
    (plugin.sandboxes / "sub").mkdir()
    (plugin.sandboxes / "sub" / "x").touch()
    outside = tmp_path / "outside"
    outside.touch()
    (plugin.sandboxes / "link").symlink_to(outside)
    (plugin.sandboxes / "proc").symlink_to("/proc/self/ns/net")
    hostile = ["/proc/1/ns/net", "/proc/self/ns/net", str(outside), str(plugin.sandboxes / ".." / "outside"),
               str(plugin.sandboxes / "sub" / "x"), str(plugin.sandboxes / "link"), str(plugin.sandboxes / "proc"),
               str(plugin.sandboxes), "relative/x", str(plugin.sandboxes / "ok") + "\n"]
    for key in hostile:
        body = {**ref, "SandboxKey": key, "Options": {"cnmkit.direct": True}}
        plugin.refused("/NetworkDriver.Join", body, "SandboxKey")
        assert set(plugin.kernel.links_by_ns) == {HOST}, key              # nothing put anywhere
        assert plugin.kernel.link_get(naming.container_veth_name(EID)) is None
    good = plugin.sandboxes / "ok"
    good.touch()
    reply = plugin.net("/NetworkDriver.Join", {**ref, "SandboxKey": str(good), "Options": {"cnmkit.direct": True}})
    assert reply["InterfaceName"]["SrcName"] == naming.container_veth_name(EID)
    assert naming.container_veth_name(EID) in plugin.kernel.links_by_ns[str(good)]


def test_sandbox_key_without_direct_is_only_stored_but_bounded(plugin: Plugin) -> None:
    ref = _endpoint(plugin)
    plugin.refused("/NetworkDriver.Join", {**ref, "SandboxKey": "/var/run/docker/netns/" + "x" * 2000},
                   "SandboxKey")
    plugin.refused("/NetworkDriver.Join", {**ref, "SandboxKey": "/x\x00y"}, "SandboxKey")
    # Docker's own keys are never opened by us without direct: stored and echoed only.
    assert plugin.net("/NetworkDriver.Join", {**ref, "SandboxKey": "/var/run/docker/netns/0123456789ab"})
    assert plugin.kernel.link_get(naming.container_veth_name(EID)) is not None


# -- 7. JSON nesting and body size; bounded echoes ---------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"NetworkID": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
    b'{"Options": ' + b"[" * 33 + b"]" * 33 + b"}",
    b'{"x": "' + b"y" * (2 << 20) + b'"}',
])
def test_deep_or_huge_bodies_are_refused_as_body_errors(plugin: Plugin, body: bytes) -> None:
    for path in ("/NetworkDriver.CreateNetwork", "/IpamDriver.RequestPool"):
        err = plugin.refused(path, body, "body: ")
        assert len(err) < 200
    plugin.nothing_made()


def test_brackets_inside_strings_do_not_count_as_nesting(plugin: Plugin) -> None:
    body = json.dumps({"NetworkID": NID, "Options": {GENERIC: {"foo": "[" * 100 + '"\\' + "{" * 100}},
                       "IPv4Data": [{"Pool": "10.97.0.0/24"}]}).encode()
    assert plugin.net("/NetworkDriver.CreateNetwork", body) == {}


def test_echoed_values_are_cut_and_escaped_in_replies_and_logs(plugin: Plugin,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    huge, escape = "x" * 100_000, "\x1b[2J\x1b]0;pwned\x07\nFAKE LOG LINE\u2028"
    replies = [
        plugin.refused("/NetworkDriver.CreateNetwork", {"NetworkID": huge}, "NetworkID"),
        plugin.refused("/NetworkDriver.CreateNetwork", {"NetworkID": escape}, "NetworkID"),
        plugin.refused("/NetworkDriver.CreateNetwork", create_body(**{BRIDGE_NAME: escape}), BRIDGE_NAME),
        plugin.refused("/NetworkDriver.CreateNetwork", create_body(**{"com.docker.network.driver.mtu": huge}),
                       "mtu"),
        plugin.refused("/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID,
                                                         "Interface": {"MacAddress": escape + huge}}, "MacAddress"),
        plugin.refused("/IpamDriver.RequestPool", {"AddressSpace": escape, "Pool": ""}, "AddressSpace"),
        plugin.refused("/IpamDriver.RequestPool", {"AddressSpace": "cnmkit-local", "Pool": huge}, "Pool"),
        plugin.refused("/IpamDriver.RequestAddress", {"PoolID": huge + escape, "Address": ""}, "PoolID"),
        plugin.refused("/Cnmkit.NetworkInspect", {"Network": escape}, "Network"),
    ]
    lines = replies + [r.getMessage() for r in caplog.records]
    for text in lines:
        assert len(text) < 400, text[:200]
        assert not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 or c in "\u2028\u2029" for c in text), text
    assert any("...(100000 chars)" in r for r in replies)
    assert any("\\x1b[2J" in r for r in replies)                      # shown escaped, not dropped


def test_shown_and_bounded() -> None:
    assert shown("abc") == "'abc'"
    assert shown("a\nb\x1b") == "'a\\nb\\x1b'"
    assert shown("x" * 100) == "'" + "x" * 64 + "'...(100 chars)"
    assert shown({"k": "v\n"}) == "{'k': 'v\\n'}"
    assert bounded("ok\nnext\x1b") == "ok\\x0anext\\x1b"
    assert bounded("y" * 5000).endswith("...(5000 chars)") and len(bounded("y" * 5000)) < 1100


# -- 8. network names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bad\nname", "\x1b[2Jclear", "a" * 65, "-x", ".hidden", "sp ace", "tab\t",
                                  "x/y", "ünï", "name\n", "a\u2028b"])
def test_network_names_are_one_plain_token(plugin: Plugin, name: str) -> None:
    plugin.refused("/NetworkDriver.CreateNetwork", create_body(**{"cnmkit.name": name}), "cnmkit.name")
    plugin.nothing_made()


@pytest.mark.parametrize("name", ["lab", "Lab-1.x_y", "0", "a" * 64])
def test_plain_network_names_still_work(plugin: Plugin, name: str) -> None:
    assert plugin.net("/NetworkDriver.CreateNetwork", create_body(**{"cnmkit.name": name})) == {}
    assert plugin.ipam("/Cnmkit.NetworkInspect", {"Network": name})["Network"]["Id"] == NID


def test_sandbox_dirs_default_to_docker_and_the_runtime_run_dir(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    from plugin.server import default_sandbox_dirs
    monkeypatch.setenv("CNMKIT_RUN_DIR", str(tmp_path))
    assert default_sandbox_dirs() == ["/var/run/docker/netns", "/run/docker/netns", str(tmp_path / "netns")]
    monkeypatch.delenv("CNMKIT_RUN_DIR")
    assert default_sandbox_dirs()[-1] == os.path.join("/run/cnmkit", "netns")
