"""Labs end to end: every example deployed by the real CLI on a real daemon in a throwaway host
netns; pings that must work and pings that must fail; inspect; the graph; a redeploy after an
edit that keeps the unchanged nodes (same pid, same netns); destroy with nothing left.

One host (netns + daemon) serves the whole module: each test deploys and destroys its own lab,
and checks the host is back to empty afterwards, so they do not depend on each other's order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ip_json, require_root
from tests.runtime.conftest import Host, _alive, _teardown, require_tool

pytestmark = pytest.mark.runtime
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "labs"


@pytest.fixture(scope="module")
def lab_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    require_root()
    name = f"cnmtlab{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        h = Host(netns=name, tmp=tmp_path_factory.mktemp("labs"))
        h.start_daemon()
        try:
            yield h
        finally:
            for lab in (h.state_dir / "labs").glob("*.json"):
                h.cli("lab", "destroy", "--name", lab.stem, check=False)
            _teardown(h)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _ping(pids: dict[str, int], node: str, target: str) -> bool:
    """``ping`` from inside the node, entered with nsenter (its net and mount namespaces, so its
    /etc/hosts): an oracle with no cnmkit code in it, and no Python start per ping."""
    cmd = ["nsenter", "-t", str(pids[node]), "-n", "-m", "ping", "-c", "1", "-W", "1", target]
    return subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode == 0


def _node_pids(h: Host, file: Path) -> dict[str, int]:
    return {n["Name"]: n["Pid"] for n in _inspect(h, file)["Nodes"] if n["Pid"]}


def _inspect(h: Host, file: Path) -> dict:
    data = h.json("lab", "inspect", str(file))
    assert isinstance(data, dict)
    return data


def _pids(h: Host) -> list[int]:
    return h.container_pids()


def _assert_clean(h: Host, pids: list[int]) -> None:
    """Nothing of the lab is left: records, processes, namespaces, links, addresses, networks."""
    assert list((h.state_dir / "labs").glob("*.json")) == []
    assert list((h.state_dir / "labs").glob("*.images")) == []          # unpacked image tarballs
    assert [p for p in (h.state_dir / "containers").iterdir() if not p.name.startswith(".")] == []
    assert [p for p in pids if _alive(p)] == []
    netns_dir = h.run_dir / "netns"
    assert not netns_dir.is_dir() or list(netns_dir.iterdir()) == []
    assert [link["ifname"] for link in ip_json("link", "show", netns=h.netns)] == ["lo"]
    assert [a["local"] for i in ip_json("addr", "show", netns=h.netns) for a in i["addr_info"]] in (
        ["127.0.0.1"], ["127.0.0.1", "::1"])
    assert h.json("network", "ls") == []
    assert h.cli("lab", "ls").stdout.splitlines()[1:] == []


# example file -> (pings that must work, commands run next, pings that must fail then)
CASES: dict[str, tuple[list[tuple[str, str]], list[tuple[str, list[str]]], list[tuple[str, str]]]] = {
    "lan": ([("h2", "10.81.1.11"), ("h1", "h2"), ("h2", "h1")], [],
            [("h1", "10.81.1.99"), ("h1", "10.81.10.2")]),
    "router": ([("h1", "10.81.20.2"), ("h2", "10.81.10.2"), ("r1", "10.81.10.2")],
               [("r1", ["sysctl", "-w", "net.ipv4.ip_forward=0"])],
               [("h1", "10.81.20.2"), ("h2", "10.81.10.2")]),
    "ring": ([("r1", "10.81.255.2"), ("r1", "10.81.255.3"), ("r2", "10.81.255.3"), ("r3", "10.81.255.1")],
             [("r3", ["ip", "link", "set", "eth2", "down"])],
             [("r2", "10.81.255.3"), ("r1", "10.81.255.4")]),
    "mixed": ([("h1", "10.81.50.2"), ("s2", "10.81.60.1"), ("h1", "10.81.40.12"), ("h2", "10.81.80.1")], [],
              [("h2", "10.81.50.2"), ("s2", "10.81.40.11")]),
}


@pytest.mark.parametrize("example", sorted(CASES))
def test_example_lab(lab_host: Host, example: str, tmp_path: Path) -> None:
    require_tool("dot", "graphviz")
    h, file = lab_host, EXAMPLES / f"{example}.clab.yml"
    works, then, fails = CASES[example]
    out = h.cli("lab", "deploy", str(file))
    assert f"lab {example}:" in out.stdout and out.stderr == ""
    try:
        data = _inspect(h, file)
        nodes = {n["Name"]: n for n in data["Nodes"]}
        for node in nodes.values():
            assert node["Status"] in ("running", "host bridge"), node
        if example == "mixed":                               # the host's side: bridge ports, host end
            assert sorted(i["name"] for i in nodes["dmz"]["Interfaces"]) == ["dmz-s1", "dmz-s2"]
            assert [(i["name"], i["addresses"][:1]) for i in data["HostInterfaces"]] == [
                ("mixed-h2", ["10.81.80.1/30"])]
        for link in data["Links"]:                           # every link end, as the kernel has it
            for end in link["Endpoints"]:
                if end["Node"] in nodes and nodes[end["Node"]]["Kind"] == "linux":
                    got = {i["name"]: i["addresses"] for i in nodes[end["Node"]]["Interfaces"]}
                    assert set(end["Addresses"]) <= set(got[end["Interface"]]), (end, got)
        node_pids = {name: n["Pid"] for name, n in nodes.items() if n["Pid"]}
        for node, target in works:
            assert _ping(node_pids, node, target), f"{node} -> {target} should work"
        if example == "ring":                                # the link's MTU, as ip inside both ends sees it
            for node, ifname, mtu in (("r1", "eth1", 9000), ("r2", "eth2", 9000), ("r2", "eth1", 1500)):
                out = h.cli("lab", "exec", str(file), node, "--", "ip", "-j", "link", "show", ifname).stdout
                assert json.loads(out)[0]["mtu"] == mtu, (node, ifname)
        for node, argv in then:
            h.cli("lab", "exec", str(file), node, "--", *argv)
        for node, target in fails:
            assert not _ping(node_pids, node, target), f"{node} -> {target} should fail"
        svg = tmp_path / "lab.svg"
        h.cli("lab", "graph", str(file), "-o", str(svg))
        text = svg.read_text()
        assert text.startswith("<?xml") and "<svg" in text
        for name in nodes:
            assert f">{name}<" in text or f">{name}&#45;" in text or name in text, name
        again = h.cli("lab", "deploy", "--dry-run", str(file)).stdout
        assert again.startswith("nothing to do")
    finally:
        pids = _pids(h)
        h.cli("lab", "destroy", str(file))
    _assert_clean(h, pids)


def _netns_ino(h: Host, node: dict) -> int:
    return os.stat(f"/proc/{node['Pid']}/ns/net").st_ino


def test_redeploy_changes_only_what_changed_and_destroy_by_name(lab_host: Host, tmp_path: Path) -> None:
    h = lab_host
    file = tmp_path / "edit.clab.yml"
    base = (EXAMPLES / "router.clab.yml").read_text().replace("name: router", "name: edit")
    file.write_text(base)
    h.cli("lab", "deploy", str(file))
    try:
        before = {n["Name"]: n for n in _inspect(h, file)["Nodes"]}
        # Edit: h2 gets another route command (re-made with its link), h3 joins on r1:eth3.
        edited = base.replace("        - ip route add 10.81.10.0/24 via 10.81.20.1\n",
                              "        - ip route add 10.81.10.0/24 via 10.81.20.1\n"
                              "        - ip route add 10.81.30.0/24 via 10.81.20.1\n")
        edited = edited.replace("  nodes:\n", "  nodes:\n    h3:\n      exec:\n"
                                "        - ip route add 10.81.20.0/24 via 10.81.30.1\n")
        edited += ('    - endpoints: ["h3:eth1", "r1:eth3"]\n'
                   "      cnmkit: {addresses: [10.81.30.2/24, 10.81.30.1/24]}\n")
        file.write_text(edited)
        plan = h.cli("lab", "deploy", "--dry-run", str(file)).stdout.splitlines()
        assert plan == ["would remove link h2:eth1--r1:eth2", "would remove node h2", "would start node h3",
                        "would start node h2", "would create link h2:eth1--r1:eth2",
                        "would create link h3:eth1--r1:eth3", "would exec on node h3: 1 command(s)",
                        "would exec on node h2: 2 command(s)"]
        h.cli("lab", "deploy", str(file))
        after = {n["Name"]: n for n in _inspect(h, file)["Nodes"]}
        for name in ("r1", "h1"):                                       # untouched: same process, same netns
            assert after[name]["Pid"] == before[name]["Pid"]
            assert after[name]["Id"] == before[name]["Id"]
            assert _netns_ino(h, after[name]) == _netns_ino(h, before[name])
        assert after["h2"]["Pid"] != before["h2"]["Pid"] and after["h2"]["Id"] != before["h2"]["Id"]
        node_pids = _node_pids(h, file)
        assert _ping(node_pids, "h3", "10.81.20.2") and _ping(node_pids, "h1", "10.81.20.2")
        # Remove h3 again (h2 keeps its new route): only h3 and its link go.
        h3 = "    h3:\n      exec:\n        - ip route add 10.81.20.0/24 via 10.81.30.1\n"
        file.write_text(edited.replace(h3, "")
                        .replace('    - endpoints: ["h3:eth1", "r1:eth3"]\n', "")
                        .replace("      cnmkit: {addresses: [10.81.30.2/24, 10.81.30.1/24]}\n", ""))
        h.cli("lab", "deploy", str(file))
        last = {n["Name"]: n for n in _inspect(h, file)["Nodes"]}
        assert set(last) == {"r1", "h1", "h2"}
        assert [last[n]["Pid"] for n in ("r1", "h1", "h2")] == [after[n]["Pid"] for n in ("r1", "h1", "h2")]
        assert "eth3" not in h.cli("lab", "exec", str(file), "r1", "--", "ip", "-o", "link").stdout
        assert h.cli("lab", "deploy", "--dry-run", str(file)).stdout.startswith("nothing to do")
    finally:
        pids = _pids(h)
        file.unlink()                                                  # the file is gone: --name still works
        h.cli("lab", "destroy", "--name", "edit")
    _assert_clean(h, pids)


def test_failed_steps_leave_a_record_that_destroy_clears(lab_host: Host, tmp_path: Path) -> None:
    h = lab_host
    file = tmp_path / "fail.clab.yml"
    file.write_text('name: fail\ntopology:\n  nodes:\n    a: {exec: ["false"]}\n    b: {}\n  links:\n'
                    '    - endpoints: ["a:eth1", "b:eth1"]\n    - endpoints: ["b:lo", "a:eth2"]\n')
    out = h.cli("lab", "deploy", str(file), check=False)
    assert out.returncode == 1
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cnmkit: create link a:eth2--b:lo: "), err
    # The failed link left nothing (b has no stray a:eth2 peer), the good one is in place.
    links = h.cli("lab", "exec", str(file), "a", "--", "ip", "-o", "link").stdout
    assert "eth1" in links and "eth2" not in links
    # Fixed file: the exec then fails, naming the node; the node is re-made on the next deploy.
    file.write_text(file.read_text().replace('    - endpoints: ["b:lo", "a:eth2"]\n', ""))
    out = h.cli("lab", "deploy", str(file), check=False)
    assert out.returncode == 1 and out.stderr.startswith("cnmkit: exec on node a: 'false' exited 1"), out.stderr
    plan = h.cli("lab", "deploy", "--dry-run", str(file)).stdout
    assert "would remove node a" in plan and "would start node a" in plan
    # Somebody else's container on the lab's network: destroy stops there, keeps the record, says why.
    h.cli("run", "-d", "--name", "outsider", "--network", "fail-mgmt", "--", "sleep", "1000")
    out = h.cli("lab", "destroy", str(file), check=False)
    assert out.returncode == 1
    assert out.stderr == "cnmkit: remove network fail-mgmt: network fail-mgmt has active endpoints\n"
    assert "fail" in h.cli("lab", "ls").stdout
    h.cli("rm", "-f", "outsider")
    pids = _pids(h)
    h.cli("lab", "destroy", str(file))
    _assert_clean(h, pids)
    gone = h.cli("lab", "destroy", "--name", "fail", check=False)
    assert gone.returncode == 1 and gone.stderr == "cnmkit: no lab fail is deployed\n"


def test_bad_file_is_one_line_and_nothing_is_made(lab_host: Host, tmp_path: Path) -> None:
    h = lab_host
    file = tmp_path / "bad.clab.yml"
    file.write_text("name: bad\ntopology:\n  nodes:\n    a: {kind: srl}\n")
    out = h.cli("lab", "deploy", str(file), check=False)
    assert out.returncode == 1
    assert out.stderr == f"cnmkit: {file}:4: topology.nodes.a.kind: kind 'srl' is not supported by cnmkit " \
                         "(supported: linux, bridge)\n"
    _assert_clean(h, [])


def test_image_tarball_and_binds(lab_host: Host, tmp_path: Path) -> None:
    """A node from an image tarball sees only the image; a node on the host's files gets its bind,
    read-only, in its own mount namespace (the host's /mnt stays as it was)."""
    busybox = require_tool("busybox", "busybox-static")
    h = lab_host
    root = tmp_path / "bb"
    (root / "bin").mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "IMAGE-MARKER").write_text("bb\n")
    with tarfile.open(tmp_path / "bb.tar.gz", "w:gz") as tar:
        tar.add(root, arcname=".")
    shutil.rmtree(root)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "hello.txt").write_text("hello from the host\n")
    file = tmp_path / "img.clab.yml"
    file.write_text("name: img\ncnmkit:\n  images: {busybox: bb.tar.gz}\ntopology:\n"
                    "  defaults: {network-mode: none}\n  nodes:\n"
                    "    bb: {image: busybox, cmd: sleep 100000}\n"
                    "    hf: {binds: ['shared:/mnt:ro']}\n  links:\n"
                    "    - endpoints: ['bb:eth0', 'hf:eth0']\n"
                    "      cnmkit: {addresses: [10.81.70.1/24, 10.81.70.2/24]}\n")
    host_mnt = sorted(os.listdir("/mnt"))
    deployed = h.cli("lab", "deploy", str(file))
    assert "no rootfs" not in deployed.stderr
    try:
        listing = h.cli("lab", "exec", str(file), "bb", "--", "ls", "/").stdout.split()
        assert "IMAGE-MARKER" in listing and "usr" not in listing
        assert h.cli("lab", "exec", str(file), "hf", "--", "cat", "/mnt/hello.txt").stdout == "hello from the host\n"
        assert h.cli("lab", "exec", str(file), "hf", "--", "touch", "/mnt/new", check=False).returncode != 0
        assert sorted(os.listdir("/mnt")) == host_mnt
        assert _ping(_node_pids(h, file), "bb", "10.81.70.2")
    finally:
        pids = _pids(h)
        h.cli("lab", "destroy", str(file))
    assert not (tmp_path / "shared" / "new").exists()
    _assert_clean(h, pids)


def _generated(kind: str, n: int) -> str:
    """Mininet's LinearTopo(k=n, n=1) (``chain``: n bridges in a line, one host on each) or
    SingleSwitchTopo(k=n) (``star``: n hosts on one bridge) as a lab file; host i is 10.0.0.i/8."""
    switches = n if kind == "chain" else 1
    lines = [f"name: gen{kind}", "topology:", "  defaults: {network-mode: none}", "  nodes:"]
    lines += [f"    s{i}: {{kind: bridge}}" for i in range(1, switches + 1)]
    lines += [f"    h{i}: {{}}" for i in range(1, n + 1)]
    lines.append("  links:")
    for i in range(1, n + 1):
        sw, port = (i, 1) if kind == "chain" else (1, i)
        lines += [f'    - endpoints: ["h{i}:eth0", "s{sw}:gs{sw}-p{port}"]',
                  f"      cnmkit: {{addresses: [10.0.0.{i}/8, null]}}"]
    if kind == "chain":
        lines += [f'    - endpoints: ["s{i}:gs{i}-p2", "s{i - 1}:gs{i - 1}-p3"]' for i in range(2, n + 1)]
    return "\n".join(lines) + "\n"


def _bridge_ports(h: Host) -> dict[str, str]:
    """Host-side interface -> its bridge, in the lab host's netns (the oracle: ``ip -j link``)."""
    return {link["ifname"]: link.get("master", "") for link in ip_json("link", "show", netns=h.netns)
            if link["ifname"] != "lo"}


@pytest.mark.parametrize("kind", ["chain", "star"])
def test_generated_lab_of_20_nodes_reaches_across_and_destroy_leaves_nothing(
        lab_host: Host, kind: str, tmp_path: Path) -> None:
    """The batch path at a size where grouping matters: 10 bridges + 10 hosts in a line (the far
    ends ping through every bridge), or 20 hosts on one bridge; every bridge port enslaved to its
    bridge; destroy (nodes through stop_many, host-side links and bridges as one doomed group)
    leaves no namespace, link, record or process."""
    h = lab_host
    n = 10 if kind == "chain" else 20
    file = tmp_path / f"gen{kind}.clab.yml"
    file.write_text(_generated(kind, n))
    h.cli("lab", "deploy", str(file))
    try:
        ports = _bridge_ports(h)
        bridges = [f"s{i}" for i in range(1, (n if kind == "chain" else 1) + 1)]
        assert set(bridges) <= set(ports)
        if kind == "chain":
            assert all(ports[f"gs{i}-p1"] == f"s{i}" for i in range(1, n + 1))
            assert all(ports[f"gs{i}-p2"] == f"s{i}" and ports[f"gs{i - 1}-p3"] == f"s{i - 1}"
                       for i in range(2, n + 1))
        else:
            assert all(ports[f"gs1-p{i}"] == "s1" for i in range(1, n + 1))
        pids = _node_pids(h, file)
        assert len(pids) == n
        assert _ping(pids, "h1", f"10.0.0.{n}") and _ping(pids, f"h{n}", "10.0.0.1")
        assert not _ping(pids, "h1", f"10.0.0.{n + 1}")                 # nobody there
    finally:
        pids_before = _pids(h)
        h.cli("lab", "destroy", str(file))
    _assert_clean(h, pids_before)


def test_redeploy_of_a_generated_star_changing_one_node_keeps_the_others(lab_host: Host, tmp_path: Path) -> None:
    h = lab_host
    file = tmp_path / "genstar.clab.yml"
    text = _generated("star", 12)
    file.write_text(text)
    h.cli("lab", "deploy", str(file))
    try:
        before = {n["Name"]: n for n in _inspect(h, file)["Nodes"]}
        file.write_text(text.replace("    h5: {}\n", "    h5: {env: {ROLE: changed}}\n"))
        plan = h.cli("lab", "deploy", "--dry-run", str(file)).stdout.splitlines()
        assert sorted(line.split()[-1] for line in plan if " node " in line) == ["h5", "h5"]
        links = [line for line in plan if " link " in line]
        assert len(links) == 2 and all("h5:eth0" in line for line in links), plan
        assert len(plan) == 4, plan
        h.cli("lab", "deploy", str(file))
        after = {n["Name"]: n for n in _inspect(h, file)["Nodes"]}
        for name in before:
            if name not in ("h5", "s1"):
                assert after[name]["Pid"] == before[name]["Pid"], name
                assert _netns_ino(h, after[name]) == _netns_ino(h, before[name])
        assert after["h5"]["Pid"] != before["h5"]["Pid"]
        assert _bridge_ports(h)["gs1-p5"] == "s1"
        pids = _node_pids(h, file)
        assert _ping(pids, "h1", "10.0.0.5") and _ping(pids, "h5", "10.0.0.12")
    finally:
        pids_before = _pids(h)
        h.cli("lab", "destroy", str(file))
    _assert_clean(h, pids_before)
