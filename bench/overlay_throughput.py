"""TCP throughput over the cnmkit overlay vs a hand-built VXLAN vs a bridge on one host, same run.

Why: the overlay's datapath should be the kernel's VXLAN and nothing more; the hand-built VXLAN
of the same shape (tests/overlay/handbuilt.py: bridge + VXLAN device, learning off, static FDB,
MTU 1450) is what it cannot beat, and a cnmkit bridge network between two containers on one
host is what any tunnel costs against no tunnel. All three run in one lab
(tests/overlay/harness.py: two host netns on an underlay bridge, a 3-member etcd, a daemon per
host), interleaved round by round so a change in the machine's load hits all three alike.

Each measurement: ``iperf3 -s -1`` in the server container, ``iperf3 -c ... -t T -J`` in the
client container, the receiver's bits/s. Containers are namespaces attached through the engine
and configured as the runtime configures them (Engine.attach + runtime.sandbox.configure).

Run as root from the repository root:
    PYTHONPATH=. .venv/bin/python bench/overlay_throughput.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from client.engine import Engine, PluginError  # noqa: E402
from runtime.sandbox import configure  # noqa: E402
from tests.overlay import handbuilt  # noqa: E402
from tests.overlay.harness import Lab, OverlayHost  # noqa: E402


def attach(host: OverlayHost, network: str, netns: str) -> str:
    """Attach and configure; the address. Retried while the overlay's namespace on a host that had
    no endpoint yet is still being made by its agent (Join raced it in the
    driver's first version; harmless now)."""
    for _ in range(100):
        try:
            att = Engine(str(host.plugin_dir)).attach(network, f"/run/netns/{netns}", direct=True)
            break
        except PluginError as exc:
            if "No such file" not in str(exc):
                raise
            time.sleep(0.1)
    else:
        raise RuntimeError(f"attach to {network} on {host.name} kept failing")
    configure(f"/run/netns/{netns}", att.to_dict(), "eth0", True)
    return att.address.split("/")[0]


def iperf(server_ns: str, client_ns: str, address: str, seconds: int) -> float:
    """Receiver-side Gbit/s of one TCP stream from client to server."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):                       # until the server listens
            probe = subprocess.run(["ip", "netns", "exec", server_ns, "ss", "-ltn", "sport = :5201"],
                                   capture_output=True, text=True)
            if ":5201" in probe.stdout:
                break
            time.sleep(0.05)
        out = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-c", address, "-t", str(seconds), "-J"],
                             capture_output=True, text=True, timeout=seconds + 60)
        data = json.loads(out.stdout)
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    lab = Lab(2, tag="tp").start()
    try:
        lab.wait_hosts(["h1", "h2"])
        h1, h2 = lab.hosts
        engine = Engine(str(h1.plugin_dir))
        engine.create_network("tpov", driver="vxlan", subnets=["10.121.0.0/24"], options={"vni": "12100"})
        engine.create_network("tpbr", subnets=["10.122.0.0/24"])
        ov_srv, ov_cli = lab.container_netns(h1, "os"), lab.container_netns(h2, "oc")
        ov_addr = attach(h1, "tpov", ov_srv)
        attach(h2, "tpov", ov_cli)
        br_srv, br_cli = lab.container_netns(h1, "bs"), lab.container_netns(h1, "bc")
        br_addr = attach(h1, "tpbr", br_srv)
        attach(h1, "tpbr", br_cli)
        hand = handbuilt.build(lab, [h1, h2], vni=12101)
        variants = {
            "cnmkit overlay (2 hosts)": (ov_srv, ov_cli, ov_addr),
            "hand-built VXLAN (2 hosts)": (hand[0].netns, hand[1].netns, hand[0].ip),
            "cnmkit bridge (1 host)": (br_srv, br_cli, br_addr),
        }
        for name, (_srv, cli, addr) in variants.items():         # reachable before anything is timed
            ok = subprocess.run(["ip", "netns", "exec", cli, "ping", "-c", "1", "-W", "5", addr],
                                capture_output=True).returncode == 0
            if not ok:
                raise RuntimeError(f"{name}: {addr} does not answer")
        results: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, (srv, cli, addr) in variants.items():
                results[name].append(iperf(srv, cli, addr, args.seconds))
        load = os.getloadavg()
    finally:
        lab.close()
    med = {name: statistics.median(v) for name, v in results.items()}
    overlay, hand_med, bridge = (med[n] for n in variants)
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
          f"{args.rounds} rounds x {args.seconds} s, one TCP stream\n")
    print("| variant | Gbit/s min / **median** / max |")
    print("|---|---|")
    for name, v in results.items():
        print(f"| {name} | {min(v):.2f} / **{med[name]:.2f}** / {max(v):.2f} |")
    print(f"\noverlay / hand-built VXLAN = {overlay / hand_med:.2f}; overlay / bridge = {overlay / bridge:.2f}; "
          f"hand-built / bridge = {hand_med / bridge:.2f}")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"overlay_throughput-{int(time.time())}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
