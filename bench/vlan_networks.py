"""Create and delete N VLAN networks on one parent: through cnmkit's sockets vs the kernel work alone.

Run on the host; the measurement happens inside a user-mode-linux guest (this machine's kernel has
no 802.1Q; tests/uml_guest.py boots the same guest as the real-kernel test tier):

    PYTHONPATH=. .venv/bin/python bench/vlan_networks.py            # N=100, bridge and macvlan modes
    PYTHONPATH=. .venv/bin/python bench/vlan_networks.py --count 20

Inside the guest (``--inner``), in a private namespace ``vlb`` with a veth trunk ``trunk``, same run:

- **socket**: a ``cnmkit daemon`` in that namespace; the client does what ``cnmkit network create
  -d vlan NAME -o parent=trunk -o vlan=VID --subnet ...`` and ``network rm`` do (client/engine.py:
  RequestPool, RequestAddress of the gateway, CreateNetwork on cnmkit-vlan.sock; DeleteNetwork,
  ReleaseAddress, ReleasePool), VIDs 100..100+N-1, each network deleted after all were made;
- **kernel**: the same kernel objects made directly with drivers/kernel.py and drivers/firewall.py in
  one process (sub-interface, bridge with the sub-interface as port, iptables rules; for macvlan
  only the sub-interface), no socket, no store, no IPAM.

Timing is per network (milliseconds, min / median / max) and the total; the ratio socket/kernel of
the medians is the figure to compare (a guest's absolute numbers are slow: every syscall traps).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import Summary, now_ms  # noqa: E402

NETNS = "vlb"
SUBNET = "10.{a}.{b}.0/24"


def _subnet(i: int) -> str:
    return SUBNET.format(a=60 + i // 250, b=i % 250)


# -- inside the guest ---------------------------------------------------------------------------------

def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@contextlib.contextmanager
def _daemon(tmp: Path) -> Iterator[Path]:
    plugins = tmp / "plugins"
    log = open(tmp / "daemon.log", "ab")
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{NETNS}", sys.executable, "-m", "cli.main",
                             "--plugin-dir", str(plugins), "--state-dir", str(tmp / "state"), "daemon",
                             "--reconcile-interval", "0"],
                            cwd=str(REPO), stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    try:
        while not (plugins / "cnmkit-vlan.sock").exists():
            if proc.poll() is not None:
                raise RuntimeError("daemon died:\n" + (tmp / "daemon.log").read_text())
            time.sleep(0.05)
        yield plugins
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _through_socket(count: int, mode: str, plugins: Path) -> tuple[list[float], list[float]]:
    from client.engine import Engine

    engine = Engine(str(plugins))
    creates, deletes = [], []
    try:
        for i in range(count):
            t0 = now_ms()
            engine.create_network(f"b{mode}{i}", driver="vlan", subnets=[_subnet(i)],
                                  options={"parent": "trunk", "vlan": str(100 + i), "mode": mode},
                                  ipam_options={"cnmkit.space": f"vlan.trunk.{100 + i}"})
            creates.append(now_ms() - t0)
        for i in range(count):
            t0 = now_ms()
            engine.remove_network(f"b{mode}{i}")
            deletes.append(now_ms() - t0)
    finally:
        engine.close()
    return creates, deletes


def _direct(count: int, mode: str) -> tuple[list[float], list[float]]:
    from drivers import naming
    from drivers.firewall import Firewall, NetworkRules
    from drivers.kernel import Kernel, entered_netns

    creates, deletes = [], []
    with entered_netns(f"/run/netns/{NETNS}"):            # iptables runs in this thread's netns
        kernel, firewall = Kernel(), Firewall()
        nids = [f"{i:04x}".ljust(64, "b") for i in range(1, count + 1)]   # bridge names differ
        for i, nid in enumerate(nids):
            t0 = now_ms()
            link = f"trunk.{100 + i}"
            kernel.vlan_add(link, "trunk", 100 + i, alias=naming.uplink_alias(link), mtu=1500)
            if mode == "bridge":
                bridge, alias = naming.bridge_name(nid), naming.network_alias(nid)
                kernel.ensure_bridge(bridge, alias=alias, mtu=1500, mac=naming.stable_mac(alias))
                kernel.enslave(link, bridge)
                kernel.set_up(bridge)
                firewall.ensure_network(NetworkRules(network_id=nid, bridge=bridge, subnets_v4=(_subnet(i),),
                                                     masquerade=False))
            creates.append(now_ms() - t0)
        for i, nid in enumerate(nids):
            t0 = now_ms()
            if mode == "bridge":
                firewall.remove_network(nid)
                kernel.link_delete(naming.bridge_name(nid), alias=naming.network_alias(nid))
            link = f"trunk.{100 + i}"
            kernel.link_delete(link, alias=naming.uplink_alias(link))
            deletes.append(now_ms() - t0)
        kernel.close()
    return creates, deletes


def inner(count: int, out: Path) -> None:
    _sh("ip", "netns", "add", NETNS)
    lines = [f"guest kernel {os.uname().release}, N={count} networks on one parent, VIDs 100..{99 + count}", "",
             "| mode | path | create ms min / **median** / max (N) | delete ms min / **median** / max (N) "
             "| total s | socket/kernel (median create, delete) |", "|---|---|---|---|---|---|"]
    try:
        _sh("ip", "-n", NETNS, "link", "set", "lo", "up")
        _sh("ip", "-n", NETNS, "link", "add", "trunk", "type", "veth", "peer", "name", "trunkp")
        _sh("ip", "-n", NETNS, "link", "set", "trunk", "up")
        with tempfile.TemporaryDirectory(dir="/run") as tmp, _daemon(Path(tmp)) as plugins:
            for mode in ("bridge", "macvlan"):
                kc, kd = _direct(count, mode)
                sc, sd = _through_socket(count, mode, plugins)
                k = (Summary.of(kc), Summary.of(kd))
                s = (Summary.of(sc), Summary.of(sd))
                lines.append(f"| {mode} | kernel work directly | {k[0].text()} | {k[1].text()} | "
                             f"{(sum(kc) + sum(kd)) / 1000:.1f} | |")
                lines.append(f"| {mode} | cnmkit socket (CLI's calls) | {s[0].text()} | {s[1].text()} | "
                             f"{(sum(sc) + sum(sd)) / 1000:.1f} | {s[0].median / k[0].median:.2f}x, "
                             f"{s[1].median / k[1].median:.2f}x |")
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
    out.write_text("\n".join(lines) + "\n")


# -- on the host: boot the guest ----------------------------------------------------------------------

def outer(count: int) -> int:
    from tests import uml_guest as g

    work = Path(tempfile.mkdtemp(prefix="cnmkit-bench-uml-"))
    workaround = g.workaround_wanted(Path("/proc/cpuinfo").read_text(), os.environ)
    release = g.kernel_release()
    gdir = "/run/cnmkit-guest"
    env = {"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8",
           **(g.NO_AVX_ENV if workaround else {})}
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    legacy = " ".join(f"{n}:{n.replace('tables', 'tables-legacy', 1)}" for n in
                      ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
                       "ip6tables-restore"))
    cmd = " ".join(shlex.quote(a) for a in (sys.executable, str(Path(__file__).resolve()), "--inner",
                                            "--count", str(count), "--out", str(work / "result.md")))
    init = work / "init.sh"
    init.write_text(f"""#!/bin/sh
export PATH={gdir}/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME={gdir} TMPDIR=/run
{exports}
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmpfs /run
mkdir -p /run/netns {gdir}/bin {gdir}/modroot/lib/modules
ln -s {g.MODULES_BASE}/{release} {gdir}/modroot/lib/modules/{release}
printf '#!/bin/sh\\nexec /sbin/modprobe -d {gdir}/modroot "$@"\\n' > {gdir}/bin/modprobe
chmod +x {gdir}/bin/modprobe
echo {gdir}/bin/modprobe > /proc/sys/kernel/modprobe
for pair in {legacy}; do ln -s "/usr/sbin/${{pair#*:}}" "{gdir}/bin/${{pair%%:*}}"; done
{gdir}/bin/modprobe -a {" ".join(g.GUEST_MODULES)}
cd {shlex.quote(str(REPO))}
{cmd} > {work}/inner.log 2>&1
sync
poweroff -f
""")
    init.chmod(0o755)
    argv = [g.KERNEL, f"mem={g.GUEST_MEM}", "rootfstype=hostfs", "rw", f"init={init}", "con=null", "con0=fd:0,fd:1"]
    if workaround:
        argv += [f"{k}={v}" for k, v in g.NO_AVX_ENV.items()]
    with open(work / "console.log", "wb") as console, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(argv, stdin=devnull, stdout=console, stderr=subprocess.STDOUT,
                                preexec_fn=g.install_xstate_filter if workaround else None, start_new_session=True)
        proc.wait()
    result = work / "result.md"
    if not result.is_file():
        print((work / "inner.log").read_text(errors="replace") if (work / "inner.log").is_file() else "",
              (work / "console.log").read_text(errors="replace")[-3000:], sep="\n")
        return 1
    print(result.read_text())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--inner", action="store_true", help="(inside the guest) measure")
    parser.add_argument("--out", type=Path, default=Path("/dev/stdout"))
    args = parser.parse_args()
    if args.inner:
        inner(args.count, args.out)
        return 0
    return outer(args.count)


if __name__ == "__main__":
    sys.exit(main())
