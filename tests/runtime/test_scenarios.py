"""The issue's scenarios, end to end: real daemon, real CLI, real namespaces, pings between them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.runtime.conftest import Host, require_tool

pytestmark = pytest.mark.runtime


def _ping(h: Host, container: str, target: str) -> bool:
    return h.cli("exec", container, "--", "ping", "-c", "1", "-W", "1", target, check=False).returncode == 0


def _hosts(h: Host, container: str) -> str:
    return h.cli("exec", container, "--", "cat", "/etc/hosts").stdout


def _endpoints(h: Host, network: str) -> int:
    nets = h.json("network", "ls")
    assert isinstance(nets, list)
    return next(n["Endpoints"] for n in nets if n["Name"] == network)


def test_containers_on_one_network_reach_each_other_by_name_and_alias(host: Host) -> None:
    h = host
    h.cli("network", "create", "front", "--subnet", "10.71.0.0/24")
    h.cli("run", "-d", "--name", "web", "--network", "front,alias=www", "--", "sleep", "1000")
    h.cli("run", "-d", "--name", "client", "--network", "front", "--", "sleep", "1000")
    assert _ping(h, "client", "web") and _ping(h, "client", "www") and _ping(h, "web", "client")
    web_ip = h.ps()["web"]["Networks"]["front"].split("/")[0]
    assert f"{web_ip}\tweb www" in _hosts(h, "client")
    # The answers follow containers: web leaves, client's view forgets it, the host's file untouched.
    host_hosts = Path("/etc/hosts").read_text()
    h.cli("stop", "-t", "1", "web")
    assert "web" not in _hosts(h, "client")
    assert Path("/etc/hosts").read_text() == host_hosts
    # Interface, MAC, MTU and the default route are what Join gave.
    info = h.inspect("client")["NetworkSettings"]["Networks"]["front"]
    link = h.cli("exec", "client", "--", "ip", "-o", "link", "show", "eth0").stdout
    assert info["mac"] in link and f"mtu {info['mtu']}" in link
    assert f"default via {info['gateway']} dev eth0" in h.cli("exec", "client", "--", "ip", "route").stdout
    stats = h.json("stats", "client")
    assert isinstance(stats, list) and stats[0]["Interfaces"]["eth0"]["tx_packets"] > 0
    assert stats[0]["MemoryBytes"] > 0 and stats[0]["Pids"] == 2


def test_two_networks_are_isolated(host: Host) -> None:
    h = host
    h.cli("network", "create", "blue", "--subnet", "10.72.1.0/24")
    h.cli("network", "create", "red", "--subnet", "10.72.2.0/24")
    h.cli("run", "-d", "--name", "b1", "--network", "blue", "--", "sleep", "1000")
    h.cli("run", "-d", "--name", "b2", "--network", "blue", "--", "sleep", "1000")
    h.cli("run", "-d", "--name", "r1", "--network", "red", "--", "sleep", "1000")
    b1_ip = h.ps()["b1"]["Networks"]["blue"].split("/")[0]
    assert _ping(h, "b2", b1_ip)
    assert not _ping(h, "r1", b1_ip)
    assert not _ping(h, "r1", "b1")                      # not even a name for it
    assert "b1" not in _hosts(h, "r1")


def test_connect_and_disconnect_a_running_container(host: Host) -> None:
    h = host
    h.cli("network", "create", "n1", "--subnet", "10.73.1.0/24")
    h.cli("network", "create", "n2", "--subnet", "10.73.2.0/24")
    h.cli("run", "-d", "--name", "a", "--network", "n1", "--", "sleep", "1000")
    h.cli("run", "-d", "--name", "z", "--network", "n2", "--", "sleep", "1000")
    assert not _ping(h, "a", "z")
    out = h.cli("network", "connect", "--alias", "alpha", "n2", "a").stdout
    assert out.startswith("eth1 10.73.2.")
    assert _ping(h, "a", "z") and _ping(h, "z", "alpha") and _ping(h, "z", "a")
    assert _endpoints(h, "n2") == 2
    h.cli("network", "disconnect", "n2", "a")
    assert "eth1" not in h.cli("exec", "a", "--", "ip", "-o", "link").stdout
    assert "alpha" not in _hosts(h, "z")
    assert not _ping(h, "z", h.inspect("a")["NetworkSettings"]["Networks"]["n1"]["address"].split("/")[0])
    assert _endpoints(h, "n2") == 1
    assert _ping(h, "a", h.inspect("a")["NetworkSettings"]["Networks"]["n1"]["gateway"])
    r = h.cli("network", "disconnect", "n2", "a", check=False)
    assert r.returncode == 1 and "not connected" in r.stderr


def test_stop_start_keeps_a_static_address_and_releases_on_stop(host: Host) -> None:
    h = host
    h.cli("network", "create", "n1", "--subnet", "10.74.0.0/24")
    h.cli("run", "-d", "--name", "fixed", "--network", "n1,ip=10.74.0.42", "--", "sleep", "1000")
    h.cli("run", "-d", "--name", "peer", "--network", "n1", "--", "sleep", "1000")
    assert _ping(h, "peer", "10.74.0.42")
    h.cli("stop", "-t", "1", "fixed")
    row = h.ps()["fixed"]
    assert row["Status"] == "exited" and row["ExitCode"] == 143 and row["Networks"] == {}
    assert _endpoints(h, "n1") == 1
    assert not (h.run_dir / "netns" / h.inspect("fixed")["Id"]).exists()
    h.cli("start", "fixed")
    assert h.ps()["fixed"]["Networks"] == {"n1": "10.74.0.42/24"}
    assert _ping(h, "peer", "fixed")
    h.cli("restart", "-t", "1", "fixed")
    assert h.ps()["fixed"]["Networks"] == {"n1": "10.74.0.42/24"} and _ping(h, "peer", "10.74.0.42")
    # State survives a daemon restart: rm after it still releases the endpoint and address.
    h.stop_daemon()
    h.start_daemon()
    h.cli("rm", "-f", "fixed")
    assert _endpoints(h, "n1") == 1
    h.cli("run", "-d", "--name", "again", "--network", "n1,ip=10.74.0.42", "--", "sleep", "1000")


def test_kill_9_then_ps_and_rm_release_everything(host: Host) -> None:
    h = host
    h.cli("network", "create", "n1", "--subnet", "10.75.0.0/24")
    h.cli("run", "-d", "--name", "v", "--network", "n1,ip=10.75.0.9", "--", "sleep", "1000")
    subprocess.run(["kill", "-9", str(h.ps()["v"]["Pid"])], check=True)
    for _ in range(200):
        row = h.ps()["v"]
        if row["Status"] != "running":
            break
    assert (row["Status"], row["ExitCode"]) == ("exited", 137)
    h.cli("rm", "v")
    assert h.ps() == {} and _endpoints(h, "n1") == 0
    assert not list((h.run_dir / "netns").iterdir())
    h.cli("run", "-d", "--name", "v2", "--network", "n1,ip=10.75.0.9", "--", "sleep", "1000")  # address free


def test_busybox_rootfs_container(host: Host, tmp_path: Path) -> None:
    busybox = require_tool("busybox", "busybox-static")
    root = tmp_path / "bb"
    (root / "bin").mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    # Relative links: `busybox --install -s` would point them at the host path of the binary.
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    h = host
    h.cli("network", "create", "n1", "--subnet", "10.76.0.0/24")
    h.cli("run", "-d", "--name", "srv", "--network", "n1", "--", "sleep", "1000")
    r = h.cli("run", "--name", "bb", "--rootfs", str(root), "--network", "n1", "--", "sh", "-c",
              "ls /; cat /etc/hostname; ping -c1 -W1 srv >/dev/null && echo pinged; exit 5", check=False)
    assert r.returncode == 5, r.stderr
    assert set(r.stdout.split()) == {"bin", "dev", "etc", "proc", "sys", "bb", "pinged"}
    h.cli("run", "-d", "--name", "bbd", "--rootfs", str(root), "--network", "n1", "--", "sh", "-c",
          "echo started; exec sleep 1000")
    assert h.cli("exec", "bbd", "--", "ls", "/").stdout.split() == ["bin", "dev", "etc", "proc", "sys"]
    assert "started" in h.cli("logs", "bbd").stdout


@pytest.mark.parametrize("args, message", [
    (["--network", "nosuch", "--", "true"], "nosuch"),
    (["--network", "n1,ip=10.99.0.5", "--", "true"], "outside"),
    (["--network", "n1,ip=10.77.0.10", "--", "true"], "10.77.0.10"),          # taken by "holder"
    (["--name", "holder", "--network", "n1", "--", "true"], "already in use"),
    (["--network", "n1", "--", "no-such-command-xyz"], "not found"),
    (["--network", "n1"], "no command"),
    (["--rootfs", "/nonexistent-rootfs", "--network", "n1", "--", "true"], "no such directory"),
    (["--network", "n1", "--network", "n2", "--", "true"], "n2"),              # fails on the second network
    # Names that would write lines into other containers' hosts files, or escape sequences.
    (["--name", "a\nb", "--network", "n1", "--", "true"], "--name"),
    (["--name", "evil\n", "--network", "n1", "--", "true"], "--name"),
    (["--hostname", "x 10.77.0.10 evil", "--network", "n1", "--", "true"], "--hostname"),
    (["--hostname", "x\n10.77.0.10 evil", "--network", "n1", "--", "true"], "--hostname"),
    (["--network", "n1,alias=x 10.77.0.10 evil", "--", "true"], "--network alias"),
    (["--name", "t\x1b]0;owned\x07", "--network", "n1", "--", "true"], "--name"),
])
def test_bad_input_is_one_line_and_leaves_nothing(host: Host, args: list[str], message: str) -> None:
    h = host
    h.cli("network", "create", "n1", "--subnet", "10.77.0.0/24")
    h.cli("run", "-d", "--name", "holder", "--network", "n1,ip=10.77.0.10", "--", "sleep", "1000")
    r = h.cli("run", *args, check=False)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("cnmkit: ") and message in r.stderr
    assert r.stderr[:-1].isprintable()                                   # nothing raw on the terminal
    assert list(h.ps()) == ["holder"]
    assert _endpoints(h, "n1") == 1
    assert len(list((h.run_dir / "netns").iterdir())) == 1
    assert "evil" not in _hosts(h, "holder")


def test_connect_with_a_bad_alias_is_refused_and_changes_nothing(host: Host) -> None:
    h = host
    h.cli("network", "create", "n1", "--subnet", "10.78.1.0/24")
    h.cli("network", "create", "n2", "--subnet", "10.78.2.0/24")
    h.cli("run", "-d", "--name", "a", "--network", "n1", "--", "sleep", "1000")
    h.cli("run", "-d", "--name", "b", "--network", "n2", "--", "sleep", "1000")
    before = _hosts(h, "b")
    r = h.cli("network", "connect", "--alias", "x\n10.78.2.99 evil", "n2", "a", check=False)
    assert r.returncode == 1 and r.stderr.startswith("cnmkit: --alias ") and r.stderr.count("\n") == 1
    assert _endpoints(h, "n2") == 1 and _hosts(h, "b") == before
    assert list(h.inspect("a")["NetworkSettings"]["Networks"]) == ["n1"]


def test_unknown_container_verbs_fail_in_one_line(host: Host) -> None:
    for verb in (["stop", "ghost"], ["rm", "ghost"], ["exec", "ghost", "--", "true"], ["inspect", "ghost"],
                 ["logs", "ghost"], ["start", "ghost"]):
        r = host.cli(*verb, check=False)
        assert r.returncode == 1 and r.stderr.strip() == "cnmkit: no such container: ghost", (verb, r.stderr)


def test_start_daemon_dual_stack_static_v6_and_env(bare_host: Host) -> None:
    """--start-daemon brings a daemon up; ip6= pins an IPv6 address; names resolve over IPv6; -e reaches."""
    import os
    import signal
    import time

    h = bare_host
    try:
        # The run dir is named by the option only: the daemon started for it must still accept
        # direct joins of sandboxes under it (ensure_daemon passes it on as --sandbox-dir).
        bare_env = {k: v for k, v in h.env().items() if k != "CNMKIT_RUN_DIR"}
        h.cli("run", "--run-dir", str(h.run_dir), "--start-daemon", "-d", "--name", "first", "--", "sleep", "1000",
              env=bare_env)
        h.cli("network", "create", "--subnet", "10.61.0.0/24", "--ipv6", "--subnet", "fd00:61::/64", "dual")
        h.cli("run", "-d", "--name", "a", "--network", "dual", "-e", "GREETING=hello there", "--", "sleep", "1000")
        h.cli("run", "-d", "--name", "b", "--network", "dual,ip6=fd00:61::61", "--", "sleep", "1000")
        assert h.cli("exec", "a", "--", "sh", "-c", "echo $GREETING").stdout.strip() == "hello there"
        addrs = h.cli("exec", "b", "--", "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global").stdout
        assert "fd00:61::61/64" in addrs
        assert "fd00:61::61\tb b" in _hosts(h, "a") or "fd00:61::61\tb" in _hosts(h, "a")
        assert h.cli("exec", "a", "--", "ping", "-6", "-c", "1", "-W", "2", "b", check=False).returncode == 0
        assert _ping(h, "a", "b")
    finally:
        pid_file = h.state_dir / "daemon.pid"
        if pid_file.exists():
            names = [p.name for p in (h.state_dir / "containers").iterdir() if not p.name.startswith(".")]
            h.cli("rm", "-f", *names, check=False)
            h.cli("network", "rm", "dual", check=False)
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            for _ in range(600):
                if not os.path.exists(f"/proc/{pid}"):
                    break
                time.sleep(0.05)
