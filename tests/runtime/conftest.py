"""A throwaway "host" per test: its own netns, a real ``cnmkit daemon`` and the real CLI in it.

The daemon and the CLI enter the host netns with ``nsenter --net`` rather than ``ip netns exec``:
the latter also gives every command a private, throwaway mount namespace, and the runtime's
sandbox files (``<run_dir>/netns/<id>`` bind mounts) must be visible to the daemon (it creates
the container's veth end directly in them) and to the next CLI call.

Teardown removes every container (``rm -f``), stops the daemon by PID, and then checks that no
mount, shim or container process of the test remains; leftovers are removed by PID and by mount
point and the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def require_tool(command: str, package: str) -> str:
    """The path of ``command``; without it the test is skipped, or fails under CNMKIT_ALL_TIERS=1
    (as ``require_root`` does): scripts/install.sh installs ``package``, so CI must not count a
    test that never ran."""
    path = shutil.which(command)
    if path is not None:
        return path
    reason = f"{command} not found (install the Debian package {package}, as scripts/install.sh does)"
    if os.environ.get("CNMKIT_ALL_TIERS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _mounts_under(prefix: str) -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


@dataclass
class Host:
    netns: str
    tmp: Path
    plugin_dir: Path = field(init=False)
    state_dir: Path = field(init=False)
    run_dir: Path = field(init=False)
    daemon: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.plugin_dir, self.state_dir, self.run_dir = self.tmp / "plugins", self.tmp / "state", self.tmp / "run"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT)
        env["CNMKIT_RUN_DIR"] = str(self.run_dir)
        return env

    def argv(self, *args: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", sys.executable, "-m", "cli.main",
                "--plugin-dir", str(self.plugin_dir), "--state-dir", str(self.state_dir), *args]

    def cli(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``cnmkit ARGS`` in the host netns; timeout only guards against a hang."""
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, env=env or self.env(), timeout=120,
                              cwd=str(ROOT))
        if check and proc.returncode != 0:
            raise AssertionError(f"cnmkit {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> object:
        return json.loads(self.cli("--format", "json", *args).stdout)

    def start_daemon(self) -> None:
        log = open(self.tmp / "daemon.log", "ab")
        # The daemon lets a direct Join open only namespace files under this host's run dir.
        argv = self.argv("daemon", "--sandbox-dir", str(self.run_dir / "netns"))
        self.daemon = subprocess.Popen(argv, env=self.env(), stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=log, start_new_session=True, cwd=str(ROOT))
        log.close()
        for _ in range(300):
            if (self.plugin_dir / "cnmkit.sock").exists() and (self.plugin_dir / "cnmkit-bridge.sock").exists():
                return
            if self.daemon.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("daemon did not come up:\n" + (self.tmp / "daemon.log").read_text())

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.daemon = None

    def ps(self, all_: bool = True) -> dict[str, dict]:
        rows = self.json("ps", *(["-a"] if all_ else []))
        assert isinstance(rows, list)
        return {r["Name"]: r for r in rows}

    def inspect(self, name: str) -> dict:
        data = self.json("inspect", name)
        assert isinstance(data, list)
        return data[0]

    def container_pids(self) -> list[int]:
        """Every shim/init/command pid recorded under this state dir."""
        pids = []
        root = self.state_dir / "containers"
        if root.is_dir():
            for state in root.glob("*/state.json"):
                data = json.loads(state.read_text())
                pids += [data.get(k, 0) for k in ("shim_pid", "init_pid", "pid")]
        return [p for p in pids if p > 0]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def host(netns: str, tmp_path: Path) -> Iterator[Host]:
    """A host netns with a running daemon; everything the test made is removed and checked after."""
    h = Host(netns=netns, tmp=tmp_path)
    h.start_daemon()
    try:
        yield h
    finally:
        _teardown(h)


@pytest.fixture
def bare_host(netns: str, tmp_path: Path) -> Iterator[Host]:
    """A host netns with no daemon (for "daemon absent" and network-less containers)."""
    h = Host(netns=netns, tmp=tmp_path)
    try:
        yield h
    finally:
        _teardown(h)


def _teardown(h: Host) -> None:
    problems: list[str] = []
    if (h.state_dir / "containers").is_dir():
        pids_before = h.container_pids()
        names = [p.name for p in (h.state_dir / "containers").iterdir() if not p.name.startswith(".")]
        if names:
            h.cli("rm", "-f", *names, check=False)
        for pid in pids_before:
            if _alive(pid):
                problems.append(f"process {pid} survived rm -f")
                os.kill(pid, signal.SIGKILL)
    h.stop_daemon()
    for point in sorted(_mounts_under(str(h.tmp)), key=len, reverse=True):
        problems.append(f"mount left: {point}")
        subprocess.run(["umount", "-l", point], check=False)
    netns_dir = h.run_dir / "netns"
    if netns_dir.is_dir() and list(netns_dir.iterdir()):
        problems.append(f"netns files left: {[p.name for p in netns_dir.iterdir()]}")
    assert not problems, problems
