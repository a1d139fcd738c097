"""From a parsed lab and its record to an ordered list of actions: what a deploy will do.

The lab becomes *items* (networks, bridges, nodes, links), each with a digest of exactly the
settings that cannot change without re-making it, and the keys of the items it stands on (a node
on its networks, a link on its two nodes, a VLAN network on the lab bridge that is its trunk).
Comparing with the record:

- an item recorded but no longer wanted, or whose digest changed, is removed;
- a wanted item not recorded, or changed, is created; so is every item standing on one that is
  re-made (a restarted node has a new namespace, and its links died with the old one);
- everything else is left alone: a redeploy after an edit touches only what changed.

Order: removals first (links, nodes, networks, bridges), then creations (bridges, networks,
nodes, links), then each new node's ``exec`` commands, which may configure its links. Bridges
come before networks because a VLAN network's sub-interface hangs off its trunk bridge.
Labels are recorded but not digested: changing one re-makes nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from client.engine import MTU_OPTION
from lab import names
from lab.records import Record
from lab.spec import HOST, Endpoint, Lab, Node

ORDER = ("bridge", "network", "node", "link")
CREATE, REMOVE, EXEC = "create", "remove", "exec"


@dataclass
class Item:
    kind: str
    name: str
    spec: dict[str, Any]
    deps: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)     # recorded, not digested

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Action:
    verb: str
    kind: str
    name: str
    item: Item | None = None                  # for create and exec
    recorded: dict[str, Any] | None = None    # for remove

    def describe(self) -> str:
        if self.verb == EXEC:
            binds = f"{len(self.spec['binds'])} bind(s), " if self.spec.get("binds") else ""
            return f"exec on node {self.name}: {binds}{len(self.spec['exec'])} command(s)"
        what = {"network": "network", "bridge": "bridge", "node": "node", "link": "link"}[self.kind]
        verb = {"create": "start" if self.kind == "node" else "create", "remove": "remove"}[self.verb]
        return f"{verb} {what} {self.name}"

    @property
    def spec(self) -> dict[str, Any]:
        if self.item is not None:
            return self.item.spec
        return dict((self.recorded or {}).get("spec") or {})


def items(lab: Lab) -> dict[str, Item]:
    """What the lab file asks for, keyed ``KIND:NAME``."""
    out: dict[str, Item] = {}
    uses_mgmt = any(n.mgmt for n in lab.linux_nodes())
    if uses_mgmt:
        options = {MTU_OPTION: str(lab.mgmt.mtu)} if lab.mgmt.mtu else {}
        item = Item("network", lab.mgmt.network, {"name": lab.mgmt.network, "driver": "bridge",
                                                 "subnets": lab.mgmt.subnets, "gateways": [], "internal": False,
                                                 "options": options, "mgmt": True})
        out[item.key] = item
    bridges = {br.name for br in lab.bridges()}
    for net in lab.networks.values():
        full = names.network_name(lab.name, net.name)
        trunk = [f"bridge:{net.parent}"] if net.parent in bridges else []
        spec = {"name": full, "driver": net.driver, "subnets": net.subnets, "gateways": net.gateways,
                "internal": net.internal, "options": net.options, "mgmt": False}
        if net.parent is not None:              # a trunk that stops being the lab's bridge re-makes it
            spec["trunk"] = trunk[0] if trunk else "host"
        item = Item("network", full, spec, deps=trunk, extra={"lab_name": net.name})
        out[item.key] = item
    for br in lab.bridges():
        item = Item("bridge", br.name, {"name": br.name}, extra={"labels": br.labels})
        out[item.key] = item
    for node in lab.linux_nodes():
        item = _node_item(lab, node)
        out[item.key] = item
    for link in lab.links:
        a, b = _end(lab, link.a), _end(lab, link.b)
        deps = [f"{e['kind']}:{e['node']}" for e in (a, b) if e["kind"] in ("node", "bridge")]
        item = Item("link", link.key, {"a": a, "b": b, "mtu": link.mtu}, deps=deps)
        out[item.key] = item
    return out


def _node_item(lab: Lab, node: Node) -> Item:
    networks = []
    deps = []
    if node.mgmt:
        networks.append(_request(lab.mgmt.network, node.mgmt_ipv4, node.mgmt_ipv6))
        deps.append(f"network:{lab.mgmt.network}")
    for join in node.joins:
        full = names.network_name(lab.name, join.network)
        networks.append(_request(full, join.ip, join.ip6))
        deps.append(f"network:{full}")
    spec = {"container": names.container_name(lab.name, node.name), "hostname": node.name, "cmd": node.cmd,
            "env": node.env, "rootfs": node.rootfs, "networks": networks, "exec": node.exec,
            "binds": [{"src": b.src, "dst": b.dst, "ro": b.ro} for b in node.binds],
            "rootfs_tar": node.rootfs_tar, "rootfs_sha": _sha256(node.rootfs_tar) if node.rootfs_tar else None,
            "interfaces": (["eth0"] if node.mgmt else []) + [j.ifname for j in node.joins]}
    return Item("node", node.name, spec, deps=deps,
                extra={"labels": node.labels, "image": node.image, "kind": node.kind})


def _sha256(path: str) -> str:
    """The tarball's content hash: an image replaced under the same name re-makes its nodes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def configures(spec: dict[str, Any]) -> bool:
    """Whether a started node still has steps to run (binds, exec) before it is complete."""
    return bool(spec.get("exec") or spec.get("binds"))


def _request(network: str, ip: str | None, ip6: str | None) -> str:
    """``--network`` syntax; the parts are a checked label and parsed addresses (no ',' or '=')."""
    return network + (f",ip={ip}" if ip else "") + (f",ip6={ip6}" if ip6 else "")


def _end(lab: Lab, end: Endpoint) -> dict[str, Any]:
    if end.node == HOST:
        kind = "host"
    else:
        kind = "bridge" if lab.nodes[end.node].kind == "bridge" else "node"
    return {"kind": kind, "node": end.node, "ifname": end.ifname, "addresses": list(end.addresses)}


def plan(wanted: dict[str, Item], record: Record | None) -> list[Action]:
    recorded: dict[str, dict[str, Any]] = dict((record or {}).get("items") or {})
    remake: set[str] = set()
    for kind in ORDER:                                     # dependencies point to earlier kinds
        for key, item in wanted.items():
            if item.kind != kind:
                continue
            old = recorded.get(key)
            if old is None or old.get("digest") != item.digest or any(d in remake for d in item.deps):
                remake.add(key)
    gone = {key for key in recorded if key not in wanted}
    actions: list[Action] = []
    for kind in reversed(ORDER):
        for key in sorted(recorded):
            entry = recorded[key]
            if entry.get("kind") == kind and (key in gone or key in remake):
                actions.append(Action(REMOVE, kind, str(entry.get("name")), recorded=entry))
    for kind in ORDER:
        for key, item in wanted.items():
            if item.kind == kind and key in remake:
                actions.append(Action(CREATE, kind, item.name, item=item))
    for key, item in wanted.items():
        if item.kind == "node" and key in remake and configures(item.spec):
            actions.append(Action(EXEC, "node", item.name, item=item))
    return actions
