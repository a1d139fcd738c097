"""The Docker tier: a real dockerd 20.10 with default settings, our daemon as its plugin.

The suite starts what it needs: dockerd (unless one already answers), a busybox image made with
``docker import``, and a cnmkit daemon serving /run/docker/plugins, where dockerd looks. Every
container and network a test makes is named ``cnmt-...`` and removed by name afterwards, and the
test then checks that no link, firewall rule or address allocation of ours is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root, socket_answers

DOCKER = shutil.which("docker", path="/usr/bin") or "docker"
PLUGIN_DIR = "/run/docker/plugins"
IMAGE = "cnmkit-test-bb:latest"
ENV = {**os.environ, "DOCKER_API_VERSION": "1.41"}


def docker(*args: str, check: bool = True, timeout: float = 120, host: str | None = None
           ) -> subprocess.CompletedProcess:
    """``docker ARGS`` against the machine's dockerd, or the one at ``host`` (``unix://...``: the
    overlay tier's dockerd inside a lab host, tests/overlay/dockerd.py)."""
    proc = subprocess.run([DOCKER, *(("-H", host) if host else ()), *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}{', ' + host if host else ''}): "
                             f"{proc.stderr.strip()}")
    return proc


def docker_up(host: str | None = None) -> bool:
    try:
        return docker("version", "--format", "{{.Server.Version}}", check=False, timeout=10,
                      host=host).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def import_busybox(tag: str, host: str | None = None) -> str:
    """The tiers' image: busybox-static and its applet links, ``docker import``-ed as ``tag``."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    with tempfile.TemporaryDirectory() as root:
        bindir = Path(root, "bin")
        bindir.mkdir()
        shutil.copy(busybox, bindir / "busybox")
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (bindir / applet).symlink_to("busybox")
        for d in ("etc", "tmp", "proc", "sys", "dev"):
            Path(root, d).mkdir(exist_ok=True)
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([DOCKER, *(("-H", host) if host else ()), "import", "-", tag], stdin=tar.stdout, env=ENV,
                       check=True, capture_output=True)
        tar.wait()
    return tag


@pytest.fixture(scope="session")
def dockerd() -> Iterator[None]:
    require_root()
    if shutil.which("dockerd") is None:
        pytest.fail("dockerd is not installed: run scripts/install.sh")
    if docker_up():
        yield
        return
    log = open(tempfile.mktemp(prefix="cnmkit-dockerd-", suffix=".log"), "wb")
    proc = subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 90
    while not docker_up():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"dockerd did not start; see {log.name}")
        time.sleep(0.5)
    yield
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="session")
def image(dockerd: None) -> Iterator[str]:
    yield import_busybox(IMAGE)


class CnmkitDaemon:
    """Our daemon as a separate process in the root namespace, where dockerd's sandboxes live."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(state_dir, "daemon.log")

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "--plugin-dir", PLUGIN_DIR, "--state-dir", self.state_dir,
             "--log-level", "debug", "daemon"], stdout=log, stderr=log, start_new_session=True,
            cwd=str(Path(__file__).resolve().parents[2]))
        deadline = time.monotonic() + 30
        while not all(socket_answers(os.path.join(PLUGIN_DIR, s)) for s in ("cnmkit.sock", "cnmkit-bridge.sock")):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"cnmkit daemon did not start:\n{Path(self.log_path).read_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.proc = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "cli.main", "--plugin-dir", PLUGIN_DIR,
                               "--state-dir", self.state_dir, *args], capture_output=True, text=True,
                              cwd=str(Path(__file__).resolve().parents[2]), timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"cnmkit {' '.join(args)}: {proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def cnmkit(dockerd: None) -> Iterator[CnmkitDaemon]:
    for name in ("cnmkit.sock", "cnmkit-bridge.sock"):
        path = os.path.join(PLUGIN_DIR, name)
        if os.path.exists(path):
            pytest.fail(f"{path} exists: another cnmkit daemon is serving dockerd; stop it first")
    state = tempfile.mkdtemp(prefix="cnmkit-docker-tier-")
    # The tier runs in the root namespace: put its global forwarding switches back as they were.
    switches = ["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"]
    before = {path: Path(path).read_text() for path in switches}
    daemon = CnmkitDaemon(state)
    daemon.start()
    yield daemon
    daemon.stop()
    shutil.rmtree(state, ignore_errors=True)
    for path, value in before.items():
        if Path(path).read_text() != value:
            Path(path).write_text(value)


@pytest.fixture
def names(cnmkit: CnmkitDaemon) -> Iterator[Callable[[str], str]]:
    """Unique ``cnmt-`` names for containers and networks; all removed by name after the test."""
    made: list[str] = []
    counter = iter(range(1000))

    def make(tag: str) -> str:
        name = f"cnmt-{os.getpid() % 10000}-{next(counter)}-{tag}"
        made.append(name)
        return name

    yield make
    for name in made:
        docker("rm", "-f", name, check=False)
    for name in made:
        docker("network", "rm", name, check=False)
