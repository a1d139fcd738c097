"""Deploy and destroy generated labs (a chain and a star) with cnmkit and with Mininet, same run.

    PYTHONPATH=. .venv/bin/python bench/lab_scale.py [--mode lab|batch] [--sizes 10,50,200] [--rounds 2]
                                                     [--cli] [--json out.json]

``--mode lab`` (the default): the lab command. Each case writes a lab file (``lab_file``) for
the topology Mininet builds and deploys then destroys it with ``LabService`` (what ``cnmkit lab
deploy/destroy`` run) in a fresh process inside a throwaway netns, timed from parsing the file
to the end, after the imports (as Mininet's worker is timed after its own); ``--cli`` adds the
``cnmkit lab deploy FILE`` / ``lab destroy FILE`` commands' wall time, interpreter start and all.
Kinds: ``linear`` = Mininet's ``LinearTopo(k=N, n=1)`` (N bridges in a line, one host on each),
``single`` = ``SingleSwitchTopo(k=N)`` (N hosts on one bridge), both as ``kind: bridge`` nodes
with p2p links and static addresses 10.0.0.i/8 like Mininet's; ``single-net`` = the same star with
the switch a cnmkit bridge *network* (daemon, IPAM, plugin protocol per node), against the same
Mininet star. A Mininet switch is a LinuxBridge, no controller.

``--mode batch``: the runtime's batch API alone (``start_many``/``stop_many``), as below.
Topologies of batch mode, built the same way by both:

* **star N**: N nodes on one bridge. cnmkit: a ``bridge`` network created through the daemon, N
  containers each attached to it over the plugin protocol (RequestAddress, CreateEndpoint, Join,
  EndpointOperInfo; address from IPAM, default route). Mininet: one ``LinuxBridge`` switch, N
  hosts linked to it (``Mininet(topo, switch=LinuxBridge, controller=None)``).
* **chain N**: N nodes, node i linked to node i+1 by a veth pair. cnmkit: ``Link`` specs (both
  ends addressed, a /30 each); Mininet: host-to-host links (Mininet addresses each host's first
  interface only).

What is timed. cnmkit: ``ContainerService.start_many`` (every node a container with its own
network, UTS, mount and PID namespaces, tini as PID 1, /etc/hosts, hostname, resolv.conf) and
``stop_many`` (stop and remove: processes, endpoints, addresses, namespaces, records), in-process
as a lab deployer calls them. Mininet: ``Mininet(...)`` + ``start()`` (its hosts are a shell each
in a network namespace only), and ``stop()``; run by Debian's ``/usr/bin/python3`` under
``ip netns exec`` in a private netns, so its bridge and links never touch the root namespace.
Rounds interleave the two tools, case by case. Every round checks that nothing is left: no
container record, no sandbox mount, no link but ``lo`` in the throwaway namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from runtime.batch import Link, NodeStart  # noqa: E402
from runtime.containers import ContainerService  # noqa: E402

MININET_PY = "/usr/bin/python3"
WORKERS = int(os.environ.get("CNMKIT_BATCH_WORKERS", "8"))
MININET_WORKER = r"""
import json, sys, time
from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.nodelib import LinuxBridge
from mininet.topo import Topo

class Star(Topo):
    def build(self, n):
        s = self.addSwitch("s1")
        for i in range(n):
            self.addLink(self.addHost("h%d" % (i + 1)), s)

class Chain(Topo):
    def build(self, n):
        hs = [self.addHost("h%d" % (i + 1)) for i in range(n)]
        for a, b in zip(hs, hs[1:]):
            self.addLink(a, b)

setLogLevel("error")
kind, n = sys.argv[1], int(sys.argv[2])
if kind == "linear":
    from mininet.topo import LinearTopo
    topo = LinearTopo(k=n, n=1)
elif kind == "single":
    from mininet.topo import SingleSwitchTopo
    topo = SingleSwitchTopo(k=n)
else:
    topo = (Star if kind == "star" else Chain)(n=n)
t0 = time.perf_counter()
net = Mininet(topo=topo, switch=LinuxBridge, controller=None)
net.start()
up = time.perf_counter() - t0
t0 = time.perf_counter()
net.stop()
print(json.dumps({"up_s": up, "down_s": time.perf_counter() - t0}))
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def links_in(ns: str) -> list[str]:
    out = sh("ip", "-n", ns, "-j", "link", "show").stdout
    return [link["ifname"] for link in json.loads(out or "[]")]


def start_daemon(ns: str, tmp: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT)
    log = open(os.path.join(tmp, "daemon.log"), "ab")
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "cli.main",
                             "--plugin-dir", f"{tmp}/plugins", "--state-dir", f"{tmp}/state", "daemon",
                             "--sandbox-dir", f"{tmp}/run/netns"],
                            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    for _ in range(300):
        if os.path.exists(f"{tmp}/plugins/cnmkit-bridge.sock"):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("daemon did not start")


def cnmkit_case(svc: ContainerService, kind: str, n: int) -> dict[str, float]:
    cmd = ["sleep", "1000000"]
    if kind == "star":
        specs = [NodeStart(f"s{i}", cmd, networks=["star"]) for i in range(n)]
        links: list[Link] = []
    else:
        specs = [NodeStart(f"c{i}", cmd) for i in range(n)]
        links = [Link(f"c{i}", "eth1", f"c{i + 1}", "eth2",
                      a_address=f"10.{92 + (i >> 14)}.{(i >> 6) & 255}.{(i & 63) * 4 + 1}/30",
                      b_address=f"10.{92 + (i >> 14)}.{(i >> 6) & 255}.{(i & 63) * 4 + 2}/30")
                 for i in range(n - 1)]
    t0 = time.perf_counter()
    nodes = svc.start_many(specs, links, workers=WORKERS)
    up = time.perf_counter() - t0
    assert len(nodes) == n and all(node.init_pid for node in nodes)
    t0 = time.perf_counter()
    svc.stop_many([node.id for node in nodes], timeout=10.0, workers=WORKERS)
    down = time.perf_counter() - t0
    left = svc.store.ids()
    assert not left, f"records left: {left}"
    return {"up_s": up, "down_s": down}


def mininet_case(ns: str, kind: str, n: int) -> dict[str, float]:
    proc = sh("ip", "netns", "exec", ns, MININET_PY, "-c", MININET_WORKER, kind, str(n), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"mininet failed:\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    left = [name for name in links_in(ns) if name != "lo"]
    assert not left, f"mininet left links: {left}"
    return result


# -- lab mode: `cnmkit lab deploy/destroy` on generated lab files ------------------------------

def _host_ip(i: int) -> str:
    """Mininet's addressing: host i (1-based) is 10.0.0.i/8 counted through the /8."""
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/8"


def lab_file(kind: str, n: int) -> str:
    """The lab, in cnmkit's format, that Mininet's topology of the same name builds.

    * ``linear``: Mininet's ``LinearTopo(k=n, n=1)``: switches s1..sn (``kind: bridge``), each
      with one host hI (eth0, 10.0.0.I/8) linked to it, and s(i) linked to s(i+1) by a veth pair.
    * ``single``: ``SingleSwitchTopo(k=n)``: one switch s1, hosts h1..hn each linked to it.
    * ``single-net``: the same star with the switch a cnmkit ``bridge`` network (IPAM addresses,
      endpoints through the daemon): cnmkit's multi-access way, not what Mininet builds.
    Every host is a container (own net, UTS, mount and PID namespaces) running ``sleep infinity``.
    """
    lines = [f"name: {kind.replace('-', '')}{n}", "topology:", "  defaults: {network-mode: none}", "  nodes:"]
    links: list[str] = []
    if kind == "single-net":
        lines += [f"    h{i}: {{cnmkit: {{networks: {{lan: {{}}}}}}}}" for i in range(1, n + 1)]
        lines += ["cnmkit:", "  networks:", "    lan: {driver: bridge, subnet: 10.90.0.0/16}"]
        return "\n".join(lines) + "\n"
    switches = n if kind == "linear" else 1
    lines += [f"    s{i}: {{kind: bridge}}" for i in range(1, switches + 1)]
    lines += [f"    h{i}: {{}}" for i in range(1, n + 1)]
    for i in range(1, n + 1):
        sw = i if kind == "linear" else 1
        port = 1 if kind == "linear" else i
        links.append(f'    - endpoints: ["h{i}:eth0", "s{sw}:s{sw}-eth{port}"]\n'
                     f"      cnmkit: {{addresses: [{_host_ip(i)}, null]}}")
    if kind == "linear":
        for i in range(2, n + 1):
            links.append(f'    - endpoints: ["s{i}:s{i}-eth2", "s{i - 1}:s{i - 1}-eth3"]')
    return "\n".join([*lines, "  links:", *links]) + "\n"


LAB_WORKER = r"""
import json, sys, time
from lab.deploy import LabService
from lab.spec import load_file
from runtime.containers import ContainerService
import drivers.kernel  # noqa: F401  (imports before the clock, as Mininet's worker has its own)
path, state, plugins, run = sys.argv[1:5]
svc = ContainerService(state, plugins, run)
labs = LabService(svc)
t0 = time.perf_counter()
lab = load_file(path)
labs.deploy(lab)
up = time.perf_counter() - t0
nodes = [e for e in labs.record(lab.name)["items"].values() if e["kind"] == "node"]
t0 = time.perf_counter()
labs.destroy(lab.name)
down = time.perf_counter() - t0
svc.close()
print(json.dumps({"up_s": up, "down_s": down, "nodes": len(nodes)}))
"""


CODE_ROOT = [ROOT]                 # --code-root: the tree whose lab command lab mode times


def lab_case(ns: str, tmp: str, kind: str, n: int, cli: bool) -> dict[str, float]:
    """Deploy and destroy the generated lab in a fresh process inside ``ns`` (as Mininet's is):
    ``LabService`` in-process, parse included, interpreter start not; or, with ``cli``, the
    ``cnmkit lab deploy FILE`` / ``lab destroy FILE`` commands' wall time, interpreter and all."""
    path = os.path.join(tmp, f"{kind}{n}.clab.yml")
    with open(path, "w") as fh:
        fh.write(lab_file(kind, n))
    env = dict(os.environ, PYTHONPATH=CODE_ROOT[0], CNMKIT_RUN_DIR=f"{tmp}/run")
    enter = ["nsenter", f"--net=/run/netns/{ns}"]
    if cli:
        base = [*enter, sys.executable, "-m", "cli.main", "--plugin-dir", f"{tmp}/plugins", "--state-dir",
                f"{tmp}/state", "lab"]
        t0 = time.perf_counter()
        subprocess.run([*base, "deploy", path], env=env, check=True, capture_output=True, cwd=CODE_ROOT[0])
        up = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([*base, "destroy", path], env=env, check=True, capture_output=True, cwd=CODE_ROOT[0])
        result = {"up_s": up, "down_s": time.perf_counter() - t0}
    else:
        proc = subprocess.run([*enter, sys.executable, "-c", LAB_WORKER, path, f"{tmp}/state", f"{tmp}/plugins",
                               f"{tmp}/run"], env=env, capture_output=True, text=True, check=False,
                              cwd=CODE_ROOT[0])     # sys.path[0] is the cwd: the timed tree's
        if proc.returncode != 0:
            raise SystemExit(f"lab worker failed:\n{proc.stdout}\n{proc.stderr}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["nodes"] == n, result
    left = [name for name in links_in(ns) if name != "lo"]
    assert not left, f"cnmkit left links: {left}"
    assert not [c for c in os.listdir(f"{tmp}/state/containers") if not c.startswith(".")], "records left"
    return result


def single_runs(tmp: str, rounds: int, baseline_root: str) -> dict[str, list[float]]:
    """``cnmkit run --network star -- sh -c :`` wall time, this tree vs ``baseline_root`` (the code
    before this change), interleaved; each variant keeps its records in its own state dir and the
    container is removed after each run (not timed)."""
    times: dict[str, list[float]] = {"this tree": [], "baseline": []}
    for rnd in range(rounds):
        variants = [("this tree", ROOT), ("baseline", baseline_root)]
        for label, root in (variants if rnd % 2 == 0 else variants[::-1]):
            env = dict(os.environ, PYTHONPATH=root, CNMKIT_RUN_DIR=f"{tmp}/run")
            base = [sys.executable, "-m", "cli.main", "--plugin-dir", f"{tmp}/plugins",
                    "--state-dir", f"{tmp}/state-{'new' if root == ROOT else 'old'}"]
            t0 = time.perf_counter()
            subprocess.run([*base, "run", "--name", "one", "--network", "star", "--", "sh", "-c", ":"],
                           env=env, cwd=root, check=True, capture_output=True)
            times[label].append(time.perf_counter() - t0)
            subprocess.run([*base, "rm", "one"], env=env, cwd=root, check=True, capture_output=True)
    return times


def summary(values: list[float]) -> str:
    return f"{min(values):.2f} / **{statistics.median(values):.2f}** / {max(values):.2f} ({len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,50,200")
    parser.add_argument("--kinds", default="chain,star")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--single-rounds", type=int, default=8,
                        help="rounds of one `cnmkit run` vs the baseline tree (0: skip)")
    parser.add_argument("--baseline-root", default="/work/main",
                        help="a checkout of the code before the batch runtime, for the single-run ratio")
    parser.add_argument("--mode", choices=("lab", "batch"), default="lab",
                        help="lab: `cnmkit lab deploy/destroy` of generated files (kinds linear, single, "
                             "single-net); batch: the runtime's start_many/stop_many (kinds chain, star)")
    parser.add_argument("--cli", action="store_true", help="lab mode: also time the CLI commands")
    parser.add_argument("--code-root", default=ROOT,
                        help="lab mode: the checkout whose lab command is timed (a before/after)")
    parser.add_argument("--json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    CODE_ROOT[0] = os.path.abspath(args.code_root)
    if args.mode == "lab" and args.kinds == "chain,star":
        args.kinds = "linear,single,single-net"
    kinds = args.kinds.split(",")
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    if not os.path.exists(MININET_PY) or sh(MININET_PY, "-c", "import mininet", check=False).returncode:
        raise SystemExit("Mininet not found: apt-get install mininet bridge-utils")
    tag = os.getpid()
    host_ns, mn_ns = f"cnml{tag}", f"cnml{tag}mn"
    tmp = tempfile.mkdtemp(prefix="cnmlab-")
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    daemon = None
    for ns in (host_ns, mn_ns):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    try:
        daemon = start_daemon(host_ns, tmp)
        os.environ["CNMKIT_RUN_DIR"] = f"{tmp}/run"
        svc = ContainerService(f"{tmp}/state", f"{tmp}/plugins", f"{tmp}/run")
        if args.mode == "batch":
            svc.engine.create_network("star", subnets=["10.90.0.0/16"])
            cnmkit_case(svc, "star", 3)                          # warm-up: imports, first bridge port
        single: dict[str, list[float]] = {}
        if args.mode == "lab":
            args.single_rounds = 0
            lab_case(host_ns, tmp, "single", 3, False)                # warm-up: page cache
        if args.single_rounds and os.path.isdir(os.path.join(args.baseline_root, "runtime")):
            single = single_runs(tmp, args.single_rounds, args.baseline_root)
            for label, values in single.items():
                shown = summary([v * 1000 for v in values])
                print(f"single `cnmkit run --network star -- sh -c :` {label}: {shown} ms", flush=True)
        for rnd in range(args.rounds):
            for n in sizes:
                for kind in kinds:
                    key = f"{kind} {n}"
                    order = ["cnmkit", "mininet"] if (rnd + n) % 2 == 0 else ["mininet", "cnmkit"]
                    if args.mode == "lab" and args.cli:
                        order.append("cnmkit CLI")
                    for tool in order:
                        if tool == "mininet":
                            r = mininet_case(mn_ns, "single" if kind == "single-net" else kind, n)
                        elif args.mode == "lab":
                            r = lab_case(host_ns, tmp, kind, n, tool == "cnmkit CLI")
                        else:
                            r = cnmkit_case(svc, kind, n)
                        results.setdefault(key, {}).setdefault(tool, []).append(r)
                        print(f"round {rnd + 1} {key:10s} {tool:8s} up {r['up_s']:7.2f} s  down {r['down_s']:7.2f} s",
                              flush=True)
        if args.mode == "batch":
            svc.engine.remove_network("star")
        svc.close()
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        mounts = [line.split()[4] for line in open("/proc/self/mountinfo") if tmp in line.split()[4]]
        for ns in (host_ns, mn_ns):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("| lab | cnmkit up s | Mininet up s | up ratio (Mininet / cnmkit) | cnmkit down s | Mininet down s | "
          "down ratio |")
    print("|---|---|---|---|---|---|---|")
    for key, tools in results.items():
        for tool in [t for t in tools if t != "mininet"]:
            cu = [r["up_s"] for r in tools[tool]]
            mu = [r["up_s"] for r in tools["mininet"]]
            cd = [r["down_s"] for r in tools[tool]]
            md = [r["down_s"] for r in tools["mininet"]]
            label = key if tool == "cnmkit" else f"{key} ({tool})"
            up_ratio = statistics.median(mu) / statistics.median(cu)
            print(f"| {label} | {summary(cu)} | {summary(mu)} | **{up_ratio:.1f}x** "
                  f"| {summary(cd)} | {summary(md)} | **{statistics.median(md) / statistics.median(cd):.1f}x** |")
    print(f"\nleft over: sandbox mounts {len(mounts)}, netns {host_ns}/{mn_ns} deleted")
    if single:
        new, old = statistics.median(single["this tree"]), statistics.median(single["baseline"])
        print(f"\nsingle `cnmkit run --network star -- sh -c :` (ms): this tree "
              f"{summary([v * 1000 for v in single['this tree']])}, baseline {args.baseline_root} "
              f"{summary([v * 1000 for v in single['baseline']])}; ratio {old / new:.1f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"labs": results, "single": single}, fh, indent=2)


if __name__ == "__main__":
    main()
