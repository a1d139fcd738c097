"""A real 3-member etcd cluster on loopback ports, started and stopped by the test suite.

The etcd backend's promises (failover, watch resume, compaction) only mean something against
real members that really die, so tests start Debian's ``etcd`` (package etcd-server), kill
members by the pids started here, and read cluster state with ``etcdctl`` (package
etcd-client) as an independent oracle.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

ETCD = shutil.which("etcd")
ETCDCTL = shutil.which("etcdctl")
START_LIMIT = 60.0  # seconds a fresh cluster may take to elect a leader on a loaded machine


def require_etcd() -> None:
    """Skip without etcd on a developer's machine; fail under CNMKIT_ALL_TIERS=1 (CI)."""
    if ETCD and ETCDCTL:
        return
    reason = "needs etcd and etcdctl (apt-get install etcd-server etcd-client)"
    if os.environ.get("CNMKIT_ALL_TIERS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdCluster:
    """Three members ``m0..m2`` with data under one temporary directory."""

    def __init__(self, size: int = 3, *, netns: str | None = None, host: str = "127.0.0.1") -> None:
        # In a test namespace, the members listen on that namespace's loopback (or on ``host``, an
        # address of that namespace other test namespaces reach through a veth the test made).
        self.host = host
        self.wrap = ["ip", "netns", "exec", netns] if netns else []
        self.dir = tempfile.mkdtemp(prefix="cnmkit-etcd-")
        self.names = [f"m{i}" for i in range(size)]
        self.client_ports = [_free_port() for _ in self.names]
        self.peer_ports = [_free_port() for _ in self.names]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.initial = ",".join(f"{n}=http://{host}:{p}" for n, p in zip(self.names, self.peer_ports, strict=True))

    @property
    def endpoints(self) -> list[str]:
        return [f"{self.host}:{p}" for p in self.client_ports]

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(self.endpoints)

    def start(self) -> None:
        for i in range(len(self.names)):
            self.start_member(i, state="new")
        self.wait_healthy()

    def start_member(self, i: int, state: str = "existing") -> None:
        assert self.procs[i] is None
        client, peer = f"http://{self.host}:{self.client_ports[i]}", f"http://{self.host}:{self.peer_ports[i]}"
        log = open(os.path.join(self.dir, f"{self.names[i]}.log"), "ab")
        self.procs[i] = subprocess.Popen(
            [*self.wrap, ETCD or "etcd", "--name", self.names[i], "--data-dir", os.path.join(self.dir, self.names[i]),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", self.initial, "--initial-cluster-state", state,
             "--initial-cluster-token", os.path.basename(self.dir),
             "--heartbeat-interval", "100", "--election-timeout", "1000",
             # 64 ops of 256 KiB (the store's portable limits) must fit in one request.
             "--max-request-bytes", str(20 * 1024 * 1024), "--max-txn-ops", "128"],
            stdout=log, stderr=log, start_new_session=True)
        log.close()

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        self.procs[i] = None

    def status(self, i: int) -> dict | None:
        """``etcdctl endpoint status`` of member ``i``, or None if it does not answer."""
        out = subprocess.run([*self.wrap, ETCDCTL or "etcdctl", "--endpoints", self.endpoints[i],
                              "--dial-timeout", "1s", "--command-timeout", "2s", "endpoint", "status", "-w", "json"],
                             capture_output=True, text=True, check=False, env={**os.environ, "ETCDCTL_API": "3"})
        if out.returncode != 0:
            return None
        return json.loads(out.stdout)[0]["Status"]

    def leader(self) -> int:
        """Index of the member that is leader now, asked of the members themselves."""
        for i, proc in enumerate(self.procs):
            st = self.status(i) if proc is not None else None
            if st and st["leader"] and st["leader"] == st["header"]["member_id"]:
                return i
        raise AssertionError("no member says it is the leader")

    def wait_healthy(self, limit: float = START_LIMIT) -> None:
        """Until every running member answers and all agree on one leader (bounded)."""
        deadline = time.monotonic() + limit
        while True:
            running = [i for i, p in enumerate(self.procs) if p is not None]
            for i in running:
                proc = self.procs[i]
                assert proc is not None and proc.poll() is None, self.log(i)
            st = [self.status(i) for i in running]
            if all(st) and len({s["leader"] for s in st if s}) == 1 and st[0] and st[0]["leader"]:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"etcd cluster not healthy within {limit}s: {st}")
            time.sleep(0.1)

    def get_on(self, i: int, key: str) -> str | None:
        """Linearizable read of ``key`` through member ``i`` (None: no such key or no answer)."""
        out = subprocess.run([*self.wrap, ETCDCTL or "etcdctl", "--endpoints", self.endpoints[i],
                              "--command-timeout", "2s", "get", key, "--print-value-only"],
                             capture_output=True, text=True, check=False, env={**os.environ, "ETCDCTL_API": "3"})
        return out.stdout.rstrip("\n") if out.returncode == 0 and out.stdout else None

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, read with etcdctl (an oracle independent of our client)."""
        out = subprocess.run([*self.wrap, ETCDCTL or "etcdctl", "--endpoints", ",".join(self.endpoints),
                              "--command-timeout", "5s", "get", "--prefix", "--keys-only", prefix],
                             capture_output=True, text=True, check=True, env={**os.environ, "ETCDCTL_API": "3"})
        return [line for line in out.stdout.splitlines() if line]

    def log(self, i: int) -> str:
        with open(os.path.join(self.dir, f"{self.names[i]}.log"), errors="replace") as f:
            return f.read()[-3000:]

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                self.procs[i] = None
        shutil.rmtree(self.dir, ignore_errors=True)
