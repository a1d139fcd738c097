"""Connections per socket are capped, idle ones time out, running out of fds is logged once.

A real daemon process (the null driver and a memory store: no root needed) on a tmp socket dir.
Its fd limit is lowered inside that process only (RLIMIT_NOFILE), never in the test process.
The daemon's log (its stderr) is the oracle for "logged once per burst"; answers on the socket
are the oracle for "still serves".
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = str(Path(__file__).resolve().parents[2])
SAFETY = 30.0  # seconds a socket read may block before the test fails instead of hanging

DAEMON = r"""
import logging, resource, sys
nofile, limit, idle, retry, plugins, state = sys.argv[1:7]
if int(nofile):
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(nofile), int(nofile)))
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
from plugin.server import DaemonConfig, run_daemon
run_daemon(DaemonConfig(plugin_dir=plugins, state_dir=state, store_url="memory://", drivers=["null"],
                        max_connections=int(limit), idle_timeout=float(idle),
                        accept_retry_delay=float(retry)))
"""

ACTIVATE = b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 0\r\n\r\n"


class Daemon:
    def __init__(self, tmp: Path, *, nofile: int = 0, limit: int = 128, idle: float = 75.0,
                 retry: float = 1.0) -> None:
        self.sock_path = str(tmp / "plugins" / "cnmkit.sock")
        self.log_path = tmp / "daemon.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DAEMON, str(nofile), str(limit), str(idle), str(retry),
             str(tmp / "plugins"), str(tmp / "state")],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=self._log, stderr=self._log)
        self.wait_for(lambda: "serving " + self.sock_path in self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool]) -> None:
        """Poll for something the daemon will do; fail (with its log) if it dies first, or if it
        never happens within SAFETY (a hang turned into a failure, not a timing assertion)."""
        deadline = time.monotonic() + SAFETY
        while not condition():
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, "never happened; daemon log:\n" + self.log()[-3000:]
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(**kw: float) -> Daemon:
        d = Daemon(tmp_path, **kw)  # type: ignore[arg-type]
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(SAFETY)
    s.connect(path)
    return s


def ask(s: socket.socket) -> bytes:
    """One Plugin.Activate on a kept-alive connection; b"" if the daemon closed it instead."""
    try:
        s.sendall(ACTIVATE)
    except (BrokenPipeError, ConnectionResetError):
        return b""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    assert match, head
    while len(body) < int(match.group(1)):
        chunk = s.recv(65536)
        assert chunk, "connection closed mid-answer"
        body += chunk
    return body


def served(s: socket.socket) -> bool:
    return b"Implements" in ask(s)


def test_connections_over_the_cap_are_closed_and_logged_once(start: Callable[..., Daemon]) -> None:
    daemon = start(limit=8)
    held = [connect(daemon.sock_path) for _ in range(8)]
    assert all(served(s) for s in held)              # all 8 accepted and kept alive
    extra = [connect(daemon.sock_path) for _ in range(20)]
    for s in extra:
        assert s.recv(1) == b"", "a connection over the cap must be closed at once"
        s.close()
    assert all(served(s) for s in held)              # the ones within the cap still work
    log = daemon.log()
    assert log.count("connections open, the limit") == 1, log

    held.pop().close()
    daemon.wait_for(lambda: "below the connection limit again; 20 connections were refused" in daemon.log())
    again = connect(daemon.sock_path)
    assert served(again)
    for s in [*held, again]:
        s.close()


def test_idle_connections_are_closed_after_the_timeout(start: Callable[..., Daemon]) -> None:
    daemon = start(limit=4, idle=0.3)
    silent = connect(daemon.sock_path)               # never sends a request
    used = connect(daemon.sock_path)
    assert served(used)                              # idle after one request
    assert silent.recv(1) == b"" and used.recv(1) == b""
    fresh = [connect(daemon.sock_path) for _ in range(4)]
    assert all(served(s) for s in fresh)             # their slots were given back
    for s in [silent, used, *fresh]:
        s.close()


def test_running_out_of_fds_is_logged_once_per_burst(start: Callable[..., Daemon]) -> None:
    """Idle clients use up the daemon's fds: one line when it starts, one when it ends, no spin."""
    daemon = start(nofile=48, limit=1000, retry=0.02)
    idle: list[socket.socket] = []
    daemon.wait_for(lambda: bool(idle.append(connect(daemon.sock_path))) or "cannot accept" in daemon.log())
    time.sleep(0.5)                                  # a burst of ~25 retries, not a race being dodged
    for s in idle:
        s.close()
    daemon.wait_for(lambda: "accepting again after" in daemon.log())
    log = daemon.log()
    assert log.count("cannot accept connections") == 1, log[-3000:]
    assert "out of system resource" not in log       # asyncio's per-attempt record (with traceback)
    attempts = int(re.search(r"accepting again after (\d+) failed attempts", log).group(1))  # type: ignore[union-attr]
    assert attempts >= 2                             # it did retry, and said so once
    assert len(log.splitlines()) < 20, log[-3000:]
    fresh = connect(daemon.sock_path)
    assert served(fresh)
    fresh.close()
