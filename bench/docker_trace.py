"""Where ``docker run --rm`` on a cnmkit network spends time, seen from dockerd's side of the socket.

Issue 11 item 2 asks why a remote-driver network costs dockerd more than its in-process bridge
although the plugin's own server time is small. This script puts a timing proxy on the plugin
sockets dockerd dials (``/run/docker/plugins/cnmkit*.sock``), forwarding byte for byte to a cnmkit
daemon serving a private plugin dir, and records per container: every HTTP request (path, the
connection it came on, when its first byte arrived, when the reply's last byte left), so the
output says how many requests and connections a container costs, whether dockerd reuses them,
and how long dockerd spends between one call's reply and its next request (its own remote-driver
work). The proxy's own hop is measured too (a request's time at the proxy minus the daemon's
server time, CNMKIT_PROFILE), so it can be subtracted.

Runs like bench/docker_run.py (under ``/tmp/cnmkit-docker.lock``, its dockerd if none answers,
names ``cnmt-<pid>-...``).

    PYTHONPATH=. .venv/bin/python bench/docker_trace.py [--containers 20] [--default-ipam]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, markdown_table
from bench.docker_run import IMAGE, LOCK, PLUGIN_DIR, Events, docker, docker_up, ensure_image


@dataclass
class Request:
    conn: int
    path: str
    start: float                 # perf_counter seconds: first byte of the request at the proxy
    end: float = 0.0             # last byte of the reply written back to dockerd


@dataclass
class Trace:
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


async def _pump_requests(conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         trace: Trace, pending: list[Request]) -> None:
    """dockerd -> daemon: note each request line as it passes (bodies are small, one per request)."""
    while data := await reader.read(65536):
        if data[:5] == b"POST ":
            req = Request(conn, data.split(b" ", 2)[1].decode(), time.perf_counter())
            pending.append(req)
            with trace.lock:
                trace.requests.append(req)
        writer.write(data)
        await writer.drain()
    writer.close()


async def _pump_replies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        pending: list[Request]) -> None:
    """daemon -> dockerd: a reply chunk ends the oldest open request (replies are one write each)."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
        if data[:5] == b"HTTP/" and pending:
            pending.pop(0).end = time.perf_counter()
    writer.close()


async def _serve(listen: str, upstream: str, trace: Trace) -> asyncio.AbstractServer:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with trace.lock:
            trace.connections += 1
            conn = trace.connections
        ur, uw = await asyncio.open_unix_connection(upstream)
        pending: list[Request] = []
        with contextlib.suppress(asyncio.CancelledError):      # the proxy stopping with dockerd connected
            await asyncio.gather(_pump_requests(conn, r, uw, trace, pending), _pump_replies(ur, w, pending),
                                 return_exceptions=True)

    return await asyncio.start_unix_server(handle, path=listen)


def _proxy_thread(pairs: list[tuple[str, str]], trace: Trace, ready: threading.Event,
                  stop: threading.Event) -> None:
    async def main() -> None:
        servers = [await _serve(a, b, trace) for a, b in pairs]
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        for s in servers:
            s.close()

    asyncio.run(main())


def run(args: argparse.Namespace) -> int:
    tag = f"cnmt-{os.getpid()}"
    state = tempfile.mkdtemp(prefix="cnmt-docker-")
    up_dir = os.path.join(state, "plugins")
    own_dockerd: subprocess.Popen[bytes] | None = None
    cnmkit: subprocess.Popen[bytes] | None = None
    trace = Trace()
    stop = threading.Event()
    proxy: threading.Thread | None = None
    net = f"{tag}-net"
    windows: list[tuple[float, float]] = []
    cids: dict[str, str] = {}
    event_lines: list[str] = []
    try:
        if not docker_up():
            log = open(os.path.join(state, "dockerd.log"), "wb")
            own_dockerd = subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
            while not docker_up():
                if own_dockerd.poll() is not None:
                    raise RuntimeError(f"dockerd did not start; see {log.name}")
                time.sleep(0.5)
        ensure_image()
        log = open(os.path.join(state, "cnmkit.log"), "ab")
        cnmkit = subprocess.Popen([sys.executable, "-m", "cli.main", "--plugin-dir", up_dir, "--state-dir",
                                   os.path.join(state, "cnmkit"), "--log-level", "warning", "daemon"],
                                  stdout=log, stderr=log, cwd=REPO, start_new_session=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        while not os.path.exists(os.path.join(up_dir, "cnmkit-bridge.sock")):
            if cnmkit.poll() is not None:
                raise RuntimeError(Path(state, "cnmkit.log").read_text()[-2000:])
            time.sleep(0.05)
        os.makedirs(PLUGIN_DIR, exist_ok=True)
        pairs = [(os.path.join(PLUGIN_DIR, n), os.path.join(up_dir, n)) for n in ("cnmkit.sock", "cnmkit-bridge.sock")]
        for listen, _ in pairs:
            if os.path.exists(listen):
                raise RuntimeError(f"{listen} exists: another cnmkit daemon serves dockerd")
        ready = threading.Event()
        proxy = threading.Thread(target=_proxy_thread, args=(pairs, trace, ready, stop), daemon=True)
        proxy.start()
        ready.wait()
        ipam = [] if args.default_ipam else ["--ipam-driver", "cnmkit"]
        docker("network", "create", "-d", "cnmkit-bridge", *ipam, "--subnet", "10.233.0.0/24", net)
        docker("network", "create", "-d", "bridge", "--subnet", "10.234.0.0/24", f"{tag}-br")
        events = Events()
        variants = {"cnmkit-bridge": net, "bridge": f"{tag}-br", "none": "none"}
        for i in range(args.containers + 1):
            for variant, network in variants.items():
                t0 = time.perf_counter()
                cid = docker("run", "-d", "--rm", "--network", network, IMAGE, "sh", "-c", ":").stdout.strip()
                docker("wait", cid, check=False)
                while docker("inspect", cid, check=False).returncode == 0:
                    time.sleep(0.01)
                if i and variant == "cnmkit-bridge":     # the first round is a warm-up
                    windows.append((t0, time.perf_counter()))
                if i:
                    cids[cid] = variant
        event_lines = events.stop(f"{tag}-last")
    finally:
        docker("network", "rm", net, f"{tag}-br", check=False)
        stop.set()
        if proxy is not None:
            proxy.join(timeout=10)
        for listen in (os.path.join(PLUGIN_DIR, n) for n in ("cnmkit.sock", "cnmkit-bridge.sock")):
            if proxy is not None and os.path.exists(listen):
                os.unlink(listen)
        if cnmkit is not None:
            cnmkit.send_signal(signal.SIGTERM)
            cnmkit.wait(timeout=60)
        if own_dockerd is not None:
            own_dockerd.send_signal(signal.SIGTERM)
            own_dockerd.wait(timeout=60)
        shutil.rmtree(state, ignore_errors=True)
    report(trace, windows)
    phases(event_lines, cids)
    return 0


PHASES = [("container create", "network connect"), ("network connect", "container start"),
          ("container start", "container die"), ("container die", "network disconnect"),
          ("network disconnect", "container destroy"), ("container create", "container destroy")]


def phases(lines: list[str], cids: dict[str, str]) -> None:
    """dockerd's own event times (nanoseconds, its clock), per container: the phases by variant."""
    at: dict[str, dict[str, int]] = {}
    for line in lines:
        ev = json.loads(line)
        cid = ev.get("Actor", {}).get("Attributes", {}).get("container") if ev["Type"] == "network" else ev["id"]
        if cid in cids:
            at.setdefault(cid, {}).setdefault(f"{ev['Type']} {ev['Action']}", ev["timeNano"])
    rows = []
    for a, b in PHASES:
        row = [f"{a} -> {b}"]
        for variant in ("none", "bridge", "cnmkit-bridge"):
            d = [(t[b] - t[a]) / 1e6 for c, t in at.items() if cids[c] == variant and a in t and b in t]
            row.append(f"{statistics.median(d):.1f} ({len(d)})" if d else "—")
        rows.append(row)
    print("\nphases from dockerd's events (median ms (N)); 'docker run -d --rm', then wait until removed:")
    print(markdown_table(["phase", "none", "bridge", "cnmkit-bridge"], rows))


def report(trace: Trace, windows: list[tuple[float, float]]) -> None:
    per: list[list[Request]] = [[r for r in trace.requests if a <= r.start <= b] for a, b in windows]
    n = len(per)
    print(f"{n} containers; requests per container: {statistics.median(len(p) for p in per)}; "
          f"connections per container: {statistics.median(len({r.conn for r in p}) for p in per)}; "
          f"connections in all (incl. network create/rm): {trace.connections}")
    # the sequence of one container, with medians over all of them, position by position
    seqs = [tuple(r.path for r in p) for p in per]
    common = max(set(seqs), key=seqs.count)
    same = [p for p in per if tuple(r.path for r in p) == common]
    print(f"sequence seen in {len(same)} of {n} containers:")
    rows = []
    for k, path in enumerate(common):
        at = [(p[k].start - windows[per.index(p)][0]) * 1000 for p in same]
        took = [(p[k].end - p[k].start) * 1000 for p in same]
        gap = [((p[k].start - p[k - 1].end) * 1000) if k else 0.0 for p in same]
        new_conn = sum(1 for p in same if k == 0 or p[k].conn != p[k - 1].conn)
        rows.append([path.lstrip("/"), f"{statistics.median(at):.1f}", f"{statistics.median(took):.2f}",
                     f"{statistics.median(gap):.1f}" if k else "", f"{new_conn}/{len(same)}"])
    print(markdown_table(["request", "at ms (from docker run)", "round trip ms", "gap since previous reply ms",
                          "other connection than previous"], rows))
    total = [(b - a) * 1000 for a, b in windows]
    in_calls = [sum((r.end - r.start) * 1000 for r in p) for p in per]
    print(f"docker run median {statistics.median(total):.1f} ms; of it inside plugin calls "
          f"(round trips at the proxy) {statistics.median(in_calls):.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=20)
    ap.add_argument("--default-ipam", action="store_true", help="the network uses dockerd's default IPAM")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (dockerd)", file=sys.stderr)
        return 2
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return run(args)


if __name__ == "__main__":
    sys.exit(main())
