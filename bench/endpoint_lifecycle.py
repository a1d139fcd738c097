"""Endpoint lifecycle: cnmkit over its socket vs the same kernel work with no server vs CNI.

The question (issue 2, point 11): what does serving the CNM protocol from Python cost on top of
the kernel work it cannot avoid, and how does that compare with the CNI reference plugins a
runtime could use instead? So one run measures, interleaved in shuffled order per round, at 1,
100 and 1000 endpoints already on the same bridge:

    floor              ensure_veth (host end on the bridge, up, MTU, alias, peer MAC) + link_delete
                       through drivers/kernel.py in this process: the driver's own kernel work,
                       no HTTP, no store, no asyncio
    floor-direct       the same with the peer born inside a container netns
    cnmkit             what dockerd sends for a running container, over one kept-alive
                       connection per socket: RequestAddress, CreateEndpoint, Join,
                       EndpointOperInfo, Leave, DeleteEndpoint, ReleaseAddress. Reported as the
                       4 CNM calls alone (the plugin's part of the lifecycle) and as all 7
    cnmkit-direct      the same with the runtime's fast path: Join {"cnmkit.direct": true} and a
                       real netns as SandboxKey, so the container end is born in the netns
    cnmkit-direct+cfg  cnmkit-direct plus what the runtime then does in the netns (rename to
                       eth0, MAC/MTU, address, up, default route: runtime/sandbox.configure).
                       This is the variant that does the work a CNI ADD does
    cni                /usr/lib/cni/bridge (+host-local) ADD then DEL, exec'd as a runtime does

CNI does more per ADD than the plain CNM calls (moves nothing, but configures eth0, addresses and
routes inside the netns and runs IPAM in a second exec), hence the +cfg variant for a like-for-like
ratio. Everything runs in a private "host" netns: the script re-executes itself under
``ip netns exec`` after creating it and the container netns it needs (their creation is not
timed), and deletes them all by name afterwards, whatever happened.

    python bench/endpoint_lifecycle.py [--quick] [--levels 1,100,1000] [--probes 30]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    NETNS_DIR,
    REPO,
    Summary,
    machine_info,
    markdown_table,
    netns_add,
    netns_delete_prefix,
    netns_names_with_prefix,
    now_ms,
    ratio,
    write_results,
)
from client.transport import PluginTransport
from drivers.base import EndpointSpec
from drivers.kernel import Kernel, entered_netns
from runtime import sandbox
from store.records import EndpointRecord
from store.sqlite import SQLiteStore

CNI_PATH = "/usr/lib/cni"
CNM_SUBNET = "10.222.0.0/16"
CNI_SUBNET = "10.223.0.0/16"
FLOOR_BRIDGE = "cnmbfloor0"
CNI_BRIDGE = "cnmbcni0"
MTU = 1500
CNM_CORE = ("CreateEndpoint", "Join", "Leave", "DeleteEndpoint")
NETNS_VARIANTS = ("floor-direct", "cnmkit-direct", "cnmkit-direct+cfg", "cni")
VARIANTS = ("floor", "floor-direct", "cnmkit", "cnmkit-direct", "cnmkit-direct+cfg", "cni")
WARMUP = 2

Steps = dict[str, float]


def docker_mac() -> str:
    """A MAC like the ones dockerd 20.10 generates and sends in RequestAddress/CreateEndpoint."""
    return "02:42:" + ":".join(f"{b:02x}" for b in os.urandom(4))


# -- the measured variants --------------------------------------------------------------------------


class CnmkitClient:
    """dockerd's side of the lifecycle, one kept-alive connection per socket as dockerd keeps."""

    def __init__(self, plugin_dir: str) -> None:
        self.net = PluginTransport(os.path.join(plugin_dir, "cnmkit-bridge.sock"))
        self.ipam = PluginTransport(os.path.join(plugin_dir, "cnmkit.sock"))
        self.network_id = ""
        self.pool_id = ""

    def create_network(self) -> None:
        """The calls ``docker network create -d cnmkit-bridge --ipam-driver cnmkit`` makes."""
        self.net.call("Plugin.Activate")
        space = self.ipam.call("IpamDriver.GetDefaultAddressSpaces")["LocalDefaultAddressSpace"]
        pool = self.ipam.call("IpamDriver.RequestPool", {"AddressSpace": space, "Pool": CNM_SUBNET,
                                                         "SubPool": "", "Options": {}, "V6": False})
        self.pool_id = pool["PoolID"]
        gw = self.ipam.call("IpamDriver.RequestAddress", {
            "PoolID": self.pool_id, "Address": "",
            "Options": {"RequestAddressType": "com.docker.network.gateway"}})["Address"]
        self.network_id = secrets.token_hex(32)
        self.net.call("NetworkDriver.CreateNetwork", {
            "NetworkID": self.network_id,
            "Options": {"com.docker.network.enable_ipv6": False,
                        "com.docker.network.generic": {"cnmkit.name": "cnmbench"}},
            "IPv4Data": [{"AddressSpace": space, "Pool": CNM_SUBNET, "Gateway": gw}], "IPv6Data": []})

    def attach(self, steps: Steps, sandbox_key: str, direct: bool) -> dict[str, Any]:
        """RequestAddress, CreateEndpoint, Join, EndpointOperInfo; each call's ms goes into ``steps``."""
        mac = docker_mac()
        opts: dict[str, Any] = {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}
        t = now_ms()
        addr = self.ipam.call("IpamDriver.RequestAddress", {
            "PoolID": self.pool_id, "Address": "",
            "Options": {"com.docker.network.endpoint.macaddress": mac}})["Address"]
        t, steps["RequestAddress"] = now_ms(), now_ms() - t
        eid = secrets.token_hex(32)
        ref = {"NetworkID": self.network_id, "EndpointID": eid}
        self.net.call("NetworkDriver.CreateEndpoint", {
            **ref, "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": mac}, "Options": opts})
        t, steps["CreateEndpoint"] = now_ms(), now_ms() - t
        joined = self.net.call("NetworkDriver.Join", {
            **ref, "SandboxKey": sandbox_key, "Options": {**opts, "cnmkit.direct": direct}})
        t, steps["Join"] = now_ms(), now_ms() - t
        self.net.call("NetworkDriver.EndpointOperInfo", ref)
        steps["EndpointOperInfo"] = now_ms() - t
        return {"ref": ref, "address": addr, "mac": mac, "src_name": joined["InterfaceName"]["SrcName"],
                "gateway": joined.get("Gateway", ""), "mtu": MTU}

    def detach(self, steps: Steps, att: dict[str, Any]) -> None:
        t = now_ms()
        self.net.call("NetworkDriver.Leave", att["ref"])
        t, steps["Leave"] = now_ms(), now_ms() - t
        self.net.call("NetworkDriver.DeleteEndpoint", att["ref"])
        t, steps["DeleteEndpoint"] = now_ms(), now_ms() - t
        self.ipam.call("IpamDriver.ReleaseAddress",
                       {"PoolID": self.pool_id, "Address": att["address"].split("/")[0]})
        steps["ReleaseAddress"] = now_ms() - t

    def lifecycle(self, sandbox_key: str, direct: bool, configure: bool) -> Steps:
        steps: Steps = {}
        t0 = now_ms()
        att = self.attach(steps, sandbox_key, direct)
        if configure:
            t = now_ms()
            sandbox.configure(sandbox_key, att, "eth0", install_default=True)
            steps["runtime configure"] = now_ms() - t
        self.detach(steps, att)
        steps["total"] = now_ms() - t0
        steps["core"] = sum(steps[k] for k in CNM_CORE)
        return steps

    def close(self) -> None:
        self.net.close()
        self.ipam.close()


class Floor:
    """The bridge driver's kernel calls for one endpoint, in-process: what no server could avoid."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.count = 0

    def setup(self) -> None:
        self.kernel.ensure_bridge(FLOOR_BRIDGE, alias="cnmbench:net:floor", mtu=MTU)
        self.kernel.set_up(FLOOR_BRIDGE)

    def create(self, netns_path: str | None) -> tuple[str, str]:
        self.count += 1
        host, alias = f"fbv{self.count}", f"cnmbench:ep:{self.count}"
        self.kernel.ensure_veth(host, f"fbp{self.count}", alias=alias, mtu=MTU, peer_mac=docker_mac(),
                                master=FLOOR_BRIDGE, peer_netns_path=netns_path)
        return host, alias

    def lifecycle(self, netns_path: str | None) -> Steps:
        t0 = now_ms()
        host, alias = self.create(netns_path)
        t1 = now_ms()
        self.kernel.link_delete(host, alias=alias)
        t2 = now_ms()
        return {"ensure_veth": t1 - t0, "link_delete": t2 - t1, "total": t2 - t0}


class Cni:
    """The reference bridge plugin exec'd exactly as a runtime does: env + config on stdin."""

    def __init__(self, data_dir: str, host_netns: str) -> None:
        self.host_netns = os.path.join(NETNS_DIR, host_netns)
        self.config = json.dumps({
            "cniVersion": "1.0.0", "name": "cnmbench", "type": "bridge", "bridge": CNI_BRIDGE,
            "isGateway": True, "ipMasq": False, "mtu": MTU,
            "ipam": {"type": "host-local", "subnet": CNI_SUBNET, "dataDir": data_dir,
                     "routes": [{"dst": "0.0.0.0/0"}]}}).encode()

    def run(self, command: str, container_id: str, netns: str) -> None:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
               "CNI_IFNAME": "eth0", "CNI_PATH": CNI_PATH, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        # A child forked by this thread starts in this thread's netns: the plugin's own "host".
        with entered_netns(self.host_netns):
            proc = subprocess.run([os.path.join(CNI_PATH, "bridge")], input=self.config, env=env,
                                  capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"CNI {command} failed ({proc.returncode}): "
                               f"{(proc.stdout or proc.stderr).decode(errors='replace')[:300]}")

    def add(self, netns: str) -> str:
        cid = secrets.token_hex(32)
        self.run("ADD", cid, netns)
        return cid

    def lifecycle(self, netns: str) -> Steps:
        t0 = now_ms()
        cid = self.add(netns)
        t1 = now_ms()
        self.run("DEL", cid, netns)
        t2 = now_ms()
        return {"ADD": t1 - t0, "DEL": t2 - t1, "total": t2 - t0}

    def version_exec(self) -> float:
        """The cost of merely exec'ing the Go binary (the CNI 'exec floor' of perf-anchors §2)."""
        env = {"CNI_COMMAND": "VERSION", "CNI_PATH": CNI_PATH}
        t = now_ms()
        subprocess.run([os.path.join(CNI_PATH, "bridge")], input=b'{"cniVersion":"1.0.0"}', env=env,
                       capture_output=True, check=True)
        return now_ms() - t


# -- the run ----------------------------------------------------------------------------------------


class Plan:
    """Names of everything the run needs, fixed before it starts so the outer process can make them."""

    def __init__(self, tag: str, levels: list[int], probes: int) -> None:
        self.tag = tag
        self.host = tag                    # the bench process itself and the floor's bridge
        self.cnm_host = f"{tag}-cnm"       # the cnmkit daemon and its bridge
        self.cni_host = f"{tag}-cni"       # the CNI plugin's bridge
        self.levels = levels
        self.probes = probes
        self.background = [f"{tag}-b{i}" for i in range(max(levels))]
        n_probe = (len(levels) * probes + WARMUP) * len(NETNS_VARIANTS)
        self.probe_netns = [f"{tag}-p{i}" for i in range(n_probe)]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = Plan(args.tag, args.level_list, args.probe_count)
        self.tmp = args.tmp
        self.plugin_dir = os.path.join(self.tmp, "plugins")
        self.state_dir = os.path.join(self.tmp, "state")
        self.daemon: subprocess.Popen[bytes] | None = None
        self.kernel = Kernel()
        self.floor = Floor(self.kernel)
        self.cni = Cni(os.path.join(self.tmp, "cni-ipam"), self.plan.cni_host)
        self.cnm: CnmkitClient | None = None
        self._probe_ns = iter(self.plan.probe_netns)
        self._bg_ns = iter(self.plan.background)
        self.existing = 0
        self.samples: dict[int, dict[str, list[Steps]]] = {}
        self.background: dict[int, dict[str, list[float]]] = {}
        self.extra: dict[str, list[float]] = {}
        self.profile_path = os.path.join(self.tmp, "profile.jsonl")
        self.profiles: dict[int, list[dict[str, Any]]] = {}

    # -- set-up and tear-down ---------------------------------------------------------------------

    def start_daemon(self) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(REPO), "CNMKIT_PROFILE": self.profile_path}
        with open(os.path.join(self.tmp, "daemon.log"), "ab") as log:   # the child keeps its own copy
            self.daemon = subprocess.Popen(
                ["ip", "netns", "exec", self.plan.cnm_host, sys.executable, "-m", "cli.main", "--plugin-dir",
                 self.plugin_dir, "--state-dir", self.state_dir, "daemon", "--sandbox-dir", NETNS_DIR],
                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        probe = PluginTransport(os.path.join(self.plugin_dir, "cnmkit-bridge.sock"), timeout=5)
        while True:
            try:
                probe.call("Plugin.Activate")
                break
            except Exception:
                if self.daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"daemon did not come up; see {self.tmp}/daemon.log") from None
                time.sleep(0.1)
            finally:
                probe.close()
        self.cnm = CnmkitClient(self.plugin_dir)
        self.cnm.create_network()

    def stop_daemon(self) -> None:
        if self.cnm is not None:
            self.cnm.close()
        if self.daemon is None or self.daemon.poll() is not None:
            return
        self.daemon.send_signal(signal.SIGTERM)
        try:
            self.daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait()

    # -- the measured part ------------------------------------------------------------------------

    def _probe(self, variant: str) -> Steps:
        assert self.cnm is not None
        ns_path = os.path.join(NETNS_DIR, next(self._probe_ns)) if variant in NETNS_VARIANTS else ""
        if variant == "floor":
            return self.floor.lifecycle(None)
        if variant == "floor-direct":
            return self.floor.lifecycle(ns_path)
        if variant == "cnmkit":
            return self.cnm.lifecycle(f"/var/run/docker/netns/{secrets.token_hex(6)}", False, False)
        if variant == "cnmkit-direct":
            return self.cnm.lifecycle(ns_path, True, False)
        if variant == "cnmkit-direct+cfg":
            return self.cnm.lifecycle(ns_path, True, True)
        if variant == "cni":
            return self.cni.lifecycle(ns_path)
        raise ValueError(variant)

    def grow_to(self, level: int) -> None:
        """Bring each bridge to ``level`` endpoints that stay (cnmkit's is shared by its 3 variants)."""
        assert self.cnm is not None
        times: dict[str, list[float]] = self.background.setdefault(level, {"floor": [], "cnmkit": [], "cni": []})
        t_level = time.monotonic()
        while self.existing < level:
            t = now_ms()
            self.floor.create(None)
            times["floor"].append(now_ms() - t)
            t = now_ms()
            self.cnm.attach({}, f"/var/run/docker/netns/{secrets.token_hex(6)}", False)
            times["cnmkit"].append(now_ms() - t)
            t = now_ms()
            self.cni.add(os.path.join(NETNS_DIR, next(self._bg_ns)))
            times["cni"].append(now_ms() - t)
            self.existing += 1
        print(f"  {level} background endpoints per bridge ready ({time.monotonic() - t_level:.1f} s)", flush=True)

    def run(self) -> None:
        rng = random.Random(self.args.seed)
        self.start_daemon()
        self.floor.setup()
        for level in self.plan.levels:
            self.grow_to(level)
            if level == self.plan.levels[0]:
                for _ in range(WARMUP):
                    for variant in VARIANTS:
                        self._probe(variant)
                self.extra["GetCapabilities (protocol round trip)"] = [self._noop() for _ in range(50)]
                self.extra["CNI bridge VERSION (exec only)"] = [self.cni.version_exec() for _ in range(20)]
                self.extra.update(self._store_costs())
            per_variant: dict[str, list[Steps]] = {v: [] for v in VARIANTS}
            self.take_profile()                    # forget the set-up's requests
            t_level = time.monotonic()
            for _ in range(self.plan.probes):
                order = list(VARIANTS)
                rng.shuffle(order)
                for variant in order:
                    per_variant[variant].append(self._probe(variant))
                    if self.args.pause:
                        time.sleep(self.args.pause)
            self.samples[level] = per_variant
            self.profiles[level] = self.take_profile()
            print(f"  level {level}: {self.plan.probes} rounds x {len(VARIANTS)} variants "
                  f"({time.monotonic() - t_level:.1f} s)", flush=True)

    def take_profile(self) -> list[dict[str, Any]]:
        """The daemon's per-request profile records since the last call (plugin/profile.py, SIGUSR1)."""
        assert self.daemon is not None
        if self.args.no_profile:
            return []
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.profile_path)
        self.daemon.send_signal(signal.SIGUSR1)
        while not os.path.exists(self.profile_path):
            if self.daemon.poll() is not None:
                raise RuntimeError(f"daemon died; see {self.tmp}/daemon.log")
            time.sleep(0.01)
        with open(self.profile_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def _store_costs(self, n: int = 50) -> dict[str, list[float]]:
        """What one store write/read costs here (a separate SQLite file on the daemon's disk).

        Every CNM call writes or reads endpoint records, so this is the part of each call's
        time that is neither HTTP nor kernel.
        """
        store = SQLiteStore(os.path.join(self.tmp, "store-probe.db"))
        value = EndpointRecord(EndpointSpec(network_id="n" * 64, endpoint_id="e" * 64, options={"x": "y" * 140}),
                               host="probe").encode()  # a real endpoint record, about as big as the old probe
        puts, gets = [], []
        try:
            for i in range(n):
                t = now_ms()
                store.put(f"/probe/{i}", value)
                t1 = now_ms()
                store.get(f"/probe/{i}")
                puts.append(t1 - t)
                gets.append(now_ms() - t1)
        finally:
            store.close()
        return {"store put (SQLite: commit + WAL fdatasync)": puts, "store get (SQLite)": gets}

    def _noop(self) -> float:
        assert self.cnm is not None
        t = now_ms()
        self.cnm.net.call("NetworkDriver.GetCapabilities")
        return now_ms() - t


# -- reporting --------------------------------------------------------------------------------------

# (label, variant, step, floor variant) of each reported line.
LINES = (
    ("floor: veth + bridge, no server", "floor", "total", "floor"),
    ("floor-direct: peer born in netns", "floor-direct", "total", "floor-direct"),
    ("cnmkit: CNM 4 calls (Create/Join/Leave/DeleteEndpoint)", "cnmkit", "core", "floor"),
    ("cnmkit: dockerd's 7 calls (+IPAM, OperInfo)", "cnmkit", "total", "floor"),
    ("cnmkit-direct: CNM 4 calls", "cnmkit-direct", "core", "floor-direct"),
    ("cnmkit-direct: 7 calls", "cnmkit-direct", "total", "floor-direct"),
    ("cnmkit-direct+cfg: 7 calls + eth0/addr/route (≈ CNI's work)", "cnmkit-direct+cfg", "total", "floor-direct"),
    ("CNI bridge+host-local: ADD + DEL", "cni", "total", "cni"),
)


def summarize(samples: dict[int, dict[str, list[Steps]]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for level, per_variant in samples.items():
        out[str(level)] = {}
        for variant, runs in per_variant.items():
            keys = list(runs[0]) if runs else []
            out[str(level)][variant] = {k: Summary.of([r[k] for r in runs]).to_dict() for k in keys}
    return out


def report(bench: Bench) -> str:
    summary = summarize(bench.samples)
    rows = []
    for level in bench.plan.levels:
        s = summary[str(level)]
        cni = s["cni"]["total"]["median"]
        for label, variant, step, floor in LINES:
            st = s[variant][step]
            floor_med = s[floor]["total"]["median"]
            rows.append([str(level), label, f"{st['min']:.1f} / **{st['median']:.1f}** / {st['max']:.1f}",
                         "—" if variant == floor else ratio(st["median"], floor_med),
                         "—" if variant == "cni" else ratio(st["median"], cni)])
    main = markdown_table(["existing eps", "variant", "ms per lifecycle, min / median / max",
                           "x floor", "x CNI"], rows)

    first = bench.plan.levels[0]
    s = summary[str(first)]
    brow = []
    for variant in ("cnmkit", "cnmkit-direct", "cnmkit-direct+cfg", "floor", "floor-direct", "cni"):
        for step, st in s[variant].items():
            if step in ("total", "core"):
                continue
            brow.append([variant, step, f"{st['min']:.2f} / **{st['median']:.2f}** / {st['max']:.2f}"])
    for name, values in bench.extra.items():
        st = Summary.of(values).to_dict()
        brow.append(["—", name, f"{st['min']:.2f} / **{st['median']:.2f}** / {st['max']:.2f}"])
    join, ens = s["cnmkit"]["Join"]["median"], s["floor"]["ensure_veth"]["median"]
    dele, ld = s["cnmkit"]["DeleteEndpoint"]["median"], s["floor"]["link_delete"]["median"]
    breakdown = markdown_table([f"variant (at {first} existing)", "step", "ms min / median / max"], brow)
    derived = (f"Join - floor ensure_veth = {join - ens:.2f} ms; DeleteEndpoint - floor link_delete = "
               f"{dele - ld:.2f} ms (medians): the server's share of the two kernel calls "
               "(HTTP + JSON + store + thread hop).")

    profile = profile_table(bench)

    grow = []
    for level, per in bench.background.items():
        grow.append([str(level)] + [Summary.of(per[v]).text() if per[v] else "—" for v in ("floor", "cnmkit", "cni")])
    growth = markdown_table(["up to level", "floor create ms", "cnmkit attach (4 calls) ms", "CNI ADD ms"], grow)
    return "\n\n".join([main, breakdown, derived, PROFILE_HEAD, profile,
                        "Background endpoints (creation, kept):", growth])


PROFILE_HEAD = ("Per-call profile, all cnmkit variants' probes (server side from plugin/profile.py; medians, ms). "
                "protocol = client round trip - server handler (HTTP, JSON, socket, client); "
                "loop/lock = handler - hop - worker (decode, encode, network lock, event loop); "
                "hop = to the worker thread and back; py = worker - store - kernel (manager, driver, IPAM code).")
PROFILE_CALLS = ("RequestAddress", "CreateEndpoint", "Join", "EndpointOperInfo", "Leave", "DeleteEndpoint",
                 "ReleaseAddress")


def profile_table(bench: Bench) -> str:
    rows = []
    for level, records in bench.profiles.items():
        for call in PROFILE_CALLS:
            recs = [r for r in records if r["path"].endswith("." + call)]
            if not recs:
                continue
            client = Summary.of([st[call] for v in ("cnmkit", "cnmkit-direct", "cnmkit-direct+cfg")
                                 for st in bench.samples[level][v]]).median
            med = {k: Summary.of([r[k] for r in recs]).median for k in ("server", "hop", "worker", "store", "kernel")}
            loop_lock = Summary.of([r["server"] - r["hop"] - r["worker"] for r in recs]).median
            py = Summary.of([r["worker"] - r["store"] - r["kernel"] for r in recs]).median
            rows.append([str(level), call, f"{client:.2f}", f"{client - med['server']:.2f}", f"{med['server']:.2f}",
                         f"{loop_lock:.2f}", f"{med['hop']:.2f}", f"{med['store']:.2f}", f"{med['kernel']:.2f}",
                         f"{py:.2f}"])
    return markdown_table(["existing eps", "call", "client", "protocol", "server", "loop/lock", "hop", "store",
                           "kernel", "py"], rows)


# -- outer process: namespaces, re-exec, cleanup ------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: levels 1,10 and 5 probes")
    p.add_argument("--levels", default="1,100,1000", help="existing endpoints per bridge (increasing)")
    p.add_argument("--probes", type=int, default=30, help="probe lifecycles per variant and level")
    p.add_argument("--pause", type=float, default=0.02, help="seconds between probes (lets softirq settle)")
    p.add_argument("--seed", type=int, default=None, help="shuffle seed")
    p.add_argument("--no-profile", action="store_true",
                   help="no per-call profile (a daemon from before plugin/profile.py dies of SIGUSR1)")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tag", default="", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.level_list = [1, 10] if args.quick else sorted({int(x) for x in args.levels.split(",")})
    args.probe_count = 5 if args.quick else args.probes
    if max(args.level_list) > 1000:
        p.error("a Linux bridge holds at most 1023 ports: keep levels ≤ 1000")
    return args


def _kill_daemon_by_pidfile(tmp: str) -> None:
    """Last resort if the inner process died without stopping the daemon: SIGTERM by its PID."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(Path(tmp, "state", "daemon.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"cli.main" in cmdline and tmp.encode() in cmdline:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)


def outer(args: argparse.Namespace) -> int:
    tag = f"cnmbench-{os.getpid()}"
    tmp = tempfile.mkdtemp(prefix="cnmbench-")
    plan = Plan(tag, args.level_list, args.probe_count)
    done = False

    def cleanup() -> None:
        nonlocal done
        if done:
            return
        done = True
        _kill_daemon_by_pidfile(tmp)
        netns_delete_prefix(tag + "-")
        if tag in netns_names_with_prefix(tag):
            netns_delete_prefix(tag)
        shutil.rmtree(tmp, ignore_errors=True)
        left = [n for n in netns_names_with_prefix(tag) if n == tag or n.startswith(tag + "-")]
        print(f"cleanup: netns left with prefix {tag}: {len(left)}; temp dir removed: {not os.path.exists(tmp)}",
              flush=True)

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        t = time.monotonic()
        netns_add([tag, plan.cnm_host, plan.cni_host, *plan.background, *plan.probe_netns])
        print(f"created host netns {tag}(-cnm, -cni) and {len(plan.background) + len(plan.probe_netns)} "
              f"container netns ({time.monotonic() - t:.1f} s, not timed)", flush=True)
        cmd = ["ip", "netns", "exec", tag, sys.executable, os.path.abspath(__file__), "--inner", "--tag", tag,
               "--tmp", tmp, "--levels", ",".join(map(str, args.level_list)), "--probes", str(args.probe_count),
               "--pause", str(args.pause)]
        if args.seed is not None:
            cmd += ["--seed", str(args.seed)]
        if args.no_profile:
            cmd.append("--no-profile")
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            return proc.wait()
        except BaseException:
            # Interrupted: let the inner run stop its daemon, then clean up here regardless.
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            raise
    finally:
        cleanup()


def inner(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = machine_info()
    info["ipv6_disabled_default"] = Path("/proc/sys/net/ipv6/conf/default/disable_ipv6").read_text().strip()
    bench = Bench(args)
    t0 = time.monotonic()
    try:
        bench.run()
    finally:
        bench.stop_daemon()
        bench.kernel.close()
    info["loadavg_end"] = list(os.getloadavg())
    info["duration_s"] = round(time.monotonic() - t0, 1)
    text = report(bench)
    path = write_results("endpoint_lifecycle", {
        "machine": info, "levels": bench.plan.levels, "probes": bench.plan.probes, "pause_s": args.pause,
        "variants": list(VARIANTS), "summary": summarize(bench.samples),
        "samples": {str(k): v for k, v in bench.samples.items()},
        "background_ms": {str(k): v for k, v in bench.background.items()},
        "extra_ms": bench.extra, "profile": {str(k): v for k, v in bench.profiles.items()}, "markdown": text})
    print()
    print(f"kernel {info['kernel']}, Python {info['python']}, pyroute2 {info['pyroute2']}, "
          f"CNI plugins {info['containernetworking_plugins']}, {info['cpus']} CPUs, "
          f"load {info['loadavg_start'][0]:.2f} → {info['loadavg_end'][0]:.2f}, {info['duration_s']} s")
    print()
    print(text)
    print(f"\nresults: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    return inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    sys.exit(main())
