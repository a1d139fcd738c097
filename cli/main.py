"""``cnmkit``: one entry point for the daemon, networks, containers and labs."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Sequence

from cli import doctor, network
from cli.guard import one_line_errors
from cli.output import emit_json, fail, line, table
from client.engine import Engine
from client.transport import DaemonUnavailable, PluginError

DEFAULT_PLUGIN_DIR = os.environ.get("CNMKIT_PLUGIN_DIR", "/run/docker/plugins")
DEFAULT_STATE_DIR = os.environ.get("CNMKIT_STATE_DIR", "/var/lib/cnmkit")


# Which global options each command uses. Every parser accepts them before the subcommand (the
# top-level parser holds the defaults); after it, each subcommand accepts the ones that apply to it.
ALL_GLOBALS = ("plugin_dir", "state_dir", "store", "run_dir", "format", "log_level")
_ENGINE = ("plugin_dir", "log_level")
_CONTAINER = ("plugin_dir", "state_dir", "run_dir", "log_level")
GLOBALS_FOR: dict[str, tuple[str, ...]] = {
    "daemon": ("plugin_dir", "state_dir", "store", "log_level"),
    "doctor": (*_ENGINE, "format"),                  # --plugin-dir: accepted everywhere, unused here
    "cleanup": _ENGINE,
    "host": (*_ENGINE, "format"),
    "host ls": (*_ENGINE, "format"),
    "network": ALL_GLOBALS,
    "network create": _ENGINE,
    "network ls": (*_ENGINE, "format"),
    "network inspect": _ENGINE,
    "network rm": _ENGINE,
    "network connect": _CONTAINER,
    "network disconnect": _CONTAINER,
    "run": (*_CONTAINER, "store"),                     # --store: for --start-daemon
    "ps": (*_CONTAINER, "format"),
    "stats": (*_CONTAINER, "format"),
    "lab": (*_CONTAINER, "format"),
    "lab deploy": _CONTAINER,
    "lab inspect": (*_CONTAINER, "format"),
    "lab exec": _CONTAINER,
    "lab graph": _CONTAINER,
    "lab destroy": _CONTAINER,
    "lab ls": (*_CONTAINER, "format"),
}


def add_global_options(parser: argparse.ArgumentParser, only: Sequence[str] = ALL_GLOBALS, *,
                       top: bool = False) -> None:
    """Add the global options to ``parser``.

    On a subcommand's parser the default is ``argparse.SUPPRESS``: argparse copies every attribute
    of the subparser's namespace over the parent's, so a real default there would overwrite the
    value given before the subcommand (``cnmkit --format json network ls`` would print a table).
    With SUPPRESS the attribute is only set when the option is given after the subcommand, and
    the top-level parser's defaults apply otherwise. The help text states the real default.
    """
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("global options (also accepted before the command)") if not top else parser
    if "plugin_dir" in only:
        group.add_argument("--plugin-dir", default=default(DEFAULT_PLUGIN_DIR),
                           help=f"where the plugin sockets live (default {DEFAULT_PLUGIN_DIR})")
    if "state_dir" in only:
        group.add_argument("--state-dir", default=default(DEFAULT_STATE_DIR),
                           help=f"state: store, containers (default {DEFAULT_STATE_DIR})")
    if "store" in only:
        group.add_argument("--store", default=default(os.environ.get("CNMKIT_STORE", "")),
                           help="store URL (default sqlite:///<state-dir>/state.db)")
    if "run_dir" in only:
        group.add_argument("--run-dir", default=default(os.environ.get("CNMKIT_RUN_DIR") or None),
                           help="where container network namespaces are pinned (default /run/cnmkit)")
    if "format" in only:
        group.add_argument("--format", choices=["table", "json"], default=default("table"),
                           help="output format (default table)")
    if "log_level" in only:
        group.add_argument("--log-level", default=default("info"), choices=["debug", "info", "warning", "error"],
                           help="log level (default info)")


def _add_globals_everywhere(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Give every (sub)command's parser the global options that apply to it, recursively."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{path} {name}".strip()
                add_global_options(sub, GLOBALS_FOR.get(full, _CONTAINER if path == "" else _ENGINE))
                _add_globals_everywhere(sub, full)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnmkit", description="Container networking: Docker CNM plugins, "
                                     "IPAM, an embedded runtime and labs.")
    add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    daemon = sub.add_parser("daemon", help="serve the plugin sockets (foreground)")
    daemon.add_argument("--driver", action="append", dest="drivers",
                        help="drivers to serve (default: bridge, vlan and vxlan)")
    daemon.add_argument("--vlan-range", type=_vid_range, default=None, metavar="A-B",
                        help="VIDs the vlan driver picks from when a network names none (default 2-4094)")
    daemon.add_argument("--sandbox-dir", action="append", dest="sandbox_dirs", metavar="DIR",
                        help="a directory whose files a direct Join may open as network namespaces; repeat "
                             "(default: /var/run/docker/netns, /run/docker/netns and $CNMKIT_RUN_DIR/netns "
                             "or /run/cnmkit/netns)")
    daemon.add_argument("--no-cleanup", action="store_true",
                        help="reconcile without removing marked kernel objects that no record explains")
    daemon.add_argument("--reconcile-interval", type=_seconds, default=60.0, metavar="SECONDS",
                        help="make the kernel match the store every SECONDS (default 60; 0: only at start)")
    daemon.add_argument("--host-id", default="", metavar="NAME",
                        help="this host's id in the shared store (default: /etc/machine-id, else the hostname)")
    daemon.add_argument("--advertise", default="", metavar="ADDR",
                        help="the address other hosts reach this one at (default: the address of the "
                             "default route's device)")
    daemon.add_argument("--host-ttl", type=_ttl, default=10, metavar="SECONDS",
                        help="lease on this host's record: a dead host is gone for the others after "
                             "about this long (default 10)")
    daemon.add_argument("--host-grace", type=_seconds, default=600.0, metavar="SECONDS",
                        help="how long a gone host keeps its addresses before another reclaims them "
                             "(default 600)")
    daemon.add_argument("--docker-socket", default="/var/run/docker.sock", metavar="PATH",
                        help="dockerd's API, asked for the names of its containers on overlays after their "
                             "Join, so other hosts resolve them (default /var/run/docker.sock; '' turns it off)")
    daemon.add_argument("--no-overlay-dns", action="store_true",
                        help="do not answer DNS at each overlay's gateway address (names of the overlay's "
                             "containers on every host, for `docker run --dns <gateway>`)")
    daemon.set_defaults(func=cmd_daemon, needs_engine=False)

    host = sub.add_parser("host", help="hosts sharing the store")
    host_verbs = host.add_subparsers(dest="verb", metavar="VERB", required=True)
    host_ls = host_verbs.add_parser("ls", help="list the live hosts (each holds a lease on its record)")
    host_ls.set_defaults(func=cmd_host_ls)

    reconcile = sub.add_parser("reconcile", help="make the kernel match the store now (what the daemon "
                               "does at start): re-make missing bridges, links, rules; remove marked orphans")
    reconcile.add_argument("--dry-run", action="store_true", help="only say what would be done")
    reconcile.add_argument("--no-cleanup", action="store_true", help="do not remove marked orphans")
    reconcile.set_defaults(func=cmd_reconcile)

    cleanup = sub.add_parser("cleanup", help="remove kernel objects of cnmkit's that no record explains")
    cleanup.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    cleanup.set_defaults(func=cmd_cleanup)

    doctor.register(sub)
    network_verbs = network.register(sub)
    try:
        from cli import containers
    except ImportError:                         # the runtime is optional for an engine-only install
        containers = None  # type: ignore[assignment]
    if containers is not None:
        containers.register(sub)
        containers.register_network_verbs(network_verbs)
        from cli import lab

        lab.register(sub)
    _add_globals_everywhere(parser)
    return parser


def cmd_daemon(args: argparse.Namespace) -> None:
    from plugin.server import DaemonConfig, default_sandbox_dirs, run_daemon

    config = DaemonConfig(plugin_dir=args.plugin_dir, state_dir=args.state_dir, store_url=args.store,
                          drivers=args.drivers or ["bridge", "vlan", "vxlan"], vlan_range=args.vlan_range,
                          sandbox_dirs=args.sandbox_dirs or default_sandbox_dirs(),
                          cleanup=not args.no_cleanup, reconcile_interval=args.reconcile_interval,
                          host_id=args.host_id, advertise=args.advertise, host_ttl=args.host_ttl,
                          host_grace=args.host_grace, docker_socket=args.docker_socket,
                          overlay_dns=not args.no_overlay_dns)
    try:
        from agent.hosts import check_advertise, check_host_id

        if args.host_id:
            check_host_id(args.host_id)
        if args.advertise:
            check_advertise(args.advertise)
        run_daemon(config)
    except (RuntimeError, ValueError, OSError) as exc:
        fail(str(exc))


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 86400 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 0..86400 seconds")
    return value


def _vid_range(text: str) -> tuple[int, int]:
    from drivers.errors import InvalidOption
    from drivers.vlan import parse_vid_range

    try:
        return parse_vid_range("--vlan-range", text)
    except InvalidOption as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ttl(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds in 1..3600")
    return int(text)


def cmd_host_ls(args: argparse.Namespace, engine: Engine) -> None:
    hosts = engine.list_hosts()
    if args.format == "json":
        emit_json(hosts)
        return
    sys.stdout.write(table(["HOST ID", "ADVERTISE", "STARTED", ""],
          [[h.get("HostID", ""), h.get("Advertise", "") or "-",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(h.get("Started", 0)))),
            "(this daemon)" if h.get("Self") else ""] for h in hosts]))


def cmd_reconcile(args: argparse.Namespace, engine: Engine) -> None:
    actions = engine.reconcile(dry_run=args.dry_run, cleanup=not args.no_cleanup)
    prefix = "would " if args.dry_run else ""
    for action in actions:
        print(action if action.startswith("error:") else f"{prefix}{action}")
    if not actions:
        print("nothing to do: the kernel matches the store")
    if any(action.startswith("error:") for action in actions):
        raise SystemExit(1)


def cmd_cleanup(args: argparse.Namespace, engine: Engine) -> None:
    actions = engine.cleanup(dry_run=args.dry_run)
    prefix = "would " if args.dry_run else ""
    for action in actions:
        line(f"{prefix}{action}")
    if not actions:
        line("nothing to clean up: every marked kernel object is on record")


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "needs_engine", True):
        args.func(args)
        return
    engine = Engine(args.plugin_dir)
    with contextlib.closing(engine), one_line_errors(DaemonUnavailable, PluginError):
        args.func(args, engine)


if __name__ == "__main__":
    main()
