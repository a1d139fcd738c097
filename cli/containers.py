"""``cnmkit run/exec/ps/logs/stop/start/restart/rm/inspect/stats`` and ``network connect/disconnect``.

Thin: parse, call ``runtime.containers.ContainerService``, print. Every failure the service can
foresee is a ``ContainerError`` whose message is the single line the user sees; the daemon being
absent is ``DaemonUnavailable`` (one line, never a hang) unless ``--start-daemon`` is given.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cli.guard import guarded
from cli.output import emit_json, line, table, warn
from client.engine import ensure_daemon

if TYPE_CHECKING:
    from runtime.containers import ContainerService


def _itself(svc: ContainerService) -> ContainerService:
    return svc


def _command(values: list[str]) -> list[str]:
    return values[1:] if values[:1] == ["--"] else values


def _add(sub: argparse._SubParsersAction, name: str, help_: str,
         fn: Callable[[argparse.Namespace, ContainerService], int | None]) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_)         # --run-dir and the other global options: cli/main.py
    p.set_defaults(func=guarded(fn, _itself), needs_engine=False)
    return p


def register(sub: argparse._SubParsersAction) -> None:
    run = _add(sub, "run", "run a command in a new container", cmd_run)
    run.add_argument("-d", "--detach", action="store_true", help="run in the background; output to the log")
    run.add_argument("--name")
    run.add_argument("--network", action="append", default=[], metavar="NET[,ip=ADDR][,alias=NAME]",
                     help="repeat for eth1, eth2, ...")
    run.add_argument("--hostname")
    run.add_argument("--rootfs", help="directory to confine the container to (default: the host's files)")
    run.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--start-daemon", action="store_true", help="start `cnmkit daemon` if none answers")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")

    ex = _add(sub, "exec", "run a command inside a running container", cmd_exec)
    ex.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    ex.add_argument("container")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")

    ps = _add(sub, "ps", "list containers", cmd_ps)
    ps.add_argument("-a", "--all", action="store_true", help="include stopped containers")
    ps.add_argument("-q", "--quiet", action="store_true", help="ids only")

    logs = _add(sub, "logs", "print a detached container's output", cmd_logs)
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("container")

    stop = _add(sub, "stop", "stop containers (SIGTERM, then SIGKILL)", cmd_stop)
    stop.add_argument("-t", "--time", type=float, default=10.0, help="seconds before SIGKILL")
    stop.add_argument("containers", nargs="+")

    start = _add(sub, "start", "start stopped containers", cmd_start)
    start.add_argument("containers", nargs="+")

    restart = _add(sub, "restart", "stop and start containers", cmd_restart)
    restart.add_argument("-t", "--time", type=float, default=10.0)
    restart.add_argument("containers", nargs="+")

    rm = _add(sub, "rm", "remove containers and everything they hold", cmd_rm)
    rm.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    rm.add_argument("containers", nargs="+")

    inspect = _add(sub, "inspect", "show containers as JSON", cmd_inspect)
    inspect.add_argument("containers", nargs="+")

    stats = _add(sub, "stats", "interface counters, CPU and memory", cmd_stats)
    stats.add_argument("container", nargs="?")


def register_network_verbs(verbs: argparse._SubParsersAction) -> None:
    connect = _add(verbs, "connect", "connect a running container to a network", cmd_connect)
    connect.add_argument("--ip")
    connect.add_argument("--alias", action="append", default=[])
    connect.add_argument("network")
    connect.add_argument("container")
    disconnect = _add(verbs, "disconnect", "disconnect a running container from a network", cmd_disconnect)
    disconnect.add_argument("network")
    disconnect.add_argument("container")


# -- handlers ---------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace, svc: ContainerService) -> int:
    if args.start_daemon:
        from plugin.server import ENGINE_NETNS_DIRS

        ensure_daemon(args.plugin_dir, args.state_dir,
                      args.store or f"sqlite:///{os.path.abspath(args.state_dir)}/state.db",
                      sandbox_dirs=(*ENGINE_NETNS_DIRS, os.path.join(svc.run_dir, "netns")))
    from runtime import process

    pending = [] if args.detach else process.defer_signals()
    try:
        cid, sup = svc.run(_command(args.cmd), name=args.name, networks=args.network, hostname=args.hostname,
                            rootfs=args.rootfs, env=args.env, detach=args.detach)
    except BaseException:
        if not args.detach:
            process.restore_signals()
        raise
    if args.detach:
        line(cid)
        return 0
    return svc.wait_foreground(cid, sup, pending)


def cmd_exec(args: argparse.Namespace, svc: ContainerService) -> int:
    return svc.exec(args.container, _command(args.cmd), args.env)


def _status(row: dict[str, Any]) -> str:
    if row["Status"] == "exited":
        code = row["ExitCode"]
        return f"exited ({'unknown' if code is None or code < 0 else code})"
    return str(row["Status"])


def cmd_ps(args: argparse.Namespace, svc: ContainerService) -> None:
    rows = svc.ps(all_=args.all)
    if args.format == "json":
        emit_json(rows)
    elif args.quiet:
        for r in rows:
            line(r["Id"][:12])
    else:
        sys.stdout.write(table(["ID", "NAME", "STATUS", "PID", "NETWORKS", "COMMAND"], [
            (r["Id"][:12], r["Name"], _status(r), r["Pid"] if r["Status"] == "running" else "",
             ",".join(f"{n}={a}" for n, a in r["Networks"].items()), " ".join(r["Command"])) for r in rows]))


def cmd_logs(args: argparse.Namespace, svc: ContainerService) -> None:
    out = sys.stdout.buffer
    for chunk in svc.logs(args.container, follow=args.follow):
        out.write(chunk)
        out.flush()


def _each(refs: list[str], fn: Callable[[str], str]) -> int:
    """Apply to every container, report each failure on its own line, exit 1 if any failed."""
    from runtime.containers import ContainerError

    failed = 0
    for ref in refs:
        try:
            fn(ref)
            line(ref)
        except ContainerError as exc:
            warn(str(exc))
            failed = 1
    return failed


def cmd_stop(args: argparse.Namespace, svc: ContainerService) -> int:
    return _each(args.containers, lambda r: svc.stop(r, args.time))


def cmd_start(args: argparse.Namespace, svc: ContainerService) -> int:
    return _each(args.containers, svc.start)


def cmd_restart(args: argparse.Namespace, svc: ContainerService) -> int:
    return _each(args.containers, lambda r: svc.restart(r, args.time))


def cmd_rm(args: argparse.Namespace, svc: ContainerService) -> int:
    return _each(args.containers, lambda r: svc.rm(r, force=args.force))


def cmd_inspect(args: argparse.Namespace, svc: ContainerService) -> None:
    emit_json([svc.inspect(ref) for ref in args.containers])


def cmd_stats(args: argparse.Namespace, svc: ContainerService) -> None:
    rows = svc.stats(args.container)
    if args.format == "json":
        emit_json(rows)
        return
    lines = []
    for r in rows:
        for ifname, s in sorted(r["Interfaces"].items()) or [("-", {})]:
            mem = f"{r['MemoryBytes'] / 1048576:.1f}MiB"
            lines.append((r["Name"], f"{r['CPUSeconds']:.2f}s", mem, r["Pids"], ifname,
                          s.get("rx_bytes", ""), s.get("rx_packets", ""), s.get("tx_bytes", ""),
                          s.get("tx_packets", "")))
    sys.stdout.write(table(["NAME", "CPU", "MEM", "PIDS", "IF", "RX BYTES", "RX PKTS", "TX BYTES", "TX PKTS"],
                           lines))


def cmd_connect(args: argparse.Namespace, svc: ContainerService) -> None:
    record = svc.connect(args.network, args.container, ip=args.ip, aliases=args.alias)
    line(record["ifname"], record["address"] or record["address_v6"])


def cmd_disconnect(args: argparse.Namespace, svc: ContainerService) -> None:
    svc.disconnect(args.network, args.container)


