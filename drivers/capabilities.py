"""What this host's kernel and tools give cnmkit, found by trying (``cnmkit doctor``, the VLAN driver).

Why by trying: /proc/config.gz may be missing, a module may be loadable or not, and a feature can
be compiled in yet refused (bridge ``vlan_filtering`` here says "Operation not supported"). So
each link kind is probed by creating one, in a network namespace of its own made with
``unshare --net`` for one short shell run: the namespace, and everything the probes made in it,
ends with that process, whatever happens, and the root namespace's interfaces are never touched.
Settings (br_netfilter's sysctls, ip_forward) are read from /proc/sys; the FORWARD policy is read
with ``iptables -S FORWARD`` (read only).

The VLAN driver asks ``has_8021q()`` before it makes anything, so a kernel without 802.1Q gives
one clear error naming the feature, and nothing half-made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

PROBE_TIMEOUT = 30.0                   # a wedged `ip` must not hang the CLI (a probe takes ms)


@dataclass(frozen=True)
class Capability:
    """One thing cnmkit can use; ``available`` None means it could not be checked (``detail`` says why)."""
    name: str
    title: str
    available: bool | None
    detail: str
    if_missing: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class LinkProbe:
    name: str
    title: str
    command: str              # `ip` arguments; $P is a parent link (veth, else bridge) made first
    if_missing: str
    needs_parent: bool = False


LINK_PROBES: tuple[LinkProbe, ...] = (
    LinkProbe("bridge", "Linux bridge", "link add cnmkd-br type bridge",
              "cnmkit-bridge and cnmkit-vlan (bridge mode) networks unavailable"),
    LinkProbe("veth", "veth pairs", "link add cnmkd-v0 type veth peer name cnmkd-v1",
              "no container endpoints: every driver but cnmkit-vlan mode=macvlan unavailable"),
    LinkProbe("vxlan", "VXLAN devices", "link add cnmkd-vx type vxlan id 42 dstport 4789",
              "cnmkit-vxlan overlay networks unavailable"),
    LinkProbe("8021q", "802.1Q VLAN sub-interfaces", "link add link $P name cnmkd-p.100 type vlan id 100",
              "cnmkit-vlan networks unavailable", needs_parent=True),
    LinkProbe("bridge_vlan_filtering", "bridge vlan_filtering", "link add cnmkd-brf type bridge vlan_filtering 1",
              "none today (cnmkit-vlan uses one bridge per VLAN sub-interface, not a VLAN-aware bridge)"),
    LinkProbe("macvlan", "macvlan", "link add link $P name cnmkd-mv type macvlan mode bridge",
              "cnmkit-vlan -o mode=macvlan unavailable", needs_parent=True),
)

# The parent for probes that need one: a veth end, or a bridge when veth is missing.
_PARENT = ("if ip link add cnmkd-p type veth peer name cnmkd-q 2>/dev/null; then P=cnmkd-p; "
           "elif ip link add cnmkd-p type bridge 2>/dev/null; then P=cnmkd-p; else P=; fi")


def _probe_script(probes: Sequence[LinkProbe]) -> str:
    """A shell script printing ``name<TAB>status<TAB>first line of ip's error`` per probe."""
    lines = [_PARENT] if any(p.needs_parent for p in probes) else []
    for p in probes:
        guard = 'if [ -z "$P" ]; then printf "%s\\t-\\tno parent link to probe on\\n" ' + p.name + "; else " \
            if p.needs_parent else ""
        tail = "; fi" if p.needs_parent else ""
        lines.append(f'{guard}out=$(ip {p.command} 2>&1); rc=$?; '
                     f'printf "%s\\t%s\\t%s\\n" {p.name} "$rc" "$(printf "%s" "$out" | head -n 1)"{tail}')
    return "\n".join(lines) + "\n"


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=PROBE_TIMEOUT)


def probe_links(probes: Sequence[LinkProbe] = LINK_PROBES, run: Runner = _run) -> list[Capability]:
    """Try each link kind in a fresh namespace of one ``unshare --net`` shell run."""
    def unknown(why: str) -> list[Capability]:
        return [Capability(p.name, p.title, None, why, p.if_missing) for p in probes]

    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return unknown("cannot probe: needs unshare (util-linux) and ip (iproute2)")
    try:
        done = run(["unshare", "--net", "--", "sh", "-c", _probe_script(probes)])
    except (OSError, subprocess.TimeoutExpired) as exc:
        return unknown(f"cannot probe: {exc}")
    if done.returncode != 0 and not done.stdout:
        return unknown(f"cannot probe (root needed for a network namespace): {done.stderr.strip()[:200]}")
    found: dict[str, tuple[str, str]] = {}
    for raw in done.stdout.splitlines():
        name, _, rest = raw.partition("\t")
        status, _, detail = rest.partition("\t")
        found[name] = (status, detail)
    out = []
    for p in probes:
        status, detail = found.get(p.name, ("-", "probe gave no answer"))
        ok: bool | None = True if status == "0" else None if status == "-" else False
        shown = f"made in a throwaway netns: ip {p.command.replace('$P', '<veth>')}" if ok else \
            detail or f"ip exit status {status}"
        out.append(Capability(p.name, p.title, ok, shown, p.if_missing))
    return out


NO_8021Q = ("this kernel has no 802.1Q VLAN support (the 8021q module, CONFIG_VLAN_8021Q): VLAN networks "
            "cannot be made on this host; load it (modprobe 8021q) or use a kernel that has it (cnmkit doctor)")


def probe_8021q(run: Runner = _run) -> bool | None:
    """Whether this kernel makes 802.1Q sub-interfaces (tried in a throwaway namespace); None
    when it could not be tried. The VLAN driver and a lab deploy refuse only on False."""
    [cap] = probe_links([p for p in LINK_PROBES if p.name == "8021q"], run)
    return cap.available


def has_8021q(run: Runner = _run) -> bool:
    """True when this kernel makes 802.1Q sub-interfaces (tried in a throwaway namespace)."""
    return probe_8021q(run) is True


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def probe_settings(proc_sys: str = "/proc/sys") -> list[Capability]:
    """br_netfilter and its settings, and ip_forward, from /proc/sys (read only)."""
    caps = []
    bridge_nf = os.path.join(proc_sys, "net/bridge/bridge-nf-call-iptables")
    present = _read(bridge_nf) is not None
    caps.append(Capability("br_netfilter", "br_netfilter (iptables sees bridged traffic)", present,
                           "net.bridge.bridge-nf-call-* present" if present else f"{bridge_nf} missing",
                           "iptables does not see traffic between ports of one bridge: icc=false networks do not "
                           "isolate their containers"))
    for family, tool in (("iptables", "iptables"), ("ip6tables", "ip6tables")):
        value = _read(os.path.join(proc_sys, f"net/bridge/bridge-nf-call-{family}"))
        detail = "missing" if value is None else (
            f"{value}: bridged IPv{'4' if family == 'iptables' else '6'} traffic "
            f"{'passes' if value == '1' else 'skips'} {tool} FORWARD")
        caps.append(Capability(f"bridge-nf-call-{family}", f"net.bridge.bridge-nf-call-{family}",
                               value is not None, detail, "see br_netfilter"))
    forward = _read(os.path.join(proc_sys, "net/ipv4/ip_forward"))
    caps.append(Capability("ip_forward", "net.ipv4.ip_forward", forward == "1",
                           forward if forward is not None else "missing",
                           "none at first: cnmkit turns it on for a masquerading network, as dockerd does"))
    return caps


def _tool_version(tool: str, run: Runner) -> str | None:
    if shutil.which(tool) is None:
        return None
    try:
        done = run([tool, "--version"])
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else ""


def iptables_backend(version: str) -> str:
    """``legacy`` or ``nf_tables`` from ``iptables --version`` (``iptables v1.8.9 (nf_tables)``)."""
    if "(nf_tables)" in version:
        return "nf_tables"
    if "(legacy)" in version:
        return "legacy"
    return "unknown"


def probe_firewall(run: Runner = _run) -> list[Capability]:
    """iptables (and its backend), nft, and the FORWARD chain's policy (read with ``iptables -S``)."""
    caps = []
    version = _tool_version("iptables", run)
    if version is None:
        caps.append(Capability("iptables", "iptables", False, "iptables not found",
                               "no isolation, masquerade or published ports for bridge networks"))
    else:
        caps.append(Capability("iptables", "iptables", True, f"{version}, backend {iptables_backend(version)}",
                               "no isolation, masquerade or published ports for bridge networks"))
    nft = _tool_version("nft", run)
    caps.append(Capability("nftables", "nft command", nft is not None, nft or "nft not found",
                           "nothing: cnmkit programs rules through iptables (its nf_tables backend needs no nft)"))
    policy: str | None = None
    detail = "iptables not found"
    if version is not None:
        try:
            done = run(["iptables", "-w", "5", "-S", "FORWARD"])
            first = done.stdout.splitlines()[0].split() if done.stdout.strip() else []
            if done.returncode == 0 and first[:2] == ["-P", "FORWARD"] and len(first) == 3:
                policy = first[2]
                detail = f"{policy}" + (" (dockerd's default: cnmkit accepts its own networks' traffic in its "
                                        "chains)" if policy == "DROP" else "")
            else:
                detail = (done.stderr.strip().splitlines() or ["cannot read"])[0]
        except (OSError, subprocess.TimeoutExpired) as exc:
            detail = str(exc)
    # Unreadable is unknown, not missing: a non-root user cannot read the chains at all.
    readable: bool | None = True if policy is not None else False if version is None else None
    caps.append(Capability("forward_policy", "iptables FORWARD policy", readable, detail,
                           "cannot tell whether forwarded traffic is dropped by default"))
    return caps


def probe_all(run: Runner = _run, proc_sys: str = "/proc/sys") -> list[Capability]:
    return [*probe_links(LINK_PROBES, run), *probe_settings(proc_sys), *probe_firewall(run)]


def report(caps: Sequence[Capability]) -> dict[str, object]:
    """The JSON form: the kernel release, each capability, and what the missing ones disable."""
    return {"kernel": os.uname().release,
            "capabilities": [c.to_json() for c in caps],
            "missing": [c.name for c in caps if c.available is False]}
