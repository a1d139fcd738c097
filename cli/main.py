"""``cnmkit``: one entry point for the daemon, networks, containers and labs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from cli import network
from cli.output import fail
from client.engine import Engine
from client.transport import DaemonUnavailable, PluginError

DEFAULT_PLUGIN_DIR = os.environ.get("CNMKIT_PLUGIN_DIR", "/run/docker/plugins")
DEFAULT_STATE_DIR = os.environ.get("CNMKIT_STATE_DIR", "/var/lib/cnmkit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnmkit", description="Container networking: Docker CNM plugins, "
                                     "IPAM, an embedded runtime and labs.")
    parser.add_argument("--plugin-dir", default=DEFAULT_PLUGIN_DIR, help="where the plugin sockets live")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="state (store, containers)")
    parser.add_argument("--store", default=os.environ.get("CNMKIT_STORE", ""),
                        help="store URL (default sqlite:///<state-dir>/state.db)")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    daemon = sub.add_parser("daemon", help="serve the plugin sockets (foreground)")
    daemon.add_argument("--driver", action="append", dest="drivers", help="drivers to serve (default: bridge)")
    daemon.add_argument("--sandbox-dir", action="append", dest="sandbox_dirs", metavar="DIR",
                        help="a directory whose files a direct Join may open as network namespaces; repeat "
                             "(default: /var/run/docker/netns, /run/docker/netns and $CNMKIT_RUN_DIR/netns "
                             "or /run/cnmkit/netns)")
    daemon.add_argument("--no-cleanup", action="store_true",
                        help="reconcile without removing marked kernel objects that no record explains")
    daemon.add_argument("--reconcile-interval", type=_seconds, default=60.0, metavar="SECONDS",
                        help="make the kernel match the store every SECONDS (default 60; 0: only at start)")
    daemon.set_defaults(func=cmd_daemon, needs_engine=False)

    reconcile = sub.add_parser("reconcile", help="make the kernel match the store now (what the daemon "
                               "does at start): re-make missing bridges, links, rules; remove marked orphans")
    reconcile.add_argument("--dry-run", action="store_true", help="only say what would be done")
    reconcile.add_argument("--no-cleanup", action="store_true", help="do not remove marked orphans")
    reconcile.set_defaults(func=cmd_reconcile)

    cleanup = sub.add_parser("cleanup", help="remove kernel objects of cnmkit's that no record explains")
    cleanup.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    cleanup.set_defaults(func=cmd_cleanup)

    network_verbs = network.register(sub)
    try:
        from cli import containers
    except ImportError:                         # the runtime is optional for an engine-only install
        containers = None  # type: ignore[assignment]
    if containers is not None:
        containers.register(sub)
        containers.register_network_verbs(network_verbs)
    return parser


def cmd_daemon(args: argparse.Namespace) -> None:
    from plugin.server import DaemonConfig, default_sandbox_dirs, run_daemon

    config = DaemonConfig(plugin_dir=args.plugin_dir, state_dir=args.state_dir, store_url=args.store,
                          drivers=args.drivers or ["bridge"],
                          sandbox_dirs=args.sandbox_dirs or default_sandbox_dirs(),
                          cleanup=not args.no_cleanup, reconcile_interval=args.reconcile_interval)
    try:
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
        print(f"{prefix}{action}")
    if not actions:
        print("nothing to clean up: every marked kernel object is on record")


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "needs_engine", True):
        args.func(args)
        return
    engine = Engine(args.plugin_dir)
    try:
        args.func(args, engine)
    except (DaemonUnavailable, PluginError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    finally:
        engine.close()


if __name__ == "__main__":
    main()
