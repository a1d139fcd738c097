"""One supervisor per batch of containers; no Python interpreter per node.

Process tree (host view) of a batch started by ``cnmkit run`` or a lab deploy::

    caller (CLI / lab deployer)
     └─ supervisor (a fork of the caller, or for a batch of FRESH_FROM+ detached containers a
         │          fresh small interpreter; its own session)
         ├─ init of node 1 (tini, PID 1 of a new PID namespace; own UTS + mount ns; joined to the
         │   └─ command       sandbox netns)        <- what ``kill -9`` from outside targets
         └─ init of node 2 ...

Why this shape. A shim started as ``python -m runtime.shim`` costs 120-160 ms per container
(interpreter start and imports; issue 10 item 5). Forking the already-running interpreter costs a
few milliseconds, and one fork serves the whole batch. For a large batch one fresh interpreter
(``-I -S``, this module only: ~30 ms once, 14 MB) is cheaper still: every init is forked from the
supervisor and execs out of it, and both cost ~1.5 ms more per node out of a 40 MB lab deployer
(page tables, copy-on-write faults, the address space torn down at exec). The supervisor is the parent of every init,
so it alone can collect their exit codes and release their networks when they end on their own,
whether or not the caller is still around; it exits when its last init has been reaped.

The init itself is ``tini`` (what ``docker run --init`` uses), exec'd by a forked child after it
has joined the sandbox netns, unshared mount and UTS namespaces and set up its mounts: PID 1
ignores signals it has no handler for, so a separate init forwards them to the command, reaps
orphans and exits with the command's code (128+N when killed by signal N). ``tini-static`` is
preferred because it runs inside a ``--rootfs`` with no libc (it is exec'd through an fd opened
before the pivot). Without tini the forked child stays PID 1 itself (``process.run_init``), which
is correct but leaves a Python process per node.

Each init's argv[0] is ``cnmkit-init:<id>``: a start cut short before its pids were recorded is
still found by its exact command line (``process.container_pids``), never by a pattern.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import pickle
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runtime import ns
from runtime.process import (
    INIT_ARGV0,
    InitSpec,
    _default_signals,
    _setup_mounts,
    exit_code,
    private_table,
    run_init,
    start_time,
)

_TINI = ("tini-static", "tini", "docker-init")


def find_init() -> str | None:
    """The tini binary the inits exec, ``CNMKIT_INIT`` first; None when there is none."""
    wanted = os.environ.get("CNMKIT_INIT")
    if wanted:
        return wanted if os.access(wanted, os.X_OK) else None
    for name in _TINI:
        found = shutil.which(name, path="/usr/bin:/usr/sbin:/bin:/sbin:/usr/local/bin")
        if found:
            return found
    return None


@dataclass(frozen=True)
class Launch:
    """One container for the supervisor to start: its init spec and where its output goes."""

    cid: str
    spec: InitSpec
    log_path: str | None          # None: inherit the caller's stdio (a foreground ``cnmkit run``)


@dataclass
class Started:
    """What the supervisor reports for one launch: pids, or the one-line reason it failed."""

    cid: str
    init_pid: int = 0
    init_start: int = 0
    pid: int = 0
    error: str = ""


@dataclass(frozen=True)
class Supervisor:
    """Handle on the supervisor process, which is the caller's child."""

    pid: int
    start: int

    def wait(self) -> int:
        """Wait for the supervisor of a foreground run (our child; it exits with its only
        container's code)."""
        _, status = os.waitpid(self.pid, 0)
        return exit_code(status)


@dataclass(frozen=True)
class ExitHook:
    """``on_exit`` by name: ``module.factory(*args)`` builds the real callback on the first exit.

    Picklable and light, so a supervisor in a fresh interpreter (``spawn``, ``FRESH_FROM``) gets
    it without importing the runtime's heavy modules before it has forked its inits.
    """

    module: str
    factory: str
    args: tuple[str, ...]

    def __call__(self, cid: str, code: int) -> None:
        built = _HOOKS.get(self)
        if built is None:
            built = _HOOKS[self] = getattr(importlib.import_module(self.module), self.factory)(*self.args)
        built(cid, code)


_HOOKS: dict[ExitHook, Callable[[str, int], None]] = {}
# From this many containers on, a detached batch's supervisor is a fresh interpreter (~30 ms, once)
# instead of a fork of the caller: every fork of a 40 MB lab deployer, and every init's exec
# out of it, costs ~1.5 ms more than out of a 14 MB interpreter that imported only this module.
FRESH_FROM = 24
_BOOT = ("import os, sys; sys.path[:0] = sys.argv[3].split(os.pathsep); "
         "from runtime import supervisor; supervisor.fresh_main(int(sys.argv[1]), int(sys.argv[2]))")


def spawn(launches: Sequence[Launch], on_exit: Callable[[str, int], None], *,
          supervisor_log: str | None) -> tuple[Supervisor, list[Started]]:
    """Fork the supervisor, which starts every launch; return once each has reported.

    ``on_exit(cid, code)`` runs in the supervisor after a container's init has been reaped (an
    ``ExitHook`` when the supervisor may be a fresh interpreter). ``supervisor_log`` is where the
    supervisor's own stdio goes (None: keep the caller's, for a foreground run whose caller waits
    for it anyway). Fork with no other thread of ours running.
    """
    r, w = os.pipe()
    detached = supervisor_log is not None
    fresh = _fresh_args(launches, on_exit, supervisor_log, w) if detached and len(launches) >= FRESH_FROM and \
        isinstance(on_exit, ExitHook) else None
    pid = os.fork()
    if pid == 0:                                      # pragma: no cover - runs in the child
        code = 70
        try:
            os.close(r)
            # Detached, the supervisor is a grandchild whose parent exits at once: it is adopted by
            # init (or the nearest subreaper), so a long-lived caller (a lab deployer) collects no
            # zombie supervisors. A foreground run keeps it as its child to wait for its code.
            if not detached or os.fork() == 0:
                if fresh is not None:
                    with contextlib.suppress(OSError):         # no interpreter to exec: supervise here
                        os.execv(fresh[0], fresh)
                code = _supervise(launches, w, on_exit, supervisor_log)
            else:
                code = 0
        finally:
            os._exit(code)
    if fresh is not None:
        os.close(int(fresh[-3]))
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    if detached:
        os.waitpid(pid, 0)
    reports = {}
    for raw in data.splitlines():
        item = json.loads(raw)
        reports[item.pop("cid")] = item
    sup_pid = int(reports.pop("", {}).get("init_pid", 0)) or pid
    out = [Started(launch.cid, **reports[launch.cid]) if launch.cid in reports else
           Started(launch.cid, error="the container's supervisor exited before starting it") for launch in launches]
    return Supervisor(sup_pid, start_time(sup_pid) or 0), out


def _fresh_args(launches: Sequence[Launch], on_exit: Callable[[str, int], None], supervisor_log: str | None,
                report_w: int) -> list[str]:
    """The argv of a fresh supervisor: what it needs is pickled into a memfd it inherits (a pipe
    would fill up before the exec that empties it), with ``report_w`` kept open across the exec."""
    data = os.memfd_create("cnmkit-launches", 0)
    os.write(data, pickle.dumps((list(launches), on_exit, supervisor_log)))
    os.lseek(data, 0, os.SEEK_SET)
    os.set_inheritable(report_w, True)
    return [sys.executable, "-I", "-S", "-c", _BOOT, str(data), str(report_w), os.pathsep.join(boot_path())]


def boot_path() -> list[str]:
    """sys.path for a fresh supervisor: the caller's, behind the directory this package is in.

    ``-S`` skips site, so an editable install's import hook (a .pth file) is not there to find
    the project: the directory holding ``runtime/`` is named first instead."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [root, *(p for p in sys.path if p != root)]


def fresh_main(data: int, report_w: int) -> None:                  # pragma: no cover - a fresh process
    """Entry point of a fresh supervisor (``_BOOT``): read the batch, supervise it, exit."""
    with os.fdopen(data, "rb") as fh:
        launches, on_exit, supervisor_log = pickle.load(fh)
    os.set_inheritable(report_w, False)
    os._exit(_supervise(launches, report_w, on_exit, supervisor_log))


# -- inside the supervisor --------------------------------------------------------------------

def _close_inherited(keep: Sequence[int]) -> None:
    """Drop every fd the caller had (its state lock above all: a copy kept here would hold the
    ``flock`` for as long as the supervisor lives)."""
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _open_stdio(log_path: str | None) -> tuple[int, int] | None:
    """stdin and stdout/stderr for a detached process, opened now (a rootfs pivot hides the paths)."""
    if log_path is None:
        return None
    return (os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC),
            os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600))


def _redirect(fds: tuple[int, int] | None) -> None:
    if fds is None:
        return
    os.dup2(fds[0], 0)
    os.dup2(fds[1], 1)
    os.dup2(fds[1], 2)
    os.close(fds[0])
    os.close(fds[1])


def _supervise(launches: Sequence[Launch], report_w: int, on_exit: Callable[[str, int], None],
               supervisor_log: str | None) -> int:
    # Objects inherited from the caller are never collected here: their finalizers would close
    # fd numbers that this process has since reused.
    gc.freeze()
    os.setsid()                                       # the caller's Ctrl-C is not ours
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)     # the caller may have been deferring it
    _close_inherited((report_w,))
    _redirect(_open_stdio(supervisor_log))
    tini = find_init()
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    pending: list[tuple[Launch, int, int]] = []
    netns_fds = {launch.cid: _open_netns(launch.spec.netns) for launch in launches} if tini else {}
    home_mnt = _stage_mounts(launches) if tini else None
    try:
        for launch in launches:
            err_r, err_w = os.pipe()
            ns.unshare(ns.CLONE_NEWPID)                   # our next child is PID 1 of a fresh namespace
            try:
                child = os.fork()
            finally:
                if os.getpid() != 1:
                    ns.setns(own_pid_ns, ns.CLONE_NEWPID)  # and the one after gets its own again
            if child == 0:                                # pragma: no cover - the init, before exec
                os.close(err_r)
                _init_child(launch, err_w, report_w, tini, netns_fds.get(launch.cid, -1), home_mnt is not None)
            os.close(err_w)
            pending.append((launch, child, err_r))
    finally:
        if home_mnt is not None:
            ns.setns(home_mnt, ns.CLONE_NEWNS)            # back to the host's table, for the releases
            os.close(home_mnt)
            os.chdir("/")
        for fd in netns_fds.values():
            if fd >= 0:
                os.close(fd)
    # Every init sets itself up in parallel; collect their reports in order.
    children: dict[int, str] = {}
    reports: list[Started] = []
    for launch, child, err_r in pending:
        with os.fdopen(err_r, "rb") as fh:
            said = fh.read().decode(errors="replace").strip()
        if said and said != "ok":
            os.waitpid(child, 0)
            reports.append(Started(launch.cid, error=said.removeprefix("err ") or "container init failed"))
            continue
        children[child] = launch.cid
        reports.append(Started(launch.cid, init_pid=child, init_start=start_time(child) or 0))
    for item in reports:
        if item.init_pid:
            item.pid = _command_pid(item.init_pid)
    with os.fdopen(report_w, "w") as fh:
        fh.write(json.dumps(Started("", init_pid=os.getpid()).__dict__) + "\n")   # who supervises
        for item in reports:
            fh.write(json.dumps(item.__dict__) + "\n")
    last = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        cid = children.pop(pid, None)
        if cid is None:
            continue
        last = exit_code(status)
        try:
            on_exit(cid, last)
        except Exception as exc:
            print(f"cnmkit-supervisor: cleanup after {cid[:12]} exited failed: {exc}", file=sys.stderr, flush=True)
    return last


def _open_netns(path: str) -> int:
    """The sandbox netns as an fd, opened while its bind mount is still visible; -1 if it cannot be
    (the init then reports the path's error itself)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def _stage_mounts(launches: Sequence[Launch]) -> int | None:
    """Move this supervisor, for the time it forks the inits, into a private copy of the mount
    table with the sandbox netns directories detached; return the fd of the host's table to go
    back to (None when staging failed: each init then trims its own copy, as before).

    Why: every init's ``unshare(CLONE_NEWNS)`` copies its parent's whole mount table, and that
    table holds one netns bind mount per running sandbox, which each init then had to make
    private and detach again: O(n) per node, O(n²) per lab. Trimmed once here, each init copies
    a table that does not grow with the lab. The supervisor goes back to the host's table before
    it waits, since releasing a container that ended unmounts its netns there.
    """
    home = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        ns.unshare(ns.CLONE_NEWNS)
    except OSError:
        os.close(home)
        return None
    try:
        private_table(p for launch in launches for p in launch.spec.hide_mounts)
    except OSError:
        ns.setns(home, ns.CLONE_NEWNS)              # each init trims its own copy, as before
        os.close(home)
        return None
    return home


def _command_pid(init_pid: int) -> int:
    """The command tini forked (PID 2 inside); tini forks it right after its exec, so this waits
    at most the few milliseconds that takes, and reports 0 if the init is already gone."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{init_pid}/task/{init_pid}/children") as fh:
                kids = fh.read().split()
        except OSError:
            return 0
        if kids:
            return int(kids[0])
        if start_time(init_pid) is None:          # the init has ended (a zombie until we reap it)
            return 0
        time.sleep(0.0005)
    return 0


def _init_child(launch: Launch, err_w: int, report_w: int, tini: str | None, netns_fd: int = -1,
                staged: bool = False) -> None:
    """PID 1 of the new PID namespace, until it execs tini. Never returns.

    Writes ``err MESSAGE`` on ``err_w`` on failure; a successful exec closes it (CLOEXEC) with
    nothing written. ``staged``: the mount table it copies is already private and trimmed.

    Every fd this process has is close-on-exec (the caller's were closed when the supervisor
    started; what the supervisor opened since is CLOEXEC), so the exec leaves tini 0-2 alone
    without closing hundreds of fds one by one here (the other inits' pipes and netns fds: O(n)
    per node). Without tini this process stays PID 1 and closes them itself.
    """
    try:
        os.close(report_w)
        spec = launch.spec
        tini_fd = os.open(tini, os.O_RDONLY | os.O_CLOEXEC) if tini else -1
        stdio = _open_stdio(launch.log_path)
        if tini_fd < 0:
            _close_inherited((err_w, *(stdio or ())))
            _redirect(stdio)
            run_init(spec, err_w)                     # stays PID 1 itself (no tini here)
        if netns_fd >= 0:
            ns.setns(netns_fd, ns.CLONE_NEWNET)       # its path is hidden in the staged table
            os.close(netns_fd)
        else:
            ns.setns_path(spec.netns, ns.CLONE_NEWNET)
        ns.unshare(ns.CLONE_NEWNS | ns.CLONE_NEWUTS)
        ns.sethostname(spec.hostname)
        _setup_mounts(spec, staged)
        _redirect(stdio)
        _default_signals()
        os.chdir("/")
        os.execve(tini_fd, [INIT_ARGV0 + launch.cid, "--", *spec.command], spec.env)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(err_w, f"err {exc}".encode())
    os._exit(126)
