"""Sandbox configuration from a Join reply, and the container process, without a daemon."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from runtime import sandbox
from tests.conftest import require_root
from tests.runtime.conftest import ROOT, Host

pytestmark = pytest.mark.runtime


def _ip(path: str, *args: str) -> list[dict]:
    out = subprocess.run(["nsenter", f"--net={path}", "ip", "-j", *args], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out or "[]")


def test_sandbox_is_configured_exactly_as_join_says_and_removed(tmp_path: Path) -> None:
    require_root()
    path = str(tmp_path / "netns" / "c1")
    sandbox.create_netns(path)
    try:
        assert sandbox.is_netns(path)
        # Stand-in for the driver's direct Join: a veth born inside the sandbox.
        subprocess.run(["nsenter", f"--net={path}", "ip", "link", "add", "tmp9a", "type", "veth", "peer",
                        "name", "tmp9b"], check=True)
        att = {"src_name": "tmp9a", "mac": "02:42:0a:00:00:05", "mtu": 1400, "address": "10.9.0.5/24",
               "address_v6": "fd00:9::5/64", "gateway": "10.9.0.1", "gateway_v6": "",
               "static_routes": [{"Destination": "192.0.2.0/24", "RouteType": 0, "NextHop": "10.9.0.254"},
                                 {"Destination": "198.51.100.0/24", "RouteType": 1, "NextHop": ""}]}
        assert sandbox.configure(path, att, "eth0", install_default=True) is True
        links = {link["ifname"]: link for link in _ip(path, "link")}
        assert "tmp9a" not in links
        eth0 = links["eth0"]
        assert eth0["address"] == "02:42:0a:00:00:05" and eth0["mtu"] == 1400 and "UP" in eth0["flags"]
        assert "UP" in links["lo"]["flags"]
        addrs = {(a["local"], a["prefixlen"]) for i in _ip(path, "addr", "show", "eth0") for a in i["addr_info"]}
        assert {("10.9.0.5", 24), ("fd00:9::5", 64)} <= addrs
        routes = {(r["dst"], r.get("gateway"), r["dev"]) for r in _ip(path, "route")}
        assert ("default", "10.9.0.1", "eth0") in routes
        assert ("192.0.2.0/24", "10.9.0.254", "eth0") in routes
        assert ("198.51.100.0/24", None, "eth0") in routes
        # Gratuitous ARP on link-up, so peers forget a restarted container's old MAC at once.
        notify = subprocess.run(["nsenter", f"--net={path}", "cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"],
                                capture_output=True, text=True, check=True).stdout
        assert notify.strip() == "1"
    finally:
        sandbox.remove_netns(path)
    assert not Path(path).exists()
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()


def test_container_without_network_has_own_namespaces_and_exit_code(bare_host: Host) -> None:
    h = bare_host
    r = h.cli("run", "--name", "solo", "--hostname", "box", "--", "sh", "-c",
              "hostname; cat /etc/hostname; echo $$; ls /sys/class/net; exit 42", check=False)
    assert r.returncode == 42, r.stderr
    assert r.stdout.split() == ["box", "box", "2", "lo"]     # own UTS, PID (init is 1) and net namespaces
    assert h.ps()["solo"]["Status"] == "exited" and h.ps()["solo"]["ExitCode"] == 42


def test_detached_kill_9_is_reported_as_137_and_rm_cleans_up(bare_host: Host) -> None:
    h = bare_host
    h.cli("run", "-d", "--name", "victim", "--", "sleep", "1000")
    row = h.ps()["victim"]
    assert row["Status"] == "running"
    subprocess.run(["kill", "-9", str(row["Pid"])], check=True)
    for _ in range(200):                       # the shim records the code right after the kernel reaps
        row = h.ps()["victim"]
        if row["Status"] != "running":
            break
    assert (row["Status"], row["ExitCode"]) == ("exited", 137)
    h.cli("rm", "victim")
    assert h.ps() == {}
    assert not list((h.run_dir / "netns").iterdir())


def test_no_daemon_is_one_line_and_nothing_is_left(bare_host: Host) -> None:
    h = bare_host
    r = h.cli("run", "--network", "n1", "--", "true", check=False)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("cnmkit: ")
    assert h.ps() == {}


def test_foreground_run_passes_signals_through(bare_host: Host) -> None:
    """SIGTERM to a foreground `cnmkit run` reaches the command (its trap decides the exit code)."""
    h = bare_host
    script = 'trap "echo got-term; exit 7" TERM; echo ready; while :; do sleep 0.1; done'
    proc = subprocess.Popen(h.argv("run", "--name", "fg", "--", "sh", "-c", script), env=h.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "got-term" in out, err
    assert proc.returncode == 7, err
    assert h.ps()["fg"]["Status"] == "exited" and h.ps()["fg"]["ExitCode"] == 7


def test_rm_ends_a_container_whose_start_was_never_recorded(bare_host: Host) -> None:
    """A CLI killed right after the shim said "ok" leaves a record without PIDs; rm -f still ends it all."""
    h = bare_host
    h.cli("run", "-d", "--name", "stray", "--", "sleep", "1000")
    (row,) = h.json("inspect", "stray")
    cid = row["Id"]
    state_path = h.state_dir / "containers" / cid / "state.json"
    state = json.loads(state_path.read_text())
    pids = [state["shim_pid"], state["init_pid"], state["pid"]]
    state.update(status="created", shim_pid=0, init_pid=0, pid=0)       # what the killed CLI never wrote
    state_path.write_text(json.dumps(state))
    h.cli("rm", "-f", "stray")
    assert [p for p in pids if _running(p)] == [], "every process of the container is gone"
    assert not (h.state_dir / "containers" / cid).exists()


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed process lingers as Z until its reaper collects it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
