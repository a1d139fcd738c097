"""``cnmkit lab deploy/inspect/exec/graph/destroy/ls``: thin over lab/ (parse, call, print).

Every failure is one line on stderr and exit 1: a bad file names its line and field
(lab/spec.py), a failed step names the step (lab/deploy.py). Warnings about ignored
containerlab fields go to stderr once each. Everything printed passes ``safe``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from cli.guard import guarded
from cli.output import emit_json, fail, line, safe, table, warn

if TYPE_CHECKING:
    from lab.deploy import LabService
    from lab.spec import Lab
    from runtime.containers import ContainerService

FEW_NODES = 3                                   # a bar for labs of more nodes than this, on a terminal


class Progress:
    """One rewritten line with a bar on a terminal when the lab has more than a few nodes; plain
    lines (no escapes) otherwise, one per step."""

    def __init__(self, stream: TextIO, nodes: int) -> None:
        self.stream = stream
        self.bar = stream.isatty() and nodes > FEW_NODES

    def __call__(self, done: int, total: int, text: str) -> None:
        if self.bar:
            width = 24
            filled = width * done // max(total, 1)
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r\033[K[{bar}] {done}/{total} {safe(text)[:60]}")
            if text == "done":
                self.stream.write("\n")
            self.stream.flush()
        elif text != "done":
            self.stream.write(safe(text) + "\n")
            self.stream.flush()


def _labs(svc: ContainerService) -> LabService:
    from lab.deploy import LabService

    return LabService(svc)


def _lab_errors() -> tuple[type[Exception], ...]:
    """What a lab verb foresees beyond the runtime's errors (cli/guard.py): a bad file, a failed
    step, the graph, the kernel, an unreadable path."""
    from drivers.errors import KernelError
    from lab.deploy import LabError
    from lab.graph import GraphError
    from lab.spec import SpecError

    return LabError, SpecError, GraphError, KernelError, ValueError, OSError


def register(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="deploy, inspect, draw and destroy lab topologies (containerlab files)")
    verbs = lab.add_subparsers(dest="verb", metavar="VERB", required=True)

    def add(name: str, help_: str, fn: Callable[[argparse.Namespace, LabService], int | None]
            ) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help_)
        p.set_defaults(func=guarded(fn, _labs, _lab_errors), needs_engine=False)
        return p

    deploy = add("deploy", "bring a lab up, or converge a running one to the file", cmd_deploy)
    deploy.add_argument("file")
    deploy.add_argument("--dry-run", action="store_true", help="only print the plan")

    inspect = add("inspect", "nodes, interfaces, addresses and state", cmd_inspect)
    _file_or_name(inspect)

    ex = add("exec", "run a command in a lab node", cmd_exec)
    ex.add_argument("file")
    ex.add_argument("node")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")

    graph = add("graph", "draw the lab with Graphviz (.svg, .png) or write its DOT (.dot)", cmd_graph)
    graph.add_argument("file")
    graph.add_argument("-o", "--output", required=True, metavar="OUT")

    destroy = add("destroy", "remove everything the lab made", cmd_destroy)
    _file_or_name(destroy)

    add("ls", "list deployed labs", cmd_ls)


def _file_or_name(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?")
    p.add_argument("--name", help="the lab's name (when its file is gone or changed)")


def _load(path: str) -> Lab:
    from lab.spec import load_file

    lab = load_file(path)
    for message in (*lab.warnings, *lab.notices):
        warn(message)
    return lab


def _lab_name(args: argparse.Namespace) -> str:
    if bool(args.file) == bool(args.name):
        fail("give the lab's FILE or --name NAME (one of them)")
    if args.name:
        return str(args.name)
    from lab.spec import load_file

    return load_file(args.file).name


def cmd_deploy(args: argparse.Namespace, labs: LabService) -> None:
    lab = _load(args.file)
    if args.dry_run:
        actions = labs.plan(lab)
        for action in actions:
            line("would", action.describe())
        if not actions:
            line(f"nothing to do: lab {lab.name} matches {args.file}")
        return
    actions = labs.deploy(lab, Progress(sys.stdout, len(lab.nodes)))
    nodes = sum(1 for a in actions if a.verb == "create" and a.kind == "node")
    if actions:
        line(f"lab {lab.name}: {len(actions)} steps done, {nodes} node(s) started")
    else:
        line(f"nothing to do: lab {lab.name} matches {args.file}")


def _ifaces(node: dict[str, Any]) -> str:
    parts = []
    for iface in node["Interfaces"]:
        addrs = [a for a in iface["addresses"] if not a.startswith("fe80:")]
        parts.append(f"{iface['name']}={','.join(addrs) or '-'}")
    return " ".join(parts)


def cmd_inspect(args: argparse.Namespace, labs: LabService) -> None:
    data = labs.inspect(_lab_name(args))
    if args.format == "json":
        emit_json(data)
        return
    sys.stdout.write(table(["NODE", "KIND", "STATUS", "PID", "INTERFACES"],
                           [(n["Name"], n["Kind"], n["Status"], n["Pid"] or "", _ifaces(n)) for n in data["Nodes"]]))
    if data["Networks"]:
        sys.stdout.write("\n" + table(["NETWORK", "DRIVER", "SUBNETS", ""], [
            (n["Name"], n["Driver"], ",".join(n["Subnets"]) or "-", "management" if n["Management"] else "")
            for n in data["Networks"]]))
    if data["Links"]:
        sys.stdout.write("\n" + table(["LINK", "MTU", "ADDRESSES"], [
            (lk["Name"], lk["MTU"] or "", " ".join(f"{e['Node']}:{e['Interface']}={','.join(e['Addresses']) or '-'}"
                                                   for e in lk["Endpoints"])) for lk in data["Links"]]))


def cmd_exec(args: argparse.Namespace, labs: LabService) -> int:
    from lab.spec import load_file

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        fail("lab exec: no command given (use: cnmkit lab exec FILE NODE -- CMD [ARG...])")
    cid = labs.node_id(load_file(args.file).name, args.node)
    return labs.svc.exec(cid, command)


def cmd_graph(args: argparse.Namespace, labs: LabService) -> None:
    from lab import graph

    lab = _load(args.file)
    live = labs.inspect(lab.name) if lab.name in labs.store.names() else None
    graph.render(graph.to_dot(lab, live), args.output)
    line(args.output)


def cmd_destroy(args: argparse.Namespace, labs: LabService) -> None:
    name = _lab_name(args)
    nodes = sum(1 for e in labs.record(name)["items"].values() if e["kind"] in ("node", "bridge"))
    steps = labs.destroy(name, Progress(sys.stdout, nodes))
    line(f"lab {name} destroyed ({steps} steps)")


def cmd_ls(args: argparse.Namespace, labs: LabService) -> None:
    rows = labs.ls()
    if args.format == "json":
        emit_json(rows)
        return
    sys.stdout.write(table(["NAME", "NODES", "RUNNING", "NETWORKS", "LINKS", "FILE"],
                           [(r["Name"], r["Nodes"], r["Running"], r["Networks"], r["Links"], r["File"]) for r in rows]))
