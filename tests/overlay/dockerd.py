"""A real dockerd inside one lab host, seeing that host's cnmkit sockets and nothing else.

Why not the machine's dockerd: the docker tier owns the one in the root namespace (one test run
at a time under /tmp/cnmkit-docker.lock), and a dockerd there would reach the root namespace's
plugins, not a lab host's. So this one is a separate engine, default settings except its paths:

- ``unshare -m --propagation private``: a mount namespace of its own, in which the host's plugin
  directory is bind-mounted over /run/docker/plugins (where dockerd looks for legacy plugins;
  the directory is shared by everything on the machine, the mount is not);
- ``nsenter --net``: the lab host's network namespace, so docker0, its iptables rules and the
  containers' veths live in that host;
- its own --data-root, --exec-root, --pidfile and -H unix socket; dockerd starts its own
  containerd under the exec root (its socket, state and pid file are private to this engine).

``unshare`` and ``nsenter`` exec (no fork), so the pid Popen returns is dockerd's: it is stopped
by that pid, and its containerd by the pid in containerd's pid file.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.docker.conftest import docker, docker_up, import_busybox
from tests.overlay.harness import OverlayHost, alive

IMAGE = "cnmkit-ovl-bb:latest"
START_LIMIT = 120.0                     # seconds; only a bound on a hang


class HostDockerd:
    def __init__(self, host: OverlayHost) -> None:
        self.host = host
        # Short paths: containerd's and the shims' unix sockets live under the exec root (108 bytes).
        self.exec_root = Path(tempfile.mkdtemp(prefix=f"cnmd{host.name}-"))
        self.data_root = host.tmp / "docker-data"
        self.sock = Path(host.docker_socket)          # where the host's cnmkit daemon asks for names
        self.log_path = host.tmp / "dockerd.log"
        self.proc: subprocess.Popen | None = None
        self.image = IMAGE

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return docker(*args, check=check, timeout=timeout, host=self.url)

    def up(self) -> bool:
        return docker_up(self.url)

    def start(self) -> None:
        os.makedirs("/run/docker/plugins", exist_ok=True)   # the mount point (an empty dir is harmless)
        self.data_root.mkdir(exist_ok=True)
        script = " && ".join([
            f"mount --bind {shlex.quote(str(self.host.plugin_dir))} /run/docker/plugins",
            "exec dockerd " + " ".join(shlex.quote(a) for a in (
                "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
                "--pidfile", str(self.exec_root / "dockerd.pid"), "-H", f"unix://{self.sock}")),
        ])
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "nsenter", f"--net=/run/netns/{self.host.netns}",
             "sh", "-c", script], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_LIMIT
        while not self.up():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"dockerd in {self.host.name} did not start:\n{self.log()}")
            time.sleep(0.3)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def import_busybox(self) -> str:
        """The docker tier's image (tests/docker/conftest.py), imported into this engine."""
        return import_busybox(IMAGE, host=self.url)

    def _containerd_pid(self) -> int:
        for path in (self.exec_root / "containerd" / "containerd.pid",):
            try:
                return int(path.read_text().strip())
            except (OSError, ValueError):
                continue
        return 0

    def stop(self) -> None:
        """Containers removed, dockerd stopped by its pid, its containerd too if it outlived it."""
        if self.proc is None:
            return
        containerd = self._containerd_pid()
        if self.proc.poll() is None and self.up():
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if containerd:
            deadline = time.monotonic() + 30
            while alive(containerd) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(containerd):
                os.kill(containerd, signal.SIGKILL)
        shutil.rmtree(self.exec_root, ignore_errors=True)
        shutil.rmtree(self.data_root, ignore_errors=True)

