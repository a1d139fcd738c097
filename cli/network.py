"""``cnmkit network ...``: the operator's verbs, spoken to the daemon as an engine would."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cli.output import emit_json, fail, line, table
from client.docker_names import docker_network_names
from client.engine import Engine


def _kv_list(values: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def register(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    net = sub.add_parser("network", help="create, list, inspect and remove networks")
    verbs = net.add_subparsers(dest="verb", metavar="VERB", required=True)

    create = verbs.add_parser("create", help="create a network")
    create.add_argument("name")
    create.add_argument("-d", "--driver", default="bridge", help="bridge (default) or vlan")
    create.add_argument("--subnet", action="append", default=[], help="CIDR; repeat for IPv4 and IPv6")
    create.add_argument("--gateway", action="append", default=[])
    create.add_argument("--ip-range", action="append", default=[])
    create.add_argument("--aux-address", action="append", default=[], metavar="NAME=IP")
    create.add_argument("--ipv6", action="store_true")
    create.add_argument("--internal", action="store_true")
    create.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--ipam-opt", action="append", default=[], metavar="KEY=VALUE")
    create.set_defaults(func=cmd_create)

    ls = verbs.add_parser("ls", help="list networks")
    ls.add_argument("-q", "--quiet", action="store_true", help="ids only")
    ls.set_defaults(func=cmd_ls)

    inspect = verbs.add_parser("inspect", help="show one network as JSON")
    inspect.add_argument("name", nargs="+")
    inspect.set_defaults(func=cmd_inspect)

    rm = verbs.add_parser("rm", help="remove networks")
    rm.add_argument("name", nargs="+")
    rm.set_defaults(func=cmd_rm)
    return verbs


def cmd_create(args: argparse.Namespace, engine: Engine) -> None:
    options = _kv_list(args.opt, "opt")
    ipam_options = _kv_list(args.ipam_opt, "ipam-opt")    # a VLAN's own space: Engine.create_network
    network_id = engine.create_network(
        args.name, driver=args.driver, subnets=args.subnet, gateways=args.gateway, ip_ranges=args.ip_range,
        aux_addresses=_kv_list(args.aux_address, "aux-address"), ipv6=args.ipv6, internal=args.internal,
        options=options, ipam_options=ipam_options)
    line(network_id)


def _subnets(net: dict[str, Any]) -> str:
    return ",".join(d["Pool"] for d in (*net.get("IPv4", []), *net.get("IPv6", []))) or "-"


def _with_docker_names(nets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill in dockerd's names for networks it created (display only; see client/docker_names.py)."""
    if any(not n["Name"] for n in nets):
        names = docker_network_names()
        for n in nets:
            if not n["Name"] and n["Id"] in names:
                n["DockerName"] = names[n["Id"]]
    return nets


def _label(n: dict[str, Any]) -> str:
    return n["Name"] or (f"{n['DockerName']} (docker)" if n.get("DockerName") else "(docker)")


def cmd_ls(args: argparse.Namespace, engine: Engine) -> None:
    nets = sorted(_with_docker_names(engine.list_networks()), key=lambda n: (_label(n), n["Id"]))
    if args.format == "json":
        emit_json(nets)
    elif args.quiet:
        for n in nets:
            line(n["Id"][:12])
    else:
        rows = [(n["Id"][:12], _label(n), n["Driver"], _subnets(n),
                 "internal" if n["Internal"] else "", n["Endpoints"]) for n in nets]
        sys.stdout.write(table(["NETWORK ID", "NAME", "DRIVER", "SUBNETS", "FLAGS", "ENDPOINTS"], rows))


def cmd_inspect(args: argparse.Namespace, engine: Engine) -> None:
    emit_json([engine.inspect_network(name) for name in args.name])


def cmd_rm(args: argparse.Namespace, engine: Engine) -> None:
    for name in args.name:
        engine.remove_network(name)
        line(name)
