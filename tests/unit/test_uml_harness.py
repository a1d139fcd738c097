"""The user-mode-linux harness's own pieces: when the AVX-512/AMX workaround is on, what its
seccomp program does (run by a small classic-BPF interpreter here, and by the real kernel in a
child process), and how inner results are read back."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests import uml_guest as g

ROOT = Path(__file__).resolve().parents[2]
NT_PRSTATUS = 1


def _run_bpf(prog: list[tuple[int, int, int, int]], nr: int, arch: int, args: tuple[int, ...]) -> int:
    """Interpret the subset of classic BPF the program uses, over a struct seccomp_data."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == g.BPF_LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == g.BPF_JEQ_K:
            pc += 1 + (jt if acc == k else jf)
        elif code == g.BPF_RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


@pytest.mark.parametrize(("nr", "arch", "args", "verdict"), [
    (101, g.AUDIT_ARCH_X86_64, (g.PTRACE_GETREGSET, 7, g.NT_X86_XSTATE), g.SECCOMP_RET_ERRNO | g.EIO),
    (101, g.AUDIT_ARCH_X86_64, (g.PTRACE_SETREGSET, 7, g.NT_X86_XSTATE), g.SECCOMP_RET_ERRNO | g.EIO),
    (101, g.AUDIT_ARCH_X86_64, (g.PTRACE_GETREGSET, 7, NT_PRSTATUS), g.SECCOMP_RET_ALLOW),
    (101, g.AUDIT_ARCH_X86_64, (0x4206, 7, 0), g.SECCOMP_RET_ALLOW),                    # PTRACE_SEIZE
    (101, g.AUDIT_ARCH_X86_64, (12, 7, g.NT_X86_XSTATE), g.SECCOMP_RET_ALLOW),          # PTRACE_GETREGS
    (0, g.AUDIT_ARCH_X86_64, (g.PTRACE_GETREGSET, 0, g.NT_X86_XSTATE), g.SECCOMP_RET_ALLOW),   # read
    (39, g.AUDIT_ARCH_X86_64, (), g.SECCOMP_RET_ALLOW),                                 # getpid
    (101, 0x40000003, (g.PTRACE_GETREGSET, 7, g.NT_X86_XSTATE), g.SECCOMP_RET_ALLOW),   # i386
])
def test_filter_denies_only_xstate_regset_requests(nr: int, arch: int, args: tuple[int, ...],
                                                    verdict: int) -> None:
    assert _run_bpf(g.xstate_filter(), nr, arch, args) == verdict


def test_filter_packs_as_sock_filter_array() -> None:
    prog = g.xstate_filter()
    packed = g.pack_filter(prog)
    assert len(packed) == 8 * len(prog)
    assert struct.unpack_from("=HBBI", packed, 0) == prog[0]


_PROBE = """
import ctypes, sys
sys.path.insert(0, {root!r})
libc = ctypes.CDLL(None, use_errno=True)
def regset(note):
    buf = ctypes.create_string_buffer(4096)
    iov = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 4096)
    libc.syscall.restype = ctypes.c_long
    r = libc.syscall(101, ctypes.c_long(0x4204), ctypes.c_long(1), ctypes.c_long(note), iov)
    return ctypes.get_errno() if r != 0 else 0
if sys.argv[1] == "filtered":
    from tests.uml_guest import install_xstate_filter
    install_xstate_filter()
print(regset(0x202), regset(1))
"""


def _errnos(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(root=str(ROOT)), mode], capture_output=True,
                         text=True, check=True).stdout
    return [int(x) for x in out.split()]


def test_the_kernel_applies_the_filter_to_xstate_only() -> None:
    """Real oracle: ptrace(GETREGSET) on a process we do not trace fails with ESRCH (3); under
    the filter the XSTATE request fails with EIO (5) before reaching ptrace, the other does not."""
    assert _errnos("plain") == [3, 3]
    assert _errnos("filtered") == [5, 3]


@pytest.mark.parametrize(("flags", "wanted"), [
    ("fpu sse avx avx2", False),
    ("fpu sse avx avx2 avx512f avx512dq", True),
    ("fpu sse avx amx_tile amx_bf16", True),
    ("fpu avx512_vnni", False),                                  # not avx512f itself
])
def test_cpu_decides_the_workaround(flags: str, wanted: bool) -> None:
    cpuinfo = f"processor\t: 0\nflags\t\t: {flags}\n"
    assert g.cpu_needs_workaround(cpuinfo) is wanted
    assert g.workaround_wanted(cpuinfo, {}) is wanted
    assert g.workaround_wanted(cpuinfo, {g.WORKAROUND_ENV: "1"}) is True
    assert g.workaround_wanted(cpuinfo, {g.WORKAROUND_ENV: "0"}) is False


def test_workaround_words_reach_the_kernel_command_line_only_when_on(tmp_path: Path) -> None:
    on = g.guest_env(tmp_path, workaround=True)
    off = g.guest_env(tmp_path, workaround=False)
    assert on["GLIBC_TUNABLES"].startswith("glibc.cpu.hwcaps=-AVX512F") and "OPENSSL_ia32cap" in on
    assert "GLIBC_TUNABLES" not in off


def test_reports_are_read_per_test_and_a_torn_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    lines = [json.dumps({"nodeid": "a::t", "when": w, "outcome": "passed"}) for w in ("setup", "call", "teardown")]
    path.write_text("\n".join(lines) + '\n{"nodeid": "b::t", "wh')
    reports = g.read_reports(path)
    assert list(reports) == ["a::t"]
    assert [r["when"] for r in reports["a::t"]] == ["setup", "call", "teardown"]
    assert g.read_reports(tmp_path / "missing.jsonl") == {}


def _run(tmp_path: Path, kernel: str = "6.1.176", **reports: list[dict]) -> g.GuestRun:
    return g.GuestRun(workdir=tmp_path, console="Run init.sh as init process\nKernel panic\n", returncode=0,
                      workaround=False, kernel=kernel, pytest_log="inner log", pytest_rc=1,
                      reports={k.replace("__", "::"): v for k, v in reports.items()})


def _phase(when: str, outcome: str, longrepr: str = "", sections: list | None = None) -> dict:
    return {"when": when, "outcome": outcome, "longrepr": longrepr, "sections": sections or []}


def test_verdict_passes_only_a_reported_pass(tmp_path: Path) -> None:
    run = _run(tmp_path, t__a=[_phase("setup", "passed"), _phase("call", "passed"), _phase("teardown", "passed")])
    assert g.verdict("t::a", run)[0] == "passed"


def test_verdict_fails_with_the_inner_traceback_and_output(tmp_path: Path) -> None:
    run = _run(tmp_path, t__a=[_phase("setup", "passed"),
                               _phase("call", "failed", "E   assert 2 == 3", [["Captured stdout call", "hello"]])])
    outcome, message = g.verdict("t::a", run)
    assert outcome == "failed"
    assert "kernel 6.1.176" in message and "assert 2 == 3" in message and "hello" in message


def test_verdict_fails_when_the_guest_never_booted_with_the_console(tmp_path: Path) -> None:
    outcome, message = g.verdict("t::a", _run(tmp_path, kernel=""))
    assert outcome == "failed" and "never booted" in message and "Kernel panic" in message


@pytest.mark.parametrize("phases", [[], [_phase("setup", "passed")], [_phase("setup", "passed"),
                                                                      _phase("teardown", "passed")]])
def test_verdict_fails_a_test_the_guest_did_not_report(tmp_path: Path, phases: list[dict]) -> None:
    outcome, message = g.verdict("t::a", _run(tmp_path, t__a=phases))
    assert outcome == "failed" and "no result" in message and "inner log" in message


def test_verdict_fails_on_an_inner_collection_error_of_its_module(tmp_path: Path) -> None:
    run = _run(tmp_path, **{"tests/guest/test_x.py": [_phase("collect", "failed", "ImportError: nope")]})
    outcome, message = g.verdict("tests/guest/test_x.py::test_y", run)
    assert outcome == "failed" and "ImportError: nope" in message
    assert g.verdict("tests/guest/test_x2.py::test_y", run)[1].startswith("no result")


def test_verdict_passes_a_skip_on_as_a_skip(tmp_path: Path) -> None:
    run = _run(tmp_path, t__a=[_phase("setup", "skipped", "('x.py', 3, 'Skipped: no tcpdump')")])
    outcome, message = g.verdict("t::a", run)
    assert outcome == "skipped" and "no tcpdump" in message


def test_init_script_writes_on_the_host_only_into_its_workdir(tmp_path: Path) -> None:
    """hostfs is the host's own root: a `mkdir -p /lib/modules` in the guest makes that directory on
    the host (it did once). Everything the init makes must be under the guest's tmpfs /run, or
    be the report files in the work directory."""
    script = g._init_script(tmp_path, "6.1.176", "/venv/bin/python", ["-q", "tests/guest"], {"A": "b c"})
    made = []
    for line in script.splitlines():
        words = line.split()
        if words[:2] == ["mkdir", "-p"]:
            made += words[2:]
        if words[:2] == ["ln", "-s"]:
            made.append(words[3])
        if words[:1] == ["mount"]:
            made.append(words[-1])
    assert made
    allowed = ("/run", "/proc", "/sys")
    assert [m for m in made if not m.startswith(allowed)] == []
    assert "export A='b c'" in script
    assert f"> {tmp_path}/pytest.log" in script and script.rstrip().endswith("poweroff -f")
