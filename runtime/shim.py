"""``python -m runtime.shim``: the supervisor that outlives the CLI for one container run.

Why a separate process: the exit code of a detached container has to be recorded by someone
who is its parent (only a parent can wait for it), and the network must be released when the
command ends on its own, whether or not any CLI is around. The shim stays in the host's mount
namespace so that it can unmount the sandbox netns, forks the container's init into fresh PID,
UTS and mount namespaces, and reports to the CLI over an inherited pipe::

    ok <command pid> <init pid> <init start time>     or     err <one line>

After an ``err`` the CLI owns the rollback; after ``ok`` the shim owns the record's end.
"""

from __future__ import annotations

import argparse
import os
import sys

from runtime import ns
from runtime.process import InitSpec, exit_code, forward_signals, run_init, start_time
from runtime.state import StateStore


def _command_pid(init_pid: int) -> int:
    try:
        with open(f"/proc/{init_pid}/task/{init_pid}/children") as fh:
            kids = fh.read().split()
        return int(kids[0]) if kids else 0
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnmkit-shim")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    args = parser.parse_args(argv)
    store = StateStore(args.state_dir)
    config = store.load_config(args.id)
    state = store.load_state(args.id)
    spec = InitSpec(
        command=config.command,
        env=config.env,
        hostname=config.hostname,
        netns=state.netns,
        rootfs=config.rootfs,
        etc_files={"/etc/hosts": store.path(args.id, "hosts"),
                   "/etc/resolv.conf": store.path(args.id, "resolv.conf"),
                   "/etc/hostname": store.path(args.id, "hostname")},
        hide_mounts=(os.path.join(config.run_dir, "netns"), "/run/netns", "/var/run/netns"),
    )
    ready = args.ready_fd
    report_r, report_w = os.pipe()
    ns.unshare(ns.CLONE_NEWPID)                      # applies to our next child: it becomes PID 1
    init = os.fork()
    if init == 0:
        os.close(report_r)
        os.close(ready)
        run_init(spec, report_w)
    os.close(report_w)
    forward_signals(init)
    with os.fdopen(report_r) as fh:
        report = fh.readline().strip()
    if report != "ok":
        os.write(ready, ((report or "err container init failed") + "\n").encode())
        os.close(ready)
        os.waitpid(init, 0)
        return 127
    os.write(ready, f"ok {_command_pid(init)} {init} {start_time(init) or 0}\n".encode())
    os.close(ready)
    # Load the exit path now, while the command runs and nobody waits on us, rather than after it
    # ends, when a `stop` or `rm` is waiting for the network to be released.
    from runtime.containers import ContainerService

    _, status = os.waitpid(init, 0)
    code = exit_code(status)
    try:
        ContainerService(args.state_dir, config.plugin_dir, config.run_dir).on_shim_exit(args.id, code)
    except Exception as exc:
        print(f"cnmkit-shim: cleanup after exit failed: {exc}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
