"""Boot user-mode-linux over the host filesystem and run the guest tests (tests/guest/) inside it.

Why: this machine's kernel has no 802.1Q (and no bridge vlan_filtering), so the VLAN datapath is
tested in a real Linux 6.1 kernel that runs as an ordinary process: Debian's ``linux.uml``. It
boots the host's own root through hostfs, so the checkout, the virtualenv and the tests are visible
inside at the same paths (shared/design/machine.md says how, and what breaks on AVX-512 CPUs).

One boot runs every guest test (a boot is a few seconds); the outer tier (tests/uml/) turns each
inner result into its own pytest result. The guest reports through files on hostfs in a host
temporary directory: ``results.jsonl`` (one JSON object per inner test phase, written by the
reporting hook in tests/guest/conftest.py), ``pytest.log`` (the inner pytest's own output),
``pytest.rc`` and ``kernel`` (``uname -r`` of the guest). Everything else the guest writes goes to
tmpfs mounts of its own (/run, the pytest basetemp), so a run leaves nothing on the host but that
directory, which the caller removes.

AVX-512/AMX. On such CPUs the XSAVE area is larger than UML 6.1 knows and ``PTRACE_SETREGSET``
with ``NT_X86_XSTATE`` fails, killing init. The workaround (on when /proc/cpuinfo shows avx512f or
amx, or forced with CNMKIT_UML_XSTATE_WORKAROUND=1; =0 forces it off) starts linux.uml under a
seccomp filter that makes exactly those ptrace requests fail with EIO (UML then falls back to
FPREGS), and keeps every guest process off AVX with glibc tunables and OPENSSL_ia32cap words on the
kernel command line (UML hands ``NAME=VALUE`` words to init's environment).
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUEST_TESTS = ROOT / "tests" / "guest"
KERNEL = "/usr/bin/linux.uml"
MODULES_BASE = Path("/usr/lib/uml/modules")
GUEST_MEM = "512M"

# What the guest tests need, loaded up front (the UML kernel's nf_tables lacks the ip/ip6/inet
# families, so iptables inside is the legacy one, on x_tables modules).
GUEST_MODULES = (
    "8021q", "bridge", "br_netfilter", "veth", "macvlan", "vxlan",
    "x_tables", "ip_tables", "iptable_filter", "iptable_nat", "ip6_tables", "ip6table_filter",
    "ip6table_nat", "nf_conntrack", "nf_nat", "xt_comment", "xt_conntrack", "xt_addrtype",
    "xt_MASQUERADE", "xt_tcpudp", "af_packet",
)

# Set by the init script for the guest tests (tests/guest/conftest.py refuses to run without it)
# and for collecting them on the host (tests/conftest.py ignores tests/guest/ otherwise).
GUEST_ENV = "CNMKIT_UML_GUEST"
COLLECT_ENV = "CNMKIT_GUEST_COLLECT"
RESULTS_ENV = "CNMKIT_GUEST_RESULTS"
WORKAROUND_ENV = "CNMKIT_UML_XSTATE_WORKAROUND"

# Every inner id the outer tier collected (set by tests/uml/test_in_guest.py at collection).
ALL_INNER_IDS = pytest.StashKey[list[str]]()

# The workaround's environment words (shared/design/machine.md, "When user-mode-linux will not boot").
NO_AVX_ENV = {
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX2,-AVX,"
                      "-AVX_Fast_Unaligned_Load",
    "OPENSSL_ia32cap": "~0x1000000000000000:0",
}


# --- the seccomp filter -------------------------------------------------------------------------

AUDIT_ARCH_X86_64 = 0xC000003E
NR_PTRACE_X86_64 = 101
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
NT_X86_XSTATE = 0x202
EIO = 5
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# classic BPF opcodes
BPF_LD_W_ABS = 0x20      # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15         # BPF_JMP | BPF_JEQ | BPF_K
BPF_RET_K = 0x06         # BPF_RET | BPF_K

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6] (little endian)
_OFF_NR, _OFF_ARCH, _OFF_ARG0, _OFF_ARG2 = 0, 4, 16, 32


def xstate_filter() -> list[tuple[int, int, int, int]]:
    """The BPF program, as (code, jt, jf, k): ``ptrace(GETREGSET|SETREGSET, _, NT_X86_XSTATE, _)``
    returns EIO, every other syscall (and every other architecture) is allowed.

    Jumps are written to labels and resolved here (a jump offset counts the instructions after
    the jump): a hand-counted offset that is one short sends every syscall to the EIO return.
    """
    Jump = tuple[int, str | int, str | int, int]
    prog: list[tuple[str, Jump]] = [
        ("", (BPF_LD_W_ABS, 0, 0, _OFF_ARCH)),
        ("", (BPF_JEQ_K, 0, "allow", AUDIT_ARCH_X86_64)),
        ("", (BPF_LD_W_ABS, 0, 0, _OFF_NR)),
        ("", (BPF_JEQ_K, 0, "allow", NR_PTRACE_X86_64)),
        ("", (BPF_LD_W_ABS, 0, 0, _OFF_ARG0)),                 # the request (low 32 bits)
        ("", (BPF_JEQ_K, "note", 0, PTRACE_GETREGSET)),
        ("", (BPF_JEQ_K, 0, "allow", PTRACE_SETREGSET)),
        ("note", (BPF_LD_W_ABS, 0, 0, _OFF_ARG2)),             # addr: the note type (low 32 bits)
        ("", (BPF_JEQ_K, 0, "allow", NT_X86_XSTATE)),
        ("", (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EIO)),
        ("allow", (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)),
    ]
    where = {label: i for i, (label, _insn) in enumerate(prog) if label}

    def offset(pc: int, target: str | int) -> int:
        return target if isinstance(target, int) else where[target] - pc - 1

    return [(code, offset(pc, jt), offset(pc, jf), k) for pc, (_label, (code, jt, jf, k)) in enumerate(prog)]


def pack_filter(prog: Sequence[tuple[int, int, int, int]]) -> bytes:
    """``struct sock_filter[]`` as the kernel reads it (u16 code, u8 jt, u8 jf, u32 k)."""
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_xstate_filter() -> None:
    """Install the filter on the calling process (irreversible: call it in the child, before exec).

    NO_NEW_PRIVS first: an unprivileged process may not install a filter without it, and it costs
    linux.uml nothing (it runs no setuid program).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    code = pack_filter(xstate_filter())
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def cpu_needs_workaround(cpuinfo: str) -> bool:
    """True when a CPU's flags include AVX-512 (avx512f) or AMX (amx_tile, amx_bf16, ...)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = value.split()
            return "avx512f" in flags or any(f.startswith("amx") for f in flags)
    return False


def workaround_wanted(cpuinfo: str, env: Mapping[str, str]) -> bool:
    """CNMKIT_UML_XSTATE_WORKAROUND=1/0 forces it on/off; otherwise the CPU decides."""
    forced = env.get(WORKAROUND_ENV, "")
    if forced in ("0", "1"):
        return forced == "1"
    return cpu_needs_workaround(cpuinfo)


# --- the boot -----------------------------------------------------------------------------------

def kernel_release() -> str:
    """The release of the UML modules shipped with linux.uml (the directory name, e.g. 6.1.176)."""
    releases = sorted(p.name for p in MODULES_BASE.iterdir()) if MODULES_BASE.is_dir() else []
    if len(releases) != 1:
        raise RuntimeError(f"expected one module tree under {MODULES_BASE}, found {releases}")
    return releases[0]


def missing_tools() -> list[str]:
    """What a boot needs from the host and is not there (with the Debian package to install)."""
    missing = []
    if not os.access(KERNEL, os.X_OK):
        missing.append(f"{KERNEL} (user-mode-linux)")
    if not MODULES_BASE.is_dir():
        missing.append(f"{MODULES_BASE} (user-mode-linux)")
    if shutil.which("modprobe") is None and not os.access("/usr/sbin/modprobe", os.X_OK):
        missing.append("modprobe (kmod)")
    return missing


@dataclass
class GuestRun:
    """What one boot produced: per inner test id, its phase reports; the boot's own evidence."""
    workdir: Path
    console: str
    returncode: int | None
    workaround: bool
    kernel: str = ""
    pytest_log: str = ""
    pytest_rc: int | None = None
    reports: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def booted(self) -> bool:
        return bool(self.kernel)

    def evidence(self, tail: int = 60) -> str:
        """The boot console and the inner pytest output (last lines), for a failure message."""
        console = "\n".join(self.console.splitlines()[-tail:])
        log = "\n".join(self.pytest_log.splitlines()[-tail:])
        return (f"linux.uml exit status {self.returncode}, xstate workaround {'on' if self.workaround else 'off'}, "
                f"guest kernel {self.kernel or '(never reported)'}, inner pytest status {self.pytest_rc}\n"
                f"--- boot console (last {tail} lines) ---\n{console}\n"
                f"--- inner pytest output (last {tail} lines) ---\n{log}")


def _init_script(workdir: Path, release: str, python: str, pytest_args: Sequence[str],
                 env: Mapping[str, str]) -> str:
    """PID 1 of the guest: private /run, modules, tools, then pytest on tests/guest, then power off.

    Nothing here creates anything on the host: modules are found through a modprobe wrapper (also
    registered as the kernel's /proc/sys/kernel/modprobe, so on-demand loading works) pointing at
    a tmpfs root whose lib/modules/<release> links to the UML module tree; iptables and ip6tables
    are the legacy ones through links in a tmpfs bin directory put first on PATH.
    """
    g = "/run/cnmkit-guest"
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    legacy = " ".join(f"{name}:{name.replace('tables', 'tables-legacy', 1)}" for name in
                      ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
                       "ip6tables-restore"))
    cmd = " ".join(shlex.quote(a) for a in (python, "-m", "pytest", *pytest_args))
    out = shlex.quote(str(workdir))
    return f"""#!/bin/sh
# Generated by tests/uml_guest.py: PID 1 of the user-mode-linux guest.
export PATH={g}/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME={g}/home TMPDIR={g}/tmp
{exports}
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmpfs /run
mkdir -p /run/netns /run/lock {g}/bin {g}/home {g}/tmp {g}/modroot/lib/modules
ln -s {MODULES_BASE}/{release} {g}/modroot/lib/modules/{release}
printf '#!/bin/sh\\nexec /sbin/modprobe -d {g}/modroot "$@"\\n' > {g}/bin/modprobe
chmod +x {g}/bin/modprobe
echo {g}/bin/modprobe > /proc/sys/kernel/modprobe
for pair in {legacy}; do ln -s "/usr/sbin/${{pair#*:}}" "{g}/bin/${{pair%%:*}}"; done
{g}/bin/modprobe -a {" ".join(GUEST_MODULES)} || echo "cnmkit-guest: some modules did not load"
ip link set lo up
export {GUEST_ENV}="$(uname -r)"
uname -r > {out}/kernel.tmp && mv {out}/kernel.tmp {out}/kernel
cd {shlex.quote(str(ROOT))}
{cmd} > {out}/pytest.log 2>&1
echo $? > {out}/pytest.rc
sync
poweroff -f
"""


def guest_env(workdir: Path, workaround: bool) -> dict[str, str]:
    """The environment the guest tests get (on top of PATH/HOME/TMPDIR set by the init script)."""
    env = {
        RESULTS_ENV: str(workdir / "results.jsonl"),
        COLLECT_ENV: "1",
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",            # root-owned .pyc files on the host tree: no
        "CNMKIT_STATE_DIR": "/run/cnmkit-guest/state",
        "CNMKIT_PLUGIN_DIR": "/run/docker/plugins",
        "LANG": "C.UTF-8",
    }
    if os.environ.get("CNMKIT_ALL_TIERS") == "1":
        env["CNMKIT_ALL_TIERS"] = "1"              # a guest test that cannot run fails there too
    if workaround:
        env.update(NO_AVX_ENV)
    return env


def boot(pytest_args: Sequence[str] = (), *, targets: Sequence[str] = (), workdir: Path | None = None,
         workaround: bool | None = None, timeout: float = 600) -> GuestRun:
    """Boot once, run ``pytest <pytest_args> <targets>`` inside (default target: all of
    tests/guest; a target is an inner node id, relative to the repository), and collect what it
    reported.

    ``timeout`` only stops a wedged guest from hanging the suite (a boot takes seconds); the
    run's evidence is returned whatever happened, never raised, so the caller can show it.
    """
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="cnmkit-uml-"))
    if workaround is None:
        workaround = workaround_wanted(Path("/proc/cpuinfo").read_text(), os.environ)
    release = kernel_release()
    inner = ["-q", "-p", "no:cacheprovider", "--basetemp=/run/cnmkit-guest/pytest",
             *pytest_args, *(targets or [str(GUEST_TESTS)])]
    env = guest_env(workdir, workaround)
    init = workdir / "init.sh"
    init.write_text(_init_script(workdir, release, sys.executable, inner, env))
    init.chmod(0o755)
    argv = [KERNEL, f"mem={GUEST_MEM}", "rootfstype=hostfs", "rw", f"init={init}", "con=null",
            "con0=fd:0,fd:1"]
    if workaround:
        argv += [f"{k}={v}" for k, v in NO_AVX_ENV.items()]
    console_path = workdir / "console.log"
    returncode: int | None
    with open(console_path, "wb") as console, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(argv, stdin=devnull, stdout=console, stderr=subprocess.STDOUT,
                                preexec_fn=install_xstate_filter if workaround else None,
                                start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)               # our own process group, by the pid we started
            returncode = proc.wait()
            console.write(f"\n[tests/uml_guest.py: killed after {timeout:.0f} s]\n".encode())
        except BaseException:                    # interrupted (Ctrl-C): leave no guest running
            os.killpg(proc.pid, 9)
            proc.wait()
            raise
    run = GuestRun(workdir=workdir, console=console_path.read_text(errors="replace"), returncode=returncode,
                   workaround=workaround)
    kernel = workdir / "kernel"
    run.kernel = kernel.read_text().strip() if kernel.is_file() else ""
    log = workdir / "pytest.log"
    run.pytest_log = log.read_text(errors="replace") if log.is_file() else ""
    rc = workdir / "pytest.rc"
    run.pytest_rc = int(rc.read_text()) if rc.is_file() and rc.read_text().strip().isdigit() else None
    run.reports = read_reports(workdir / "results.jsonl")
    return run


def read_reports(path: Path) -> dict[str, list[dict]]:
    """Per inner node id, its phase reports in order (a torn last line, from a crash, is dropped)."""
    reports: dict[str, list[dict]] = {}
    if not path.is_file():
        return reports
    for raw in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            continue
        reports.setdefault(rec["nodeid"], []).append(rec)
    return reports


def verdict(inner_id: str, run: GuestRun) -> tuple[str, str]:
    """What the outer test of ``inner_id`` must do: ("passed" | "failed" | "skipped", message).

    Anything short of a reported pass is a failure with evidence: a guest that never booted, an
    inner collection error covering this test, a test with no report (the guest died, or the inner
    run never reached it). An inner skip stays a skip (the caller fails it under CNMKIT_ALL_TIERS=1).
    """
    if not run.booted:
        return "failed", f"the user-mode-linux guest never booted (no kernel release reported)\n{run.evidence()}"
    collect_errors = [p for key, reports in run.reports.items() for p in reports
                      if p["when"] == "collect" and (inner_id == key or inner_id.startswith(key + "::"))]
    if collect_errors:
        return "failed", (f"inner collection failed on kernel {run.kernel}:\n"
                          + "\n".join(describe(p) for p in collect_errors))
    phases = run.reports.get(inner_id, [])
    bad = [p for p in phases if p["outcome"] == "failed"]
    if bad:
        return "failed", (f"{inner_id} failed inside the guest (kernel {run.kernel}):\n"
                          + "\n\n".join(describe(p) for p in bad))
    skipped = [p for p in phases if p["outcome"] == "skipped"]
    if skipped:
        return "skipped", f"skipped inside the guest (kernel {run.kernel}): {skipped[0].get('longrepr', '')}"
    if not any(p["when"] == "call" and p["outcome"] == "passed" for p in phases):
        return "failed", f"no result from the guest for {inner_id}\n{run.evidence()}"
    return "passed", f"passed inside the guest (kernel {run.kernel})"


def describe(phase: dict) -> str:
    """One inner phase report as text: outcome, traceback, captured output."""
    sections = "\n".join(f"--- {title} ---\n{text}" for title, text in phase.get("sections", []))
    return f"[{phase['when']}] {phase['outcome']}\n{phase.get('longrepr', '')}\n{sections}".rstrip()


def collect_guest_tests() -> tuple[list[str], str]:
    """The inner test ids, collected on the host (``pytest --collect-only -q tests/guest``), and
    the collection's output (shown when it failed: then the list is empty)."""
    env = dict(os.environ, **{COLLECT_ENV: "1", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"})
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           str(GUEST_TESTS)], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False)
    ids = [line.strip() for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if proc.returncode != 0:
        return [], proc.stdout + proc.stderr
    return ids, proc.stdout
