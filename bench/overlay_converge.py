"""Overlay convergence: from an endpoint's creation on one host to the first ping from the others.

Why: the overlay's entries come from the store (issue 8 item 2): a new endpoint is usable from
another host only once that host's agent has seen it on its watch and written the FDB and
neighbour entries. This measures that end to end, with 3 and with 5 hosts, against the floor
it cannot beat, the store's own put-to-watch latency, measured in the same run on the same etcd.

How (tests/overlay/harness.py builds the lab: an underlay netns, N host netns, a 3-member etcd,
a daemon per host): one overlay; a probe container on every host, its ARP retransmit set to 5 ms
so a failed resolution is retried at once; per sample, a target endpoint is created on host
``i mod N`` (Engine.attach + runtime.sandbox.configure, exactly what ``cnmkit run`` does, in
process to keep the CLI's process start out of the figure) with a fresh address, while every
other host's probe is already running ``ping -D -i 0.002`` to that address. A sample is the
first reply's timestamp (ping's -D, the kernel's clock) minus the time the creation started; it
is reported per probe and as the slowest probe (every host converged). Then the target is
detached and the next sample starts.

Run as root from the repository root:
    PYTHONPATH=. .venv/bin/python bench/overlay_converge.py [--samples 100] [--hosts 3,5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from client.engine import Engine, PluginError  # noqa: E402
from client.transport import PluginTransport  # noqa: E402
from runtime.sandbox import configure  # noqa: E402
from tests.overlay.harness import Lab, OverlayHost  # noqa: E402

VNI = 12000
SUBNET = "10.120.0.0/16"
PING_LIMIT = 30.0                     # seconds a probe waits for its first reply before the sample fails
STEPS: dict[str, list[float]] | None = None   # while a timed attach runs: ms per protocol call and configure


def _timed_call(self: PluginTransport, method: str, body: dict[str, object] | None = None) -> dict[str, object]:
    """PluginTransport.call, timed into STEPS (the split of the attach by call)."""
    t0 = time.perf_counter()
    try:
        return _plain_call(self, method, body)
    finally:
        if STEPS is not None:
            STEPS.setdefault(method.rpartition(".")[2], []).append((time.perf_counter() - t0) * 1000)


_plain_call = PluginTransport.call
PluginTransport.call = _timed_call  # type: ignore[method-assign]


def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 100 samples is the 99th smallest)."""
    ordered = sorted(samples)
    return ordered[max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 100)) - 1))]


def attach(host: OverlayHost, network: str, netns: str, ip: str | None = None, *, wait_ns: bool = False) -> object:
    """Engine.attach + configure, as ``cnmkit run`` does. ``wait_ns``: retry while the overlay's
    namespace on a host with no endpoint yet is still being made by its agent (the first
    Join there raced it in the driver's first version; harmless now). Only the probes use it, untimed."""
    for _ in range(100 if wait_ns else 1):
        try:
            att = Engine(str(host.plugin_dir)).attach(network, f"/run/netns/{netns}", ip=ip, direct=True)
            break
        except PluginError as exc:
            if not wait_ns or "No such file" not in str(exc):
                raise
            time.sleep(0.1)
    else:
        raise RuntimeError(f"attach to {network} on {host.name} kept failing")
    t0 = time.perf_counter()
    configure(f"/run/netns/{netns}", att.to_dict(), "eth0", True)
    if STEPS is not None:
        STEPS.setdefault("configure", []).append((time.perf_counter() - t0) * 1000)
    return att


class FirstReply:
    """``ping -D`` from a probe netns; the unix time of its first echo reply (None: none came)."""

    def __init__(self, netns: str, target: str) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, "ping", "-D", "-n", "-i", "0.002", target],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.at: float | None = None
        self.done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "bytes from" in line and line.startswith("["):
                self.at = float(line[1:line.index("]")])
                break
        self.done.set()

    def wait(self) -> float | None:
        self.done.wait(PING_LIMIT)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return self.at


def put_to_watch(host: OverlayHost, count: int) -> list[float]:
    """The store's floor in the same lab: ms from an etcd put to its event on a watch (run in h1)."""
    code = f"""
import json, threading, time
from store.url import open_store
s = open_store({host.store_url!r})
rev = s.put("bench/x", b"0")
seen = {{}}
def watch():
    for ev in s.watch("bench/", rev + 1):
        seen[ev.kv.key if hasattr(ev, "kv") else ev.key] = time.perf_counter()
        if len(seen) >= {count}:
            return
t = threading.Thread(target=watch, daemon=True); t.start(); time.sleep(0.3)
sent = {{}}
for i in range({count}):
    sent[f"bench/k{{i}}"] = time.perf_counter(); s.put(f"bench/k{{i}}", b"1"); time.sleep(0.01)
t.join(10)
print(json.dumps([(seen[k] - sent[k]) * 1000 for k in sent if k in seen]))
"""
    out = subprocess.run(host.enter(sys.executable, "-c", code), capture_output=True, text=True, env=host.env(),
                         cwd=str(REPO), timeout=120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return [float(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]


def run_lab(n: int, samples: int) -> dict[str, object]:
    global STEPS
    steps: dict[str, list[float]] = {}
    lab = Lab(n, tag=f"b{n}").start()
    try:
        lab.wait_hosts([h.name for h in lab.hosts])
        floor = put_to_watch(lab.hosts[0], 50)
        Engine(str(lab.hosts[0].plugin_dir)).create_network("bench", driver="vxlan", subnets=[SUBNET],
                                                            options={"vni": str(VNI)})
        probes, targets = {}, {}
        for host in lab.hosts:
            probes[host.name] = lab.container_netns(host, "pr")
            targets[host.name] = lab.container_netns(host, "tg")
            attach(host, "bench", probes[host.name], wait_ns=True)
            subprocess.run(["ip", "netns", "exec", probes[host.name], "sysctl", "-qw",
                            "net.ipv4.neigh.eth0.retrans_time_ms=5"], check=True)
        per_probe: list[float] = []
        slowest: list[float] = []
        after_create: list[float] = []
        attach_ms: list[float] = []
        failures = 0
        for i in range(samples):
            creator = lab.hosts[i % n]
            ip = f"10.120.{100 + i // 200}.{10 + i % 200}"
            observers = [h for h in lab.hosts if h is not creator]
            pingers = [FirstReply(probes[h.name], ip) for h in observers]
            time.sleep(0.05)                      # every pinger is sending before the creation starts
            t0 = time.time()
            STEPS = steps
            try:
                att = attach(creator, "bench", targets[creator.name], ip=ip)
            finally:
                STEPS = None
            t1 = time.time()
            firsts = [p.wait() for p in pingers]
            Engine(str(creator.plugin_dir)).detach(att)  # type: ignore[arg-type]
            if any(f is None for f in firsts):
                failures += 1
                continue
            got = [(f - t0) * 1000 for f in firsts if f is not None]
            per_probe += got
            slowest.append(max(got))
            after_create.append((max(f for f in firsts if f is not None) - t1) * 1000)
            attach_ms.append((t1 - t0) * 1000)
        return {"hosts": n, "samples": samples, "failures": failures, "floor_put_to_watch_ms": floor,
                "per_probe_ms": per_probe, "slowest_probe_ms": slowest, "after_create_returned_ms": after_create,
                "attach_ms": attach_ms, "attach_steps_ms": steps}
    finally:
        lab.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--hosts", default="3,5")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    results = [run_lab(int(n), args.samples) for n in args.hosts.split(",")]
    print("| hosts | samples (failed) | store put→watch p50 / p99 | create→first ping, per probe p50 / p99 "
          "| every host p50 / p99 | ratio p99 every host / put→watch p99 |")
    print("|---|---|---|---|---|---|")
    for r in results:
        floor, per, every = r["floor_put_to_watch_ms"], r["per_probe_ms"], r["slowest_probe_ms"]
        assert isinstance(floor, list) and isinstance(per, list) and isinstance(every, list)
        print(f"| {r['hosts']} | {r['samples']} ({r['failures']}) | {pct(floor, 50):.1f} / {pct(floor, 99):.1f} ms "
              f"| {pct(per, 50):.1f} / {pct(per, 99):.1f} ms | {pct(every, 50):.1f} / {pct(every, 99):.1f} ms "
              f"| {pct(every, 99) / pct(floor, 99):.1f}x |")
    print("\nSplit of the every-host figure: the attach on the creating host (IPAM + CreateEndpoint + Join +"
          " configure), then from its return to the first reply on every other host (the agents).\n")
    print("| hosts | attach p50 / p99 | attach return → first reply everywhere p50 / p99 / max |")
    print("|---|---|---|")
    for r in results:
        att, after = r["attach_ms"], r["after_create_returned_ms"]
        assert isinstance(att, list) and isinstance(after, list)
        print(f"| {r['hosts']} | {pct(att, 50):.1f} / {pct(att, 99):.1f} ms "
              f"| {pct(after, 50):.1f} / {pct(after, 99):.1f} / {max(after):.1f} ms |")
    print("\nThe attach by step (the client's protocol calls, then configure in the container's netns), "
          "p50 / p99 ms:\n")
    names = list(dict.fromkeys(k for r in results for k in r["attach_steps_ms"]))  # type: ignore[attr-defined]
    print("| hosts | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for r in results:
        steps = r["attach_steps_ms"]
        assert isinstance(steps, dict)
        print(f"| {r['hosts']} | " + " | ".join(
            f"{pct(steps[k], 50):.1f} / {pct(steps[k], 99):.1f}" if steps.get(k) else "—" for k in names) + " |")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"overlay_converge-{int(time.time())}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"\nall samples: {path}")


if __name__ == "__main__":
    main()
