"""The lab as a Graphviz graph: DOT text we write ourselves, rendered by ``dot`` when asked.

Nodes are boxes, ``kind: bridge`` nodes hexagons, the host a house, multi-access networks
(management included) ellipses with their subnets; a node's edge to a network is labelled with
its interface and address, a point-to-point link with both ends' interfaces and addresses.
Addresses are the file's static ones, and when the lab is deployed, what the kernel holds.

Every string that reaches the DOT text goes through ``quote``: names are checked at parse time,
but the DOT label syntax has its own escapes (``\\N``, ``\\G``, ``\\l``) and a quote ends the
string, so backslashes and quotes are escaped and anything non-printable is replaced.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from lab import names
from lab.spec import HOST, Lab

FORMATS = {".svg": "svg", ".png": "png", ".dot": "dot", ".gv": "dot"}


class GraphError(Exception):
    pass


def quote(*parts: object) -> str:
    """One DOT string: each part escaped, parts on separate lines."""
    out = []
    for part in parts:
        text = "".join(ch if ch.isprintable() else "?" for ch in str(part))
        out.append(text.replace("\\", "\\\\").replace('"', '\\"'))
    return '"' + "\\n".join(out) + '"'


def to_dot(lab: Lab, live: dict[str, Any] | None = None) -> str:
    """``live`` is ``LabService.inspect`` output (kernel addresses, network subnets), or None."""
    addrs: dict[tuple[str, str], list[str]] = {}
    subnets: dict[str, list[str]] = {}
    for node in (live or {}).get("Nodes", []):
        for iface in node.get("Interfaces", []):
            addrs[(node["Name"], iface["name"])] = [a for a in iface.get("addresses", []) if not a.startswith("fe80")]
    for net in (live or {}).get("Networks", []):
        subnets[net["Name"]] = net["Subnets"]
    lines = [f"graph {quote(lab.name)} {{",
             f"  graph [label={quote('lab ' + lab.name)}, labelloc=t, fontname=\"Helvetica\", overlap=false];",
             '  node [fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=9];']
    nets_used: dict[str, list[str]] = {}
    for node in lab.linux_nodes():
        lines.append(f"  {quote('node:' + node.name)} [shape=box, style=rounded, label={quote(node.name)}];")
        joins = []
        if node.mgmt:
            joins.append((lab.mgmt.network, "eth0", [node.mgmt_ipv4, node.mgmt_ipv6]))
        for j in node.joins:
            joins.append((names.network_name(lab.name, j.network), j.ifname, [j.ip, j.ip6]))
        for net, ifname, static in joins:
            shown = addrs.get((node.name, ifname)) or [a for a in static if a]
            nets_used.setdefault(net, []).append(
                f"  {quote('node:' + node.name)} -- {quote('net:' + net)} [label={quote(ifname, *shown)}];")
    for br in lab.bridges():
        lines.append(f"  {quote('node:' + br.name)} [shape=hexagon, label={quote(br.name, '(bridge)')}];")
    if any(HOST in (link.a.node, link.b.node) for link in lab.links):
        lines.append(f"  {quote('node:' + HOST)} [shape=house, label={quote('host')}];")
    for net, edges in nets_used.items():
        wanted = next((n.subnets for n in lab.networks.values()
                       if names.network_name(lab.name, n.name) == net), lab.mgmt.subnets)
        label = [net, *(subnets.get(net) or wanted)]
        if net == lab.mgmt.network:
            label.append("(management)")
        lines.append(f"  {quote('net:' + net)} [shape=ellipse, style=filled, fillcolor=\"#eef3ff\", "
                     f"label={quote(*label)}];")
        lines += edges
    for link in lab.links:
        ends = []
        for end in (link.a, link.b):
            shown = addrs.get((end.node, end.ifname)) or list(end.addresses)
            ends.append(quote(end.ifname, *shown))
        mtu = f", label={quote('mtu ' + str(link.mtu))}" if link.mtu else ""
        lines.append(f"  {quote('node:' + link.a.node)} -- {quote('node:' + link.b.node)} "
                     f"[taillabel={ends[0]}, headlabel={ends[1]}{mtu}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


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
