"""Shared plumbing for the benchmarks in bench/: timing, summaries, private netns, machine info.

Benchmarks that touch the kernel run inside a private "host" network namespace so that the
root namespace is never modified (perf-anchors.md: every anchor was measured that way). The
namespaces are made with one ``ip -batch`` process because a thousand ``ip netns add`` calls
would cost seconds, and every name carries the owner's prefix so cleanup goes by name only.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
NETNS_DIR = "/var/run/netns"


def now_ms() -> float:
    """A monotonic clock in milliseconds (perf_counter, as every anchor used)."""
    return time.perf_counter() * 1000.0


def timed(fn: Callable[[], object]) -> float:
    """Milliseconds one call of ``fn`` took."""
    t0 = now_ms()
    fn()
    return now_ms() - t0


@dataclass(frozen=True)
class Summary:
    """min / median / max (N), the format of perf-anchors.md, plus p90 where N allows."""

    n: int
    min: float
    median: float
    max: float
    p90: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan)
        ordered = sorted(samples)
        p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
        return cls(len(ordered), ordered[0], statistics.median(ordered), ordered[-1], p90)

    def text(self, digits: int = 1) -> str:
        return f"{self.min:.{digits}f} / **{self.median:.{digits}f}** / {self.max:.{digits}f} ({self.n})"

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "min": self.min, "median": self.median, "max": self.max, "p90": self.p90}


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and b == b and a == a else "—"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- private network namespaces ------------------------------------------------------------------


def ip_batch(commands: Sequence[str], *, check: bool = True) -> None:
    """Run many ``ip`` commands in one process (``ip -batch -``): one exec instead of thousands."""
    if not commands:
        return
    proc = subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(commands) + "\n",
                          text=True, capture_output=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip -batch failed: {proc.stderr.strip()[:500]}")


def netns_add(names: Sequence[str]) -> None:
    ip_batch([f"netns add {name}" for name in names])


def netns_names_with_prefix(prefix: str) -> list[str]:
    """Named namespaces whose name starts with ``prefix`` (read from /var/run/netns, no ``ip``)."""
    try:
        entries = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries if e.startswith(prefix))


def netns_delete_prefix(prefix: str) -> int:
    """Delete every named netns starting with ``prefix``; links inside die with them. Returns count."""
    names = netns_names_with_prefix(prefix)
    ip_batch([f"netns del {name}" for name in names], check=False)
    return len(names)


# -- machine information ---------------------------------------------------------------------------


def _first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0] if out else ""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare these figures with perf-anchors.md or another machine."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyroute2": _version("pyroute2"),
        "aiohttp": _version("aiohttp"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "loadavg_start": list(os.getloadavg()),
        "containernetworking_plugins": _first_line(
            ["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"]),
        "git_head": _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
    }


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>-<timestamp>.json`` (the directory is gitignored)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    return path
