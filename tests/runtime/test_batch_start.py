"""The batch path (runtime/batch.py): many real containers started and removed at once.

Driven in-process, as the lab deployer calls it, against a real daemon in a throwaway host netns;
every claim is checked from outside with the kernel's own view (/proc/PID/ns links, /proc/PID/exe,
``ip -j`` inside the node's netns, the mount table).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from runtime import process
from runtime.batch import BatchError, Link, NodeStart, start_nodes
from runtime.containers import ContainerError, ContainerService
from runtime.supervisor import FRESH_FROM
from tests.conftest import ip_json
from tests.runtime.conftest import Host

pytestmark = pytest.mark.runtime

NAMESPACES = ("net", "uts", "mnt", "pid")


def _service(h: Host) -> ContainerService:
    return ContainerService(str(h.state_dir), str(h.plugin_dir), str(h.run_dir))


def _ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc/PID/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in os.listdir(f"/proc/{p}/task"):
            todo += [int(k) for k in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
    return out


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _in_node(init_pid: int, *argv: str) -> str:
    return subprocess.run(["nsenter", "-t", str(init_pid), "--net", "--uts", "--mount", "--pid", *argv],
                          capture_output=True, text=True, check=True).stdout


def test_batch_gives_every_node_its_namespaces_no_python_and_correct_hosts(host: Host) -> None:
    h = host
    h.cli("network", "create", "--subnet", "10.97.0.0/24", "lan")
    svc = _service(h)
    try:
        specs = [NodeStart(f"n{i}", ["sleep", "100000"], networks=["lan"], hostname=f"host{i}") for i in range(5)]
        specs.append(NodeStart("solo", ["sleep", "100000"]))
        links = [Link("n0", "p1", "solo", "p1", mtu=1400, a_address="192.0.2.1/30", b_address="192.0.2.2/30")]
        nodes = svc.start_many(specs, links)
        assert [n.name for n in nodes] == [s.name for s in specs]

        mine = {kind: _ns("self", kind) for kind in NAMESPACES}
        seen: dict[str, set[str]] = {kind: set() for kind in NAMESPACES}
        for node in nodes:
            for kind in NAMESPACES:
                link = _ns(node.init_pid, kind)
                assert link != mine[kind], f"{node.name} shares the {kind} namespace with the host"
                seen[kind].add(link)
            exe = os.path.basename(os.readlink(f"/proc/{node.init_pid}/exe"))
            assert not exe.startswith("python"), f"{node.name}'s init is {exe}"
            for pid in _tree(node.init_pid):
                assert not os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("python")
            assert node.pid in _tree(node.init_pid) and node.pid != node.init_pid
            assert _in_node(node.init_pid, "hostname").strip() == (
                node.name.replace("n", "host") if node.name != "solo" else "solo")
        assert all(len(links) == len(nodes) for links in seen.values()), "every node has namespaces of its own"

        # Hosts: each LAN node resolves every other one to the address the plugin gave it.
        addresses = {r["Name"]: r["Networks"].get("lan", "").split("/")[0] for r in h.json("ps")}
        for node in nodes[:5]:
            hosts_lines = [line.split() for line in _in_node(node.init_pid, "cat", "/etc/hosts").splitlines()]
            for other in nodes[:5]:
                assert any(words[0] == addresses[other.name] and other.name in words for words in hosts_lines), \
                    (node.name, other.name, hosts_lines)
            assert not any("solo" in words for words in hosts_lines)

        # The LAN side as the Join said: address, MAC, up, default route via the gateway.
        gateway = json.loads(h.cli("network", "inspect", "lan").stdout)[0]["IPv4"][0]["Gateway"].split("/")[0]
        for node in nodes[:5]:
            (eth0,) = json.loads(_in_node(node.init_pid, "ip", "-j", "addr", "show", "eth0"))
            assert "UP" in eth0["flags"]
            assert [a["local"] for a in eth0["addr_info"] if a["family"] == "inet"] == [addresses[node.name]]
            routes = json.loads(_in_node(node.init_pid, "ip", "-j", "route"))
            assert {"dst": "default", "gateway": gateway, "dev": "eth0"}.items() <= next(
                r for r in routes if r["dst"] == "default").items()

        # The link: both ends up, addressed, in the right namespaces (iproute2 as the oracle).
        end_a = json.loads(_in_node(nodes[0].init_pid, "ip", "-j", "addr", "show", "p1"))[0]
        end_b = json.loads(_in_node(nodes[5].init_pid, "ip", "-j", "addr", "show", "p1"))[0]
        assert end_a["mtu"] == end_b["mtu"] == 1400
        assert "UP" in end_a["flags"] and "UP" in end_b["flags"]
        assert {a["local"] for a in end_a["addr_info"]} >= {"192.0.2.1"}
        assert {a["local"] for a in end_b["addr_info"]} >= {"192.0.2.2"}
        _in_node(nodes[0].init_pid, "ping", "-c1", "-W5", "192.0.2.2")
        _in_node(nodes[0].init_pid, "ping", "-c1", "-W5", "n3")

        pids = [p for node in nodes for p in _tree(node.init_pid)]
        supervisors = {json.loads((h.state_dir / "containers" / n.id / "state.json").read_text())["shim_pid"]
                       for n in nodes}
        assert len(supervisors) == 1, "one supervisor for the whole batch"
        host_links_before = {link["ifname"] for link in ip_json("link", "show", netns=h.netns)}

        removed = svc.stop_many([n.name for n in nodes], timeout=10.0)
        assert sorted(removed) == sorted(n.id for n in nodes)
        assert [p for p in (*pids, *supervisors) if _running(p)] == []
        assert svc.store.ids() == []
        assert not list((h.run_dir / "netns").iterdir())
        assert str(h.run_dir) not in Path("/proc/self/mountinfo").read_text()
        host_links = {link["ifname"] for link in ip_json("link", "show", netns=h.netns)}
        veths = [link["ifname"] for link in ip_json("link", "show", netns=h.netns)
                 if link.get("linkinfo", {}).get("info_kind") == "veth"]
        assert veths == [] and host_links < host_links_before
        assert json.loads(h.cli("--format", "json", "network", "inspect", "lan").stdout)[0]["EndpointList"] == []
    finally:
        svc.close()
        h.cli("network", "rm", "lan", check=False)


def test_a_failing_node_unwinds_the_whole_batch(host: Host) -> None:
    h = host
    h.cli("network", "create", "--subnet", "10.98.0.0/29", "tiny")
    svc = _service(h)
    try:
        # Six addresses in a /29 (gateway taken): the seventh node cannot get one.
        specs = [NodeStart(f"t{i}", ["sleep", "100000"], networks=["tiny"]) for i in range(7)]
        seen: list[str] = []
        with pytest.raises(BatchError) as caught:
            start_nodes(svc, specs, lambda node: seen.append(node.name))
        assert caught.value.failed in {s.name for s in specs}, str(caught.value)
        assert str(caught.value).startswith(f"{caught.value.failed}: ")
        assert caught.value.started == [] and seen == []
        assert svc.store.ids() == []
        assert not list((h.run_dir / "netns").iterdir())
        assert json.loads(h.cli("--format", "json", "network", "inspect", "tiny").stdout)[0]["EndpointList"] == []
        # Bad input is refused before anything is taken, naming what is wrong.
        with pytest.raises(ContainerError, match="no node 'ghost'"):
            svc.start_many([NodeStart("a", ["true"])], [Link("a", "e1", "ghost", "e1")])
        with pytest.raises(ContainerError, match="given twice"):
            svc.start_many([NodeStart("a", ["true"]), NodeStart("a", ["true"])])
        assert svc.store.ids() == []
    finally:
        svc.close()
        h.cli("network", "rm", "tiny", check=False)


def test_a_large_batch_has_a_fresh_supervisor_that_releases_nodes_ending_on_their_own(host: Host) -> None:
    """From FRESH_FROM nodes on, the supervisor is a fresh small interpreter, not a fork of the
    caller: each node is still a real container, and when nodes end on their own the supervisor
    records their codes and releases their endpoints (its exit hook, imported by name)."""
    h = host
    h.cli("network", "create", "--subnet", "10.96.0.0/24", "big")
    svc = _service(h)
    try:
        specs = [NodeStart(f"b{i}", ["sleep", "100000"], networks=["big"]) for i in range(FRESH_FROM)]
        nodes = svc.start_many(specs)
        states = [json.loads((h.state_dir / "containers" / n.id / "state.json").read_text()) for n in nodes]
        (sup,) = {s["shim_pid"] for s in states}
        argv = Path(f"/proc/{sup}/cmdline").read_bytes().split(b"\0")
        assert argv[1:4] == [b"-I", b"-S", b"-c"] and b"fresh_main" in argv[4], argv
        assert sup not in _tree(os.getpid()), "the supervisor is detached from the caller"
        mine = {kind: _ns("self", kind) for kind in NAMESPACES}
        for node in nodes:
            assert all(_ns(node.init_pid, kind) != mine[kind] for kind in NAMESPACES), node.name
            assert _in_node(node.init_pid, "hostname").strip() == node.name
        assert len(json.loads(h.cli("--format", "json", "network", "inspect", "big").stdout)[0]["EndpointList"]) == \
            FRESH_FROM

        for node in nodes:
            os.kill(node.pid, signal.SIGKILL)
        assert process.wait_gone(sup, None, 120.0), "the supervisor ends after its last node"
        for node in nodes:
            state = json.loads((h.state_dir / "containers" / node.id / "state.json").read_text())
            assert (state["status"], state["exit_code"], state["attachments"]) == ("exited", 137, []), node.name
        assert json.loads(h.cli("--format", "json", "network", "inspect", "big").stdout)[0]["EndpointList"] == []
        svc.stop_many([n.id for n in nodes])
        assert svc.store.ids() == []
    finally:
        svc.close()
        h.cli("network", "rm", "big", check=False)


def test_a_node_failing_in_a_fresh_supervisor_unwinds_the_whole_batch(host: Host, tmp_path: Path) -> None:
    """One init of a FRESH_FROM batch fails (its rootfs has a file where /etc must be): every
    other node's init is ended and nothing of the batch remains."""
    h = host
    bad = tmp_path / "badroot"
    (bad / "bin").mkdir(parents=True)
    (bad / "bin" / "sleep").touch()
    (bad / "etc").write_text("not a directory\n")
    svc = _service(h)
    try:
        specs = [NodeStart(f"f{i}", ["sleep", "100000"]) for i in range(FRESH_FROM - 1)]
        specs.append(NodeStart("broken", ["/bin/sleep", "100000"], rootfs=str(bad)))
        before = set(os.listdir("/proc"))
        with pytest.raises(BatchError) as caught:
            start_nodes(svc, specs)
        assert caught.value.failed == "broken" and "etc" in str(caught.value), str(caught.value)
        assert svc.store.ids() == []
        assert not list((h.run_dir / "netns").iterdir())
        inits = [int(p) for p in set(os.listdir("/proc")) - before if p.isdigit() and _running(int(p))
                 and Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"cnmkit-init:")]
        assert inits == [], "every init of the batch was ended"
    finally:
        svc.close()
