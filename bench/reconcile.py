"""How long a restarted daemon takes to re-make 1,000 endpoints on 10 networks after a "reboot".

Issue 7 item 8 (second half). In a private network namespace: 10 networks and N joined endpoints
are made through the manager (records in a SQLite store, kernel objects by the bridge driver);
then a "reboot" removes every link and iptables rule and keeps the store. Measured, in the same
run:

- agent: a fresh Kernel, Firewall, driver and Agent over that store (what a restarted daemon
  builds), timing one ``Agent.reconcile()`` pass: store reads, kernel scan, every object re-made;
- direct: after another "reboot", the same kernel work as plain drivers/kernel.py and firewall
  calls in a loop (ensure_bridge, addr_ensure, set_up, ensure_network, ensure_veth), no store.

The ratio is the agent's overhead over the kernel work it cannot avoid. Python start-up and
socket binding of a real daemon restart are not included (they do not grow with N).

    sudo PYTHONPATH=. .venv/bin/python bench/reconcile.py [--endpoints 1000] [--networks 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netaddr import IPNetwork

from agent.reconcile import Agent
from bench.common import REPO, ip_batch, machine_info, write_results
from drivers import naming
from drivers.base import EndpointSpec, IPAMData, JoinRequest, NetworkSpec
from drivers.bridge import BridgeDriver
from drivers.firewall import Firewall, NetworkRules
from drivers.kernel import Kernel
from drivers.manager import NetworkManager
from store.sqlite import SQLiteStore

SANDBOX = "/var/run/docker/netns/cnmkit-bench-none"


def specs(networks: int, endpoints: int) -> list[tuple[NetworkSpec, list[EndpointSpec]]]:
    out = []
    per = endpoints // networks
    for n in range(networks):
        nid = f"{n + 1:02x}" * 32
        net = NetworkSpec(network_id=nid, ipv4=(IPAMData(pool=IPNetwork(f"10.{120 + n}.0.0/16"),
                                                         gateway=IPNetwork(f"10.{120 + n}.0.1/16")),))
        eps = [EndpointSpec(network_id=nid, endpoint_id=os.urandom(32).hex(),
                            address=IPNetwork(f"10.{120 + n}.{2 + i // 250}.{1 + i % 250}/16"))
               for i in range(per)]
        out.append((net, eps))
    return out


def reboot() -> None:
    """Every link of ours and every rule go; the store stays."""
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True,
                                      check=True).stdout)
    ip_batch([f"link del {link['ifname']}" for link in links
              if link["ifname"].startswith((naming.BRIDGE_PREFIX, naming.HOST_VETH_PREFIX))])
    for binary in ("iptables", "ip6tables"):
        for table in ("filter", "nat"):
            subprocess.run([binary, "-t", table, "-F"], check=True)
            subprocess.run([binary, "-t", table, "-X"], check=True)


def count_links() -> int:
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True,
                                      check=True).stdout)
    return sum(1 for link in links if link["ifname"].startswith((naming.BRIDGE_PREFIX, naming.HOST_VETH_PREFIX)))


async def populate(store: SQLiteStore, plan: list[tuple[NetworkSpec, list[EndpointSpec]]]) -> None:
    with ThreadPoolExecutor(4) as pool, Kernel() as kernel:
        manager = NetworkManager(store, {"cnmkit-bridge": BridgeDriver(kernel, Firewall())}, pool)
        for net, eps in plan:
            await manager.create_network("cnmkit-bridge", net)

            async def one(ep: EndpointSpec, net: NetworkSpec = net) -> None:
                await manager.create_endpoint(ep)
                await manager.join(JoinRequest(network_id=net.network_id, endpoint_id=ep.endpoint_id,
                                               sandbox_key=SANDBOX))
            await asyncio.gather(*(one(ep) for ep in eps))


async def agent_pass(store: SQLiteStore) -> tuple[float, int]:
    with ThreadPoolExecutor(4) as pool, Kernel() as kernel:       # what a restarted daemon builds
        manager = NetworkManager(store, {"cnmkit-bridge": BridgeDriver(kernel, Firewall())}, pool)
        agent = Agent(store, manager.drivers, pool, manager.network_lock)
        t0 = time.perf_counter()
        actions = await agent.reconcile()
        return time.perf_counter() - t0, len(actions)


def direct_pass(plan: list[tuple[NetworkSpec, list[EndpointSpec]]]) -> float:
    with Kernel() as kernel:
        firewall = Firewall()
        t0 = time.perf_counter()
        for net, eps in plan:
            bridge, alias = naming.bridge_name(net.network_id), naming.network_alias(net.network_id)
            kernel.ensure_bridge(bridge, alias=alias, mtu=1500, mac=naming.stable_mac(alias), adopt=True)
            kernel.addr_ensure(bridge, str(net.ipv4[0].gateway))
            kernel.set_up(bridge)
            firewall.ensure_network(NetworkRules(network_id=net.network_id, bridge=bridge,
                                                 subnets_v4=(str(net.ipv4[0].pool),)))
            for ep in eps:
                kernel.ensure_veth(naming.host_veth_name(ep.endpoint_id), naming.container_veth_name(ep.endpoint_id),
                                   alias=naming.endpoint_alias(ep.endpoint_id), mtu=1500, peer_mac=None,
                                   master=bridge)
        return time.perf_counter() - t0


def inner(args: argparse.Namespace) -> None:
    plan = specs(args.networks, args.endpoints)
    expected = args.networks + args.networks * (args.endpoints // args.networks)
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(os.path.join(tmp, "state.db"))
        t0 = time.perf_counter()
        asyncio.run(populate(store, plan))
        made = time.perf_counter() - t0
        assert count_links() == expected, count_links()
        reboot()
        agent_s, actions = asyncio.run(agent_pass(store))
        assert count_links() == expected, ("agent", count_links())
        reboot()
        direct_s = direct_pass(plan)
        assert count_links() == expected, ("direct", count_links())
        store.close()
    result = {"networks": args.networks, "endpoints": args.endpoints, "populate_s": made,
              "agent_s": agent_s, "agent_actions": actions, "direct_s": direct_s,
              "ratio": agent_s / direct_s, "machine": machine_info()}
    print(f"populate through the manager: {made:.2f} s")
    print(f"agent reconcile after reboot:  {agent_s:.2f} s ({actions} actions)")
    print(f"direct kernel calls:           {direct_s:.2f} s")
    print(f"ratio agent/direct:            {agent_s / direct_s:.2f}")
    print(f"results: {write_results('reconcile', result)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", type=int, default=10)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args)
        return
    ns = f"cnmkb{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        code = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inner",
                               "--networks", str(args.networks), "--endpoints", str(args.endpoints)],
                              env=env).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
