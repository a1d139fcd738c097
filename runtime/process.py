"""The container's processes: its init inside the namespaces, the mounts it sees, exec.

Process tree of one container (host view; runtime/supervisor.py starts it)::

    supervisor (a fork of the CLI or lab deployer, one per batch; records exit codes, releases networks)
     └─ init  (tini; PID 1 of the new PID namespace; own UTS + mount ns; joined to the sandbox netns)
         └─ command (PID 2; what ``kill -9`` from outside targets, recorded as ``pid``)

A separate init (like ``docker run --init``) because PID 1 ignores signals it has no handler
for: with the command as PID 1, ``stop`` would always wait for SIGKILL and Ctrl-C would do
nothing. The init forwards signals to the command, reaps orphans, and exits with the command's
code (128+N if killed by signal N, so ``kill -9`` reads as 137), which takes the whole PID
namespace down with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

from runtime import ns

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INIT_ARGV0 = "cnmkit-init:"                        # + the container id: argv[0] of its init
_DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")


@dataclass(frozen=True)
class InitSpec:
    """Everything the container's init needs, gathered from the record (runtime/batch.py)."""

    command: list[str]
    env: dict[str, str]
    hostname: str
    netns: str
    rootfs: str | None
    etc_files: dict[str, str]        # "/etc/hosts" -> host path of the container's copy
    hide_mounts: tuple[str, ...]     # host dirs of netns bind mounts to detach inside


# -- pid bookkeeping ---------------------------------------------------------------------------

def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: with the pid, identifies a process across pid reuse."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    if fields[0] == "Z":                              # a zombie has exited already
        return None
    return int(fields[19])


def alive(pid: int, started: int | None = None) -> bool:
    now = start_time(pid)
    return now is not None and (started is None or started == 0 or now == started)


def wait_gone(pid: int, started: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid, started):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def is_init_of(pid: int, cid: str) -> bool:
    """Whether ``pid`` is the init of container ``cid``: its exact argv[0], never a pattern."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return False
    return argv[0] == (INIT_ARGV0 + cid).encode()


def container_pids(cid: str) -> list[int]:
    """The init of container ``cid``, found by its exact argv[0] (which holds the full id).

    For the one case no record covers: a CLI killed after the supervisor reported but before it
    wrote the pids down. The id is 64 random hex digits, so nothing else can match.
    """
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and is_init_of(int(e), cid)]


def parent_pid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return 0
    return int(data[data.rindex(")") + 2:].split()[1])


def children(pid: int) -> list[int]:
    """The live children of ``pid`` (every thread's), for knowing whether a supervisor still has
    containers to watch; zombies (ended, about to be reaped by it) do not count."""
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids += [int(k) for k in fh.read().split()]
    except OSError:
        return []
    return [k for k in kids if alive(k)]


def exit_code(status: int) -> int:
    """A wait status as a shell would report it: the code, or 128+signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def forward_signals(target: int, signals: Iterable[int] = FORWARDED_SIGNALS) -> None:
    def handler(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signum)

    for sig in signals:
        signal.signal(sig, handler)


def defer_signals() -> list[int]:
    """Hold the forwarded signals in a list until there is someone to forward them to.

    A foreground ``cnmkit run`` must not die from a signal that arrives while the container is
    being set up (the default action would orphan a running container); ``wait_foreground``
    replays what was held once the container's init exists.
    """
    pending: list[int] = []
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, lambda signum, _frame: pending.append(signum))
    return pending


def restore_signals() -> None:
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)


def _default_signals() -> None:
    for sig in (*FORWARDED_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)


# -- inside the container ---------------------------------------------------------------------

def run_init(spec: InitSpec, report_fd: int) -> None:
    """Body of the container's PID 1 when there is no tini (a forked child of the supervisor).
    Never returns.

    Writes ``ok`` or ``err MESSAGE`` on ``report_fd`` once the command is exec'd or has failed.
    """
    try:
        ns.setns_path(spec.netns, ns.CLONE_NEWNET)
        ns.unshare(ns.CLONE_NEWNS | ns.CLONE_NEWUTS)
        ns.sethostname(spec.hostname)
        _setup_mounts(spec)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:
            os.close(err_r)
            _exec_command(spec.command, spec.env, err_w)
        os.close(err_w)
        failure = os.read(err_r, 4096)
        os.close(err_r)
        if failure:
            os.waitpid(child, 0)
            os.write(report_fd, b"err " + failure + b"\n")
            os._exit(127)
        os.write(report_fd, b"ok\n")
        os.close(report_fd)
        forward_signals(child)
        os._exit(_reap_until(child))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(report_fd, f"err {exc}\n".encode())
        os._exit(126)


def _exec_command(command: list[str], env: dict[str, str], err_fd: int) -> None:
    try:
        _default_signals()
        os.chdir("/")
        os.execvpe(command[0], command, env)
    except OSError as exc:
        os.write(err_fd, f"{command[0]}: {exc.strerror}".encode())
    except BaseException as exc:
        os.write(err_fd, f"{command[0]}: {exc}".encode())
    os._exit(127)


def _reap_until(child: int) -> int:
    """Reap every process (we are PID 1) until ``child`` exits; return its code."""
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 127
        if pid == child:
            return exit_code(status)


def private_table(hide: Iterable[str]) -> None:
    """Make this (fresh) mount table private and detach every mount under the ``hide`` dirs.

    Private first: nothing mounted from here on may leak back to the host. The copy of the host's
    table also holds the netns bind mounts of other containers; left in place they would pin
    those namespaces alive after their own rm.
    """
    ns.mount("none", "/", None, ns.MS_REC | ns.MS_PRIVATE)
    for prefix in dict.fromkeys(os.path.realpath(p) for p in hide):
        if not os.path.isdir(prefix):
            continue
        try:
            # A directory that is a mount of its own (the runtime's, ``ip netns``'s) goes with
            # everything under it in one call: one umount per container, not one per container
            # per other container (20-70 ms each at 200 containers).
            ns.umount2(prefix, ns.MNT_DETACH)
            continue
        except OSError:
            pass
        for point in ns.mount_points_under(prefix):
            with contextlib.suppress(OSError):
                ns.umount2(point, ns.MNT_DETACH)


def _setup_mounts(spec: InitSpec, staged: bool = False) -> None:
    """The container's own mounts. ``staged``: this table is a copy of one that ``private_table``
    already trimmed (runtime/supervisor.py), so that is not done again per container."""
    if not staged:
        private_table(spec.hide_mounts)
    if spec.rootfs:
        _enter_rootfs(spec)
        return
    ns.mount("proc", "/proc", "proc", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)
    with contextlib.suppress(OSError):          # /sys showing our netns' devices is a nicety
        ns.mount("sysfs", "/sys", "sysfs", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)
    for target, source in spec.etc_files.items():
        if os.path.exists(target):              # never create files on the host's /etc
            ns.mount(source, target, None, ns.MS_BIND)


def _enter_rootfs(spec: InitSpec) -> None:
    root = os.path.realpath(spec.rootfs or "/")
    ns.mount(root, root, None, ns.MS_BIND | ns.MS_REC)
    for d in ("proc", "dev", "etc", "sys"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    ns.mount("proc", f"{root}/proc", "proc", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)
    ns.mount("tmpfs", f"{root}/dev", "tmpfs", ns.MS_NOSUID, "mode=755,size=64k")
    for node in _DEV_NODES:
        if os.path.exists(f"/dev/{node}"):
            open(f"{root}/dev/{node}", "a").close()
            ns.mount(f"/dev/{node}", f"{root}/dev/{node}", None, ns.MS_BIND)
    for link, dest in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                       ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(dest, f"{root}/dev/{link}")
    for target, source in spec.etc_files.items():
        inside = root + target
        if os.path.islink(inside):              # an image's symlink must not lead us outside
            os.unlink(inside)
        if not os.path.exists(inside):
            open(inside, "a").close()
        ns.mount(source, inside, None, ns.MS_BIND)
    os.chdir(root)
    ns.pivot_root(".", ".")
    ns.umount2(".", ns.MNT_DETACH)
    os.chdir("/")


# -- exec -------------------------------------------------------------------------------------

def exec_in(init_pid: int, command: list[str], env: dict[str, str]) -> int:
    """``docker exec``: join the container's net, uts, pid and mount namespaces, run, return code."""
    fds = {t: os.open(f"/proc/{init_pid}/ns/{t}", os.O_RDONLY | os.O_CLOEXEC)
           for t in ("net", "uts", "pid", "mnt")}
    try:
        child = os.fork()
        if child == 0:
            _exec_child(fds, command, env)
    finally:
        for fd in fds.values():
            os.close(fd)
    forward_signals(child)
    _, status = os.waitpid(child, 0)
    return exit_code(status)


def _exec_child(fds: dict[str, int], command: list[str], env: dict[str, str]) -> None:
    try:
        for kind in ("net", "uts", "pid", "mnt"):     # mnt last: it changes what /proc we see
            ns.setns(fds[kind])
        os.chdir("/")
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        grandchild = os.fork()                         # only children enter the new PID namespace
        if grandchild == 0:
            os.close(err_r)
            _exec_command(command, env, err_w)
        os.close(err_w)
        failure = os.read(err_r, 4096)
        os.close(err_r)
        if failure:
            os.write(2, b"cnmkit: exec: " + failure + b"\n")
        forward_signals(grandchild)
        _, status = os.waitpid(grandchild, 0)
        os._exit(exit_code(status))
    except BaseException as exc:
        os.write(2, f"cnmkit: exec: {exc}\n".encode())
        os._exit(126)
