"""The real daemon process with the bridge driver, inside a throwaway "host" namespace.

Checks what an operator sees: CLI errors that name the option and leave nothing behind,
SIGTERM that removes the sockets but keeps the kernel state, kill -9 and restart that lose
nothing. Kernel state is read with ``ip -j`` inside the namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ip_json, socket_answers

REPO = str(Path(__file__).resolve().parents[2])


class HostDaemon:
    def __init__(self, netns: str, tmp: Path) -> None:
        self.netns, self.plugins, self.state = netns, tmp / "plugins", tmp / "state"
        self.proc: subprocess.Popen | None = None

    def start(self, *daemon_args: str) -> None:
        self.log = open(self.state.parent / "daemon.log", "ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-m", "cli.main", "--plugin-dir", str(self.plugins),
             "--state-dir", str(self.state), "daemon", *daemon_args], cwd=REPO, stdout=self.log, stderr=self.log)
        while not all(socket_answers(str(self.plugins / s)) for s in ("cnmkit.sock", "cnmkit-bridge.sock")):
            assert self.proc.poll() is None, (self.state.parent / "daemon.log").read_text()
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-m", "cli.main",
                               "--plugin-dir", str(self.plugins), "--state-dir", str(self.state), *args],
                              cwd=REPO, capture_output=True, text=True, timeout=120)

    def bridges(self) -> list[dict]:
        return [link for link in ip_json("link", "show", netns=self.netns)
                if str(link.get("ifalias", "")).startswith("cnmkit:net:")]


@pytest.fixture
def host(netns: str, tmp_path: Path) -> Iterator[HostDaemon]:
    daemon = HostDaemon(netns, tmp_path)
    daemon.start()
    yield daemon
    if daemon.proc is not None:
        daemon.stop(signal.SIGKILL)


@pytest.mark.parametrize("opt,message", [
    ("com.docker.network.driver.mtu=abc", "com.docker.network.driver.mtu"),
    ("com.docker.network.driver.mtu=20", "com.docker.network.driver.mtu"),
    ("com.docker.network.bridge.name=this-name-is-far-too-long", "com.docker.network.bridge.name"),
    ("cnmkit.colour=blue", "cnmkit.colour"),                 # our namespace; other unknown keys are kept
    ("com.docker.network.bridge.name=eth+", "com.docker.network.bridge.name"),
    ("com.docker.network.bridge.name=br%d", "com.docker.network.bridge.name"),
    ("com.docker.network.bridge.name=-x", "com.docker.network.bridge.name"),
    ('com.docker.network.bridge.name=q"', "com.docker.network.bridge.name"),
])
def test_bad_options_name_the_option_and_leave_nothing(host: HostDaemon, opt: str, message: str) -> None:
    links = {link["ifname"] for link in ip_json("link", "show", netns=host.netns)}
    proc = host.cli("network", "create", "--subnet", "10.95.0.0/24", "-o", opt, "bad")
    assert proc.returncode == 1 and message in proc.stderr and proc.stderr.count("\n") == 1
    assert host.bridges() == []
    assert {link["ifname"] for link in ip_json("link", "show", netns=host.netns)} == links   # no br0 from br%d
    assert json.loads(host.cli("--format", "json", "network", "ls").stdout) == []
    assert host.cli("network", "create", "--subnet", "10.95.0.0/24", "good").returncode == 0


def test_sigterm_keeps_the_network_and_restart_loses_nothing(host: HostDaemon) -> None:
    assert host.cli("network", "create", "--subnet", "10.96.0.0/24", "-o", "com.docker.network.driver.mtu=1400",
                    "keep").returncode == 0
    (bridge,) = host.bridges()
    assert bridge["mtu"] == 1400
    assert host.stop(signal.SIGTERM) == 0
    assert sorted(os.listdir(host.plugins)) == [], "sockets are removed on SIGTERM"
    assert [b["ifname"] for b in host.bridges()] == [bridge["ifname"]], "kernel state is kept"
    host.start()
    assert host.stop(signal.SIGKILL) != 0
    host.start()                                          # stale sockets from kill -9 are replaced
    listed = json.loads(host.cli("--format", "json", "network", "ls").stdout)
    assert [n["Name"] for n in listed] == ["keep"]
    assert host.cli("network", "rm", "keep").returncode == 0
    assert host.bridges() == []


def test_cleanup_removes_marked_orphans_only(host: HostDaemon, netns: str) -> None:
    """What a crash can leave (a marked bridge and rules of a network nobody records) goes; the rest stays."""
    assert host.cli("network", "create", "--subnet", "10.97.0.0/24", "live").returncode == 0
    lost = "d" * 64

    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", netns, *args], check=True)

    ip("link", "add", "cnm-lost0", "type", "bridge")
    ip("link", "set", "dev", "cnm-lost0", "alias", f"cnmkit:net:{lost}")
    ip("link", "add", "theirs0", "type", "bridge")
    subprocess.run(["ip", "netns", "exec", netns, "iptables", "-A", "CNMKIT-FORWARD", "-i", "cnm-lost0", "-m",
                    "comment", "--comment", f"cnmkit:{lost}", "-j", "ACCEPT"], check=True)

    dry = host.cli("cleanup", "--dry-run")
    assert dry.returncode == 0 and "would delete link cnm-lost0" in dry.stdout and lost[:12] in dry.stdout
    assert "cnm-lost0" in [link["ifname"] for link in ip_json("link", "show", netns=netns)]

    done = host.cli("cleanup")
    assert done.returncode == 0 and "delete link cnm-lost0" in done.stdout
    names = [link["ifname"] for link in ip_json("link", "show", netns=netns)]
    assert "cnm-lost0" not in names and "theirs0" in names
    assert [b["ifalias"] for b in host.bridges()] == [f"cnmkit:net:{host_network_id(host, 'live')}"]
    rules = subprocess.run(["ip", "netns", "exec", netns, "iptables", "-S"], capture_output=True, text=True).stdout
    assert lost[:12] not in rules and "CNMKIT-FORWARD" in rules
    assert "nothing to clean up" in host.cli("cleanup").stdout


def host_network_id(host: HostDaemon, name: str) -> str:
    return str(json.loads(host.cli("network", "inspect", name).stdout)[0]["Id"])
