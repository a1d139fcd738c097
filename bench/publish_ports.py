"""Publishing and revoking N ports with real iptables: the old way (a process per rule) vs the batch.

Old way, as cnmkit did before issue 6: for each of the 3 rules of a port ``iptables -C`` then
``iptables -A``; revoke ``iptables -S`` each chain and ``iptables -D <spec>`` per rule. New way:
``Firewall.publish`` / ``Firewall.unpublish`` (a few listings and one iptables-restore --noflush).
Both run in the same private namespace ``cnmbench-<pid>-fw`` (deleted by name at the end), in the
same run, one after the other, so the ratio compares like with like.

    PYTHONPATH=. .venv/bin/python bench/publish_ports.py [--ports 1000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Sequence

from drivers.firewall import (
    Firewall,
    NetworkRules,
    Result,
    _marked,
    port_rules,
    run_command,
)
from tests.fakekernel import FakeSysctl

NID = "b1" * 32
EID = "e1" * 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ports", type=int, default=1000)
    args = parser.parse_args()
    ns = f"cnmbench-{os.getpid()}-fw"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run(ns, args.ports)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def run(ns: str, n: int) -> None:
    def runner(argv: Sequence[str], stdin: str | None, timeout: float) -> Result:
        return run_command(["ip", "netns", "exec", ns, *argv], stdin, timeout)

    fw = Firewall(run=runner, sysctl=FakeSysctl())
    net = NetworkRules(network_id=NID, bridge="cnm-bench", subnets_v4=("10.99.0.0/16",))
    fw.ensure_network(net)
    fw.publish(net, EID, "10.99.0.2", [])           # chains and jumps exist before anything is timed
    ports = [("tcp", 20000 + i, 80 + i % 1000, "") for i in range(n)]
    mark = f"cnmkit:{NID}:{EID}"
    rules = [(table, chain, _marked(rule, mark)) for p in ports
             for table, chain, rule in port_rules(net.bridge, "10.99.0.2", *p)]

    def ipt(*argv: str) -> int:
        return runner(["iptables", "-w", "10", *argv], None, 60)[0]

    t0 = time.perf_counter()
    for table, chain, rule in rules:                   # old publish: -C then -A, per rule
        if ipt("-t", table, "-C", chain, *rule) != 0:
            assert ipt("-t", table, "-A", chain, *rule) == 0
    old_publish = time.perf_counter() - t0
    assert len(fw.marks()) == 2
    t0 = time.perf_counter()
    for table, chain, rule in rules:                   # old revoke: -D by spec, per rule
        assert ipt("-t", table, "-D", chain, *rule) == 0
    old_revoke = time.perf_counter() - t0

    t0 = time.perf_counter()
    fw.publish(net, EID, "10.99.0.2", ports)
    new_publish = time.perf_counter() - t0
    listed = runner(["iptables", "-t", "nat", "-S", "CNMKIT-DNAT"], None, 60)[1]
    assert listed.count("-j DNAT") == n, "every port is there"
    t0 = time.perf_counter()
    removed = fw.unpublish(NID, EID)
    new_revoke = time.perf_counter() - t0
    assert removed == 3 * n
    fw.remove_network(NID)

    print(f"## publish/revoke {n} ports ({3 * n} rules), iptables in netns {ns}\n")
    print("| | old (a process per rule) | new (batched) | old / new |")
    print("|---|---|---|---|")
    print(f"| publish | {old_publish:.2f} s | {new_publish:.3f} s | {old_publish / new_publish:.0f}x |")
    print(f"| revoke | {old_revoke:.2f} s | {new_revoke:.3f} s | {old_revoke / new_revoke:.0f}x |")


if __name__ == "__main__":
    main()
