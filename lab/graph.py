"""The lab as a Graphviz graph: DOT text we write ourselves, rendered by ``dot`` when asked.

Each node is a small table: its name (and kind), then one row per interface with its
addresses. Multi-access networks (management included) are ellipses with their subnets; an
edge goes from an interface's row to its network, or, for a point-to-point link, from one
interface's row to the other's, so no label has to float near a crowded edge end. A VLAN
network also names its VLAN and has a dashed edge to its trunk (a lab bridge, or a row of the
host's box).
Addresses are the file's static ones, and when the lab is deployed, what the kernel holds.

Escaping: names are checked at parse time, but nothing reaches the DOT text unescaped anyway.
Table cells are HTML-like labels (``html.escape``: ``& < > "``); graph and node ids are DOT
strings (``quote``: backslash and quote escaped, non-printables replaced). Ports are numbered,
never named after an interface.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from typing import Any

from lab import names
from lab.spec import HOST, Lab

FORMATS = {".svg": "svg", ".png": "png", ".dot": "dot", ".gv": "dot"}


class GraphError(Exception):
    pass


def _printable(part: object) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in str(part))


def quote(*parts: object) -> str:
    """One DOT string: each part escaped, parts on separate lines."""
    out = [_printable(p).replace("\\", "\\\\").replace('"', '\\"') for p in parts]
    return '"' + "\\n".join(out) + '"'


def cell(text: object) -> str:
    """Text for an HTML-like label cell."""
    return html.escape(_printable(text), quote=True)


class _Box:
    """A node's table: title and one row (port) per interface, in the order first met."""

    def __init__(self, title: str, subtitle: str, shape: str) -> None:
        self.title, self.subtitle, self.shape = title, subtitle, shape
        self.rows: list[tuple[str, list[str]]] = []

    def port(self, ifname: str, addresses: list[str]) -> str:
        for index, (name, addrs) in enumerate(self.rows):
            if name == ifname:
                addrs += [a for a in addresses if a not in addrs]
                return f"i{index}"
        self.rows.append((ifname, list(addresses)))
        return f"i{len(self.rows) - 1}"

    def label(self) -> str:
        head = f"<B>{cell(self.title)}</B>" + (f"<BR/><FONT POINT-SIZE=\"9\">{cell(self.subtitle)}</FONT>"
                                               if self.subtitle else "")
        rows = [f'<TR><TD BGCOLOR="{self.shape}">{head}</TD></TR>']
        for index, (name, addrs) in enumerate(self.rows):
            text = cell(name) + "".join(f"<BR/>{cell(a)}" for a in addrs)
            rows.append(f'<TR><TD PORT="i{index}"><FONT POINT-SIZE="9">{text}</FONT></TD></TR>')
        return '<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="3">' + "".join(rows) + "</TABLE>>"


def to_dot(lab: Lab, live: dict[str, Any] | None = None) -> str:
    """``live`` is ``LabService.inspect`` output (kernel addresses, network subnets), or None."""
    kernel: dict[tuple[str, str], list[str]] = {}
    subnets: dict[str, list[str]] = {}
    for node in (live or {}).get("Nodes", []):
        for iface in node.get("Interfaces", []):
            kernel[(node["Name"], iface["name"])] = [a for a in iface.get("addresses", [])
                                                     if not a.startswith("fe80")]
    for iface in (live or {}).get("HostInterfaces", []):
        kernel[(HOST, iface["name"])] = [a for a in iface.get("addresses", []) if not a.startswith("fe80")]
    for net in (live or {}).get("Networks", []):
        subnets[net["Name"]] = net["Subnets"]

    boxes: dict[str, _Box] = {}
    for node in lab.linux_nodes():
        boxes[node.name] = _Box(node.name, node.image or "", "#e8f0e8")
    for br in lab.bridges():
        boxes[br.name] = _Box(br.name, "bridge", "#f3ecd8")
    if any(HOST in (link.a.node, link.b.node) for link in lab.links) or any(
            n.parent is not None and n.parent not in boxes for n in lab.networks.values()):
        boxes[HOST] = _Box(HOST, "host namespace", "#eeeeee")

    def shown(node: str, ifname: str, static: list[str | None]) -> list[str]:
        return kernel.get((node, ifname)) or [a for a in static if a]

    edges: list[str] = []
    nets: dict[str, list[str]] = {}
    for node in lab.linux_nodes():
        joins = [(lab.mgmt.network, "eth0", [node.mgmt_ipv4, node.mgmt_ipv6])] if node.mgmt else []
        joins += [(names.network_name(lab.name, j.network), j.ifname, [j.ip, j.ip6]) for j in node.joins]
        for net, ifname, static in joins:
            port = boxes[node.name].port(ifname, shown(node.name, ifname, static))
            label = [net, *(subnets.get(net) or _wanted_subnets(lab, net))]
            nets[net] = label + (["(management)"] if net == lab.mgmt.network else [])
            edges.append(f"  {quote('node:' + node.name)}:{port} -- {quote('net:' + net)};")
    edges += _trunks(lab, boxes, nets)
    for link in lab.links:
        ends = []
        for end in (link.a, link.b):
            port = boxes[end.node].port(end.ifname, shown(end.node, end.ifname, list(end.addresses)))
            ends.append(f"{quote('node:' + end.node)}:{port}")
        extra = f" [label={quote('mtu ' + str(link.mtu))}]" if link.mtu else ""
        edges.append(f"  {ends[0]} -- {ends[1]}{extra};")

    lines = [f"graph {quote(lab.name)} {{",
             f"  graph [label={quote('lab ' + lab.name)}, labelloc=t, fontname=\"Helvetica\"];",
             '  node [fontname="Helvetica", fontsize=11, shape=plaintext];',
             '  edge [fontname="Helvetica", fontsize=9];']
    for name, box in boxes.items():
        lines.append(f"  {quote('node:' + name)} [label={box.label()}];")
    for net, label in nets.items():
        lines.append(f"  {quote('net:' + net)} [shape=ellipse, style=filled, fillcolor=\"#eef3ff\", "
                     f"label={quote(*label)}];")
    lines += edges
    lines.append("}")
    return "\n".join(lines) + "\n"


def _trunks(lab: Lab, boxes: dict[str, _Box], nets: dict[str, list[str]]) -> list[str]:
    """A VLAN network's tie to its trunk: a dashed edge to the lab bridge, or to the host
    interface, that carries its tagged frames, labelled with the VLAN (ellipse too)."""
    edges = []
    for net in lab.networks.values():
        full = names.network_name(lab.name, net.name)
        if net.parent is None or full not in nets:
            continue
        vid = net.options.get("vlan") or f"from {net.options.get('vlan_range') or 'the default range'}"
        nets[full].append(f"VLAN {vid} on {net.parent}")
        tag = f"802.1Q {vid}"
        end = quote("node:" + net.parent) if net.parent in boxes else \
            f"{quote('node:' + HOST)}:{boxes[HOST].port(net.parent, [])}"
        edges.append(f"  {quote('net:' + full)} -- {end} [style=dashed, label={quote(tag)}];")
    return edges


def _wanted_subnets(lab: Lab, net: str) -> list[str]:
    for n in lab.networks.values():
        if names.network_name(lab.name, n.name) == net:
            return n.subnets
    return lab.mgmt.subnets if net == lab.mgmt.network else []


def render(dot: str, out_path: str) -> None:
    """Write ``dot`` to ``out_path`` as the extension says: SVG or PNG through Graphviz, DOT as is."""
    ext = "." + out_path.rsplit(".", 1)[-1].lower() if "." in out_path else ""
    fmt = FORMATS.get(ext)
    if fmt is None:
        raise GraphError(f"-o {names.shown(out_path)}: the name must end in .svg, .png or .dot")
    if fmt == "dot":
        data = dot.encode()
    else:
        exe = shutil.which("dot")
        if exe is None:
            raise GraphError("Graphviz's dot is not installed (Debian package graphviz)")
        proc = subprocess.run([exe, f"-T{fmt}"], input=dot.encode(), capture_output=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise GraphError(f"dot failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
        data = proc.stdout
    try:
        with open(out_path, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise GraphError(f"-o {names.shown(out_path)}: {exc.strerror}") from None
