"""The lab file: containerlab's common subset, plus cnmkit's own keys under ``cnmkit:``.

Parsing turns the YAML (lab/yamlload.py keeps every line) into a ``Lab`` whose every string has
been checked against an alphabet (lab/names.py), every address parsed, every reference
resolved. Errors are ``SpecError``: ``FILE:LINE: FIELD: what is wrong``.

containerlab's merge: a node's settings are ``topology.defaults``, then ``topology.kinds[kind]``,
then ``topology.groups[group]``, then the node itself, later winning; ``env`` and ``labels`` are
merged key by key, ``binds`` appended, everything else replaced. The kind comes from the node,
its group or the defaults (``linux`` when none says).

cnmkit's keys, all under ``cnmkit:`` so that a containerlab file stays one:
- top level: ``networks`` (name -> driver bridge|vlan|vxlan, subnet, gateway, internal, options)
  and ``images`` (image -> rootfs directory or tarball, relative to the file); a ``vlan``
  network needs ``options.parent``, its trunk: a ``kind: bridge`` node of the lab (made before
  the networks) or an interface the host already has, never a link end (made after them);
- node: ``networks`` (names, or name -> {ip, ip6}): the node joins them on eth1, eth2, ...
  after the management network's eth0, in the order given;
- link: ``addresses``: one entry per endpoint, an address with its prefix, or a list of them.

Fields containerlab has and cnmkit does not implement, and fields nobody knows, are reported
once each as a warning (``Lab.warnings``) and ignored; a wrong value of a field cnmkit does
implement, and any unknown key under ``cnmkit:``, is an error.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from lab import names
from lab.yamlload import Path, YamlError, load

KINDS = ("linux", "bridge")
DRIVERS = ("bridge", "vlan", "vxlan")
VLAN_PARENT = "parent"                            # drivers/vlan.py's option: the trunk
DEFAULT_CMD = ("sleep", "infinity")
HOST = "host"                                     # containerlab's endpoint node for the host netns
MAX_NODES = 1000
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")

# containerlab fields (topology schema) cnmkit does not implement: a warning, not an error.
CLAB_NODE_FIELDS = frozenset((
    "type", "image-pull-policy", "license", "position", "entrypoint", "startup-config", "startup-delay",
    "enforce-startup-config", "suppress-startup-config", "auto-remove", "restart-policy", "ports",
    "env-files", "user", "config", "publish", "sysctls", "extras", "wait-for", "dns", "certificate",
    "healthcheck", "memory", "cpu", "cpu-set", "shm-size", "devices", "cap-add", "aliases", "stages",
    "components", "runtime", "mgmt-ipv4-gw", "mgmt-ipv6-gw", "kernel-modules",
))
NODE_FIELDS = frozenset(("kind", "group", "image", "cmd", "exec", "env", "binds", "labels", "mgmt-ipv4",
                         "mgmt-ipv6", "network-mode", "cnmkit"))
TOP_FIELDS = frozenset(("name", "prefix", "mgmt", "topology", "settings", "cnmkit"))
TOPOLOGY_FIELDS = frozenset(("nodes", "links", "kinds", "defaults", "groups"))
MGMT_FIELDS = frozenset(("network", "ipv4-subnet", "ipv6-subnet", "mtu"))
LINK_FIELDS = frozenset(("endpoints", "mtu", "cnmkit", "type"))


class SpecError(ValueError):
    """A refused file: the message is one line naming the file, the line and the field."""


@dataclass(frozen=True)
class Join:
    """A node on a multi-access network: the network's lab name, its interface, optional addresses."""

    network: str
    ifname: str
    ip: str | None = None
    ip6: str | None = None


@dataclass(frozen=True)
class Bind:
    """containerlab's ``SRC:DST[:ro]``: SRC on the host (relative to the file), DST in the node."""

    src: str
    dst: str
    ro: bool = False


@dataclass
class Node:
    name: str
    kind: str
    line: int
    image: str | None = None
    rootfs: str | None = None
    rootfs_tar: str | None = None
    cmd: list[str] = field(default_factory=lambda: list(DEFAULT_CMD))
    exec: list[list[str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    binds: list[Bind] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    mgmt_ipv4: str | None = None
    mgmt_ipv6: str | None = None
    mgmt: bool = True
    joins: list[Join] = field(default_factory=list)


@dataclass(frozen=True)
class Endpoint:
    node: str
    ifname: str
    addresses: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.node}:{self.ifname}"


@dataclass
class Link:
    a: Endpoint
    b: Endpoint
    line: int
    mtu: int | None = None

    @property
    def key(self) -> str:
        return "--".join(sorted((str(self.a), str(self.b))))


@dataclass
class Network:
    name: str
    line: int
    driver: str = "bridge"
    subnets: list[str] = field(default_factory=list)
    gateways: list[str] = field(default_factory=list)
    internal: bool = False
    options: dict[str, str] = field(default_factory=dict)

    @property
    def parent(self) -> str | None:
        """A VLAN network's trunk interface (in the host's namespace); None for other drivers."""
        return self.options.get(VLAN_PARENT) if self.driver == "vlan" else None


@dataclass
class Mgmt:
    network: str
    subnets: list[str] = field(default_factory=list)
    mtu: int | None = None


@dataclass
class Lab:
    name: str
    path: str
    mgmt: Mgmt
    nodes: dict[str, Node] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    networks: dict[str, Network] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def linux_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "linux"]

    def bridges(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "bridge"]


def load_file(path: str) -> Lab:
    """Read and parse ``path``; OSError and YAML errors come out as SpecError too."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return parse(text, path)


def parse(text: str, path: str = "<lab>") -> Lab:
    try:
        data, lines = load(text)
    except YamlError as exc:
        raise SpecError(f"{path}:{exc.line}: {exc}") from None
    return _Parser(path, lines).lab(data)


def _field(p: Path) -> str:
    out = ""
    for part in p:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if names.is_label(part.replace("_", "-").replace(".", "-")) or not part else names.shown(part)
            out += ("." if out else "") + text
    return out or "(top)"


class _Parser:
    def __init__(self, path: str, lines: dict[Path, int]) -> None:
        self.path = path
        self.lines = lines
        self.warned: dict[str, list[Path]] = {}

    # -- reporting ------------------------------------------------------------------------------

    def line(self, p: Path) -> int:
        while p not in self.lines and p:
            p = p[:-1]
        return self.lines.get(p, 0)

    def error(self, p: Path, message: str) -> SpecError:
        return SpecError(f"{self.path}:{self.line(p)}: {_field(p)}: {message}")

    def ignore(self, p: Path, known: bool) -> None:
        """Remember an ignored field; reported once per field name by ``_warnings``."""
        key = ("containerlab's " if known else "unknown field ") + names.shown(p[-1])
        where = self.warned.setdefault(key, [])
        if p not in where:                     # a kind's or group's field is met once per node
            where.append(p)

    def _warnings(self) -> list[str]:
        out = []
        for key, where in self.warned.items():
            more = f" (and {len(where) - 1} more)" if len(where) > 1 else ""
            first = where[0]
            what = f"{key} is not implemented by cnmkit" if key.startswith("containerlab") else key
            out.append(f"{self.path}:{self.line(first)}: {_field(first)}: {what}; ignored{more}")
        return out

    # -- typed getters --------------------------------------------------------------------------

    def mapping(self, value: Any, p: Path, *, allow_none: bool = True) -> dict[str, Any]:
        if value is None and allow_none:
            return {}
        if not isinstance(value, dict):
            raise self.error(p, f"expected a mapping, got {_kind(value)}")
        return value

    def text(self, value: Any, p: Path) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(p, f"expected a string, got {_kind(value)}")
        out = str(value)
        if "\0" in out or not out.isprintable():
            raise self.error(p, f"{names.shown(out)} holds control characters")
        return out

    def text_list(self, value: Any, p: Path) -> list[str]:
        return [self.text(v, (*p, i)) for i, v in enumerate(self.list_of(value, p))]

    def string_map(self, value: Any, p: Path, *, keys: re.Pattern[str] | None = None) -> dict[str, str]:
        out = {}
        for k, v in self.mapping(value, p).items():
            if keys is not None and not keys.fullmatch(k):
                raise self.error((*p, k), f"{names.shown(k)} is not a valid name here")
            out[self.text(k, (*p, k))] = "" if v is None else self.text(v, (*p, k))
        return out

    def checked_keys(self, d: dict[str, Any], p: Path, allowed: frozenset[str],
                     clab: frozenset[str] = frozenset(), *, strict: bool = False) -> None:
        for k in d:
            if k in allowed:
                continue
            if strict:
                raise self.error((*p, k), f"unknown field (known: {', '.join(sorted(allowed))})")
            self.ignore((*p, k), k in clab)

    def integer(self, value: Any, p: Path, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(p, f"expected a whole number in {low}..{high}, got {names.shown(value)}")
        return value

    def cidr(self, value: Any, p: Path) -> str:
        text = self.text(value, p)
        try:
            return str(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise self.error(p, f"{names.shown(text)} is not a subnet: {exc}") from None

    def address(self, value: Any, p: Path, version: int | None = None) -> str:
        text = self.text(value, p)
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise self.error(p, f"{names.shown(text)} is not an IP address") from None
        if version and addr.version != version:
            raise self.error(p, f"{text} is not an IPv{version} address")
        return str(addr)

    def interface_address(self, value: Any, p: Path) -> str:
        text = self.text(value, p)
        if "/" not in text:
            raise self.error(p, f"{names.shown(text)}: give the prefix length too (10.0.0.1/30)")
        try:
            return str(ipaddress.ip_interface(text))
        except ValueError:
            raise self.error(p, f"{names.shown(text)} is not an address with a prefix length") from None

    def label(self, value: Any, p: Path, what: str) -> str:
        if not names.is_label(value):
            raise self.error(p, f"{names.shown(value)}: {names.label_rule(what)}")
        return str(value)

    def ifname(self, value: Any, p: Path) -> str:
        if not names.is_ifname(value):
            raise self.error(p, f"{names.shown(value)}: {names.IFNAME_RULE}")
        return str(value)

    # -- the document ---------------------------------------------------------------------------

    def lab(self, data: Any) -> Lab:
        top = self.mapping(data, (), allow_none=False)
        self.checked_keys(top, (), TOP_FIELDS, frozenset(("prefix", "settings")))
        if "name" not in top:
            raise self.error((), "name: a lab needs a name")
        name = self.label(top["name"], ("name",), "lab name")
        if len(name) > names.MAX_LAB:
            raise self.error(("name",), f"a lab name is at most {names.MAX_LAB} characters")
        ext = self.mapping(top.get("cnmkit"), ("cnmkit",))
        self.checked_keys(ext, ("cnmkit",), frozenset(("networks", "images")), strict=True)
        lab = Lab(name=name, path=self.path, mgmt=self.mgmt(top.get("mgmt"), name))
        for net_name, spec in self.mapping(ext.get("networks"), ("cnmkit", "networks")).items():
            lab.networks[net_name] = self.network(net_name, spec, ("cnmkit", "networks", net_name), name)
        images = self.string_map(ext.get("images"), ("cnmkit", "images"))
        topo = self.mapping(top.get("topology"), ("topology",))
        self.checked_keys(topo, ("topology",), TOPOLOGY_FIELDS)
        self.nodes(lab, topo, images)
        for index, link in enumerate(self.list_of(topo.get("links"), ("topology", "links"))):
            lab.links.append(self.link(lab, link, ("topology", "links", index)))
        self.check_interfaces(lab)
        self.check_parents(lab)
        lab.warnings = self._warnings()
        return lab

    def list_of(self, value: Any, p: Path) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(p, f"expected a list, got {_kind(value)}")
        return value

    def mgmt(self, value: Any, lab: str) -> Mgmt:
        p: Path = ("mgmt",)
        d = self.mapping(value, p)
        self.checked_keys(d, p, MGMT_FIELDS, frozenset(("ipv4-gw", "ipv6-gw", "ipv4-range", "ipv6-range",
                                                        "bridge", "external-access", "driver")))
        net = self.label(d["network"], (*p, "network"), "network name") if "network" in d else f"{lab}-mgmt"
        subnets = []
        for key, version in (("ipv4-subnet", 4), ("ipv6-subnet", 6)):
            if d.get(key) is not None:
                cidr = self.cidr(d[key], (*p, key))
                if ipaddress.ip_network(cidr).version != version:
                    raise self.error((*p, key), f"{cidr} is not an IPv{version} subnet")
                subnets.append(cidr)
        mtu = self.integer(d["mtu"], (*p, "mtu"), 576, 65535) if d.get("mtu") is not None else None
        return Mgmt(network=net, subnets=subnets, mtu=mtu)

    def network(self, name: str, value: Any, p: Path, lab: str) -> Network:
        self.label(name, p, "network name")
        if len(names.network_name(lab, name)) > 64:
            raise self.error(p, "lab name and network name together exceed 63 characters")
        d = self.mapping(value, p)
        self.checked_keys(d, p, frozenset(("driver", "subnet", "gateway", "internal", "options")), strict=True)
        net = Network(name=name, line=self.line(p))
        if d.get("driver") is not None:
            net.driver = self.text(d["driver"], (*p, "driver"))
            if net.driver not in DRIVERS:
                raise self.error((*p, "driver"), f"{names.shown(net.driver)}: one of {', '.join(DRIVERS)}")
        subnet = d.get("subnet")
        items = subnet if isinstance(subnet, list) else [] if subnet is None else [subnet]
        net.subnets = [self.cidr(s, (*p, "subnet")) for s in items]
        gateway = d.get("gateway")
        gws = gateway if isinstance(gateway, list) else [] if gateway is None else [gateway]
        net.gateways = [self.address(g, (*p, "gateway")) for g in gws]
        for gw in net.gateways:
            if not any(ipaddress.ip_address(gw) in ipaddress.ip_network(s) for s in net.subnets):
                raise self.error((*p, "gateway"), f"{gw} is outside the network's subnets")
        if d.get("internal") is not None:
            if not isinstance(d["internal"], bool):
                raise self.error((*p, "internal"), "expected true or false")
            net.internal = d["internal"]
        net.options = self.string_map(d.get("options"), (*p, "options"))
        if net.driver == "vlan":
            if not net.options.get(VLAN_PARENT):
                raise self.error((*p, "options"), "driver vlan needs options.parent: the trunk, a kind: bridge "
                                 "node of this lab or an interface of the host")
            self.ifname(net.options[VLAN_PARENT], (*p, "options", VLAN_PARENT))
        return net

    # -- nodes ----------------------------------------------------------------------------------

    def nodes(self, lab: Lab, topo: dict[str, Any], images: dict[str, str]) -> None:
        defaults = self.mapping(topo.get("defaults"), ("topology", "defaults"))
        kinds = self.mapping(topo.get("kinds"), ("topology", "kinds"))
        groups = self.mapping(topo.get("groups"), ("topology", "groups"))
        nodes = self.mapping(topo.get("nodes"), ("topology", "nodes"))
        if len(nodes) > MAX_NODES:
            raise self.error(("topology", "nodes"), f"more than {MAX_NODES} nodes")
        seen_images: set[str] = set()
        for name, raw in nodes.items():
            p: Path = ("topology", "nodes", name)
            self.label(name, p, "node name")
            if name == HOST:
                raise self.error(p, "'host' is reserved: it names the host's namespace in link endpoints")
            if len(names.container_name(lab.name, name)) > names.CONTAINER_MAX:
                raise self.error(p, f"lab name and node name together exceed {names.CONTAINER_MAX - 1} characters")
            own = self.mapping(raw, p)
            group_name = own.get("group", defaults.get("group"))
            layers: list[tuple[dict[str, Any], Path]] = [(defaults, ("topology", "defaults"))]
            group: dict[str, Any] = {}
            if group_name is not None:
                gp: Path = ("topology", "groups", self.text(group_name, (*p, "group")))
                if group_name not in groups:
                    raise self.error((*p, "group"), f"no group {names.shown(group_name)} in topology.groups")
                group = self.mapping(groups[group_name], gp)
            kind = own.get("kind", group.get("kind", defaults.get("kind", "linux")))
            kind_path = (*p, "kind") if "kind" in own else p
            kind = self.text(kind, kind_path)
            if kind not in KINDS:
                raise self.error(kind_path, f"kind {names.shown(kind)} is not supported by cnmkit "
                                            f"(supported: {', '.join(KINDS)})")
            if kind in kinds:
                layers.append((self.mapping(kinds[kind], ("topology", "kinds", kind)), ("topology", "kinds", kind)))
            if group_name is not None:
                layers.append((group, ("topology", "groups", str(group_name))))
            layers.append((own, p))
            node = self.node(name, kind, layers, lab, images)
            if node.image and node.image not in images and node.image not in seen_images:
                seen_images.add(node.image)
                lab.notices.append(f"image {names.shown(node.image)}: no rootfs for it under cnmkit.images; "
                                   "its nodes run on the host's files")
            lab.nodes[name] = node

    def node(self, name: str, kind: str, layers: list[tuple[dict[str, Any], Path]], lab: Lab,
             images: dict[str, str]) -> Node:
        node = Node(name=name, kind=kind, line=self.line(layers[-1][1]))
        for d, p in layers:
            self.checked_keys(d, p, NODE_FIELDS, CLAB_NODE_FIELDS)
            for key, value in d.items():
                fp = (*p, key)
                if key in ("kind", "group") or value is None:
                    continue
                if kind == "bridge" and key not in ("labels", "cnmkit") and p == layers[-1][1]:
                    raise self.error(fp, "a bridge node takes no settings but labels (it is a Linux bridge "
                                         "on the host)")
                if kind == "bridge":
                    continue
                self.node_field(node, key, value, fp, lab, images)
        if node.binds and (node.rootfs or node.rootfs_tar):
            raise self.error(layers[-1][1], "binds need a node on the host's files: binding into an image's "
                                            "rootfs is not supported yet")
        if node.mgmt_ipv4 or node.mgmt_ipv6:
            if not node.mgmt:
                raise self.error(layers[-1][1], "mgmt-ipv4/mgmt-ipv6 with network-mode none")
            for addr in (node.mgmt_ipv4, node.mgmt_ipv6):
                if addr and lab.mgmt.subnets and not any(
                        ipaddress.ip_address(addr) in ipaddress.ip_network(s) for s in lab.mgmt.subnets):
                    raise self.error(layers[-1][1], f"management address {addr} is outside mgmt's subnets")
        return node

    def node_field(self, node: Node, key: str, value: Any, p: Path, lab: Lab, images: dict[str, str]) -> None:
        if key == "image":
            node.image = self.text(value, p)
            node.rootfs = node.rootfs_tar = None
            if node.image in images:
                root = os.path.join(self.base(), images[node.image])
                if os.path.isdir(root):
                    node.rootfs = os.path.realpath(root)
                elif os.path.isfile(root) and root.endswith(TAR_SUFFIXES):
                    node.rootfs_tar = os.path.realpath(root)
                else:
                    raise self.error(("cnmkit", "images", node.image),
                                     f"{names.shown(images[node.image])}: no such directory or tarball "
                                     f"({', '.join(TAR_SUFFIXES)}) next to the file")
        elif key == "cmd":
            node.cmd = self.command(value, p)
        elif key == "exec":
            node.exec = [self.command(c, (*p, i)) for i, c in enumerate(self.list_of(value, p))]
        elif key == "env":
            node.env.update(self.string_map(value, p, keys=_ENV_KEY))
        elif key == "labels":
            node.labels.update(self.string_map(value, p))
        elif key == "binds":
            for index, text in enumerate(self.text_list(value, p)):
                bind = self.bind(text, (*p, index))
                node.binds = [b for b in node.binds if b.dst != bind.dst] + [bind]
        elif key == "mgmt-ipv4":
            node.mgmt_ipv4 = self.address(value, p, 4)
        elif key == "mgmt-ipv6":
            node.mgmt_ipv6 = self.address(value, p, 6)
        elif key == "network-mode":
            mode = self.text(value, p)
            if mode not in ("none", "bridge"):
                raise self.error(p, f"{names.shown(mode)}: cnmkit knows 'none' (no management interface) "
                                    "and 'bridge' (the default)")
            node.mgmt = mode != "none"
        elif key == "cnmkit":
            ext = self.mapping(value, p)
            self.checked_keys(ext, p, frozenset(("networks",)), strict=True)
            node.joins = self.joins(ext.get("networks"), (*p, "networks"), node, lab)

    def base(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def bind(self, text: str, p: Path) -> Bind:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise self.error(p, f"{names.shown(text)}: a bind is SRC:DST or SRC:DST:ro")
        src = os.path.normpath(os.path.join(self.base(), parts[0]))
        dst = os.path.normpath(parts[1])
        if not dst.startswith("/") or dst == "/":
            raise self.error(p, f"{names.shown(parts[1])}: the destination is an absolute path below /")
        if not os.path.exists(src):
            raise self.error(p, f"{names.shown(src)}: no such file or directory")
        return Bind(src=src, dst=dst, ro=len(parts) == 3 and parts[2] == "ro")

    def command(self, value: Any, p: Path) -> list[str]:
        if isinstance(value, list):
            argv = self.text_list(value, p)
        else:
            try:
                argv = shlex.split(self.text(value, p))
            except ValueError as exc:
                raise self.error(p, f"cannot split the command: {exc}") from None
        if not argv:
            raise self.error(p, "empty command")
        return argv

    def joins(self, value: Any, p: Path, node: Node, lab: Lab) -> list[Join]:
        entries: list[tuple[Any, Any, Path]]
        if isinstance(value, list):
            entries = [(v, None, (*p, i)) for i, v in enumerate(value)]
        else:
            entries = [(k, v, (*p, k)) for k, v in self.mapping(value, p).items()]
        out: list[Join] = []
        first = 1 if node.mgmt else 0
        for index, (net, opts, ep) in enumerate(entries):
            net = self.text(net, ep)
            if net not in lab.networks:
                raise self.error(ep, f"no network {names.shown(net)} under cnmkit.networks")
            if any(j.network == net for j in out):
                raise self.error(ep, f"network {net} given twice")
            d = self.mapping(opts, ep)
            self.checked_keys(d, ep, frozenset(("ip", "ip6")), strict=True)
            ip = self.address(d["ip"], (*ep, "ip"), 4) if d.get("ip") is not None else None
            ip6 = self.address(d["ip6"], (*ep, "ip6"), 6) if d.get("ip6") is not None else None
            subnets = lab.networks[net].subnets
            for addr, key in ((ip, "ip"), (ip6, "ip6")):
                if addr and subnets and not any(ipaddress.ip_address(addr) in ipaddress.ip_network(s)
                                                for s in subnets):
                    raise self.error((*ep, key), f"{addr} is outside network {net}'s subnets")
            out.append(Join(network=net, ifname=f"eth{first + index}", ip=ip, ip6=ip6))
        return out

    # -- links ----------------------------------------------------------------------------------

    def link(self, lab: Lab, value: Any, p: Path) -> Link:
        d = self.mapping(value, p, allow_none=False)
        self.checked_keys(d, p, LINK_FIELDS, frozenset(("vars", "labels")))
        if d.get("type") not in (None, "veth"):
            raise self.error((*p, "type"), f"link type {names.shown(d['type'])} is not supported (veth)")
        raw = d.get("endpoints")
        if not isinstance(raw, list) or len(raw) != 2:
            raise self.error((*p, "endpoints"), "a link has exactly two endpoints: [\"a:eth1\", \"b:eth1\"]")
        ext = self.mapping(d.get("cnmkit"), (*p, "cnmkit"))
        self.checked_keys(ext, (*p, "cnmkit"), frozenset(("addresses",)), strict=True)
        addrs = self.list_of(ext.get("addresses"), (*p, "cnmkit", "addresses"))
        if addrs and len(addrs) != 2:
            raise self.error((*p, "cnmkit", "addresses"), "one entry per endpoint (two), null for none")
        ends = []
        for i, ep in enumerate(raw):
            ends.append(self.endpoint(lab, ep, (*p, "endpoints", i), addrs[i] if addrs else None,
                                      (*p, "cnmkit", "addresses", i)))
        if str(ends[0]) == str(ends[1]):
            raise self.error((*p, "endpoints"), "both endpoints are the same interface")
        mtu = self.integer(d["mtu"], (*p, "mtu"), 68, 65535) if d.get("mtu") is not None else None
        return Link(a=ends[0], b=ends[1], line=self.line(p), mtu=mtu)

    def endpoint(self, lab: Lab, value: Any, p: Path, addrs: Any, ap: Path) -> Endpoint:
        if isinstance(value, dict):
            self.checked_keys(value, p, frozenset(("node", "interface")), frozenset(("mac",)))
            node, iface = value.get("node"), value.get("interface")
        else:
            node, sep, iface = self.text(value, p).partition(":")
            if not sep:
                raise self.error(p, f"{names.shown(value)}: an endpoint is NODE:INTERFACE")
        if node != HOST and node not in lab.nodes:
            raise self.error(p, f"no node {names.shown(node)} in topology.nodes")
        iface = self.ifname(iface, p)
        items = addrs if isinstance(addrs, list) else [] if addrs is None else [addrs]
        addresses = tuple(self.interface_address(a, ap) for a in items)
        if addresses and node != HOST and lab.nodes[str(node)].kind == "bridge":
            raise self.error(ap, "a bridge port takes no address")
        return Endpoint(node=str(node), ifname=iface, addresses=addresses)

    def check_interfaces(self, lab: Lab) -> None:
        """Every interface name once per namespace; the host's namespace shared by host and bridges."""
        taken: dict[tuple[str, str], str] = {}
        for node in lab.linux_nodes():
            if node.mgmt:
                taken[(node.name, "eth0")] = "the management network"
            for j in node.joins:
                taken[(node.name, j.ifname)] = f"network {j.network}"
        for br in lab.bridges():
            taken[(HOST, br.name)] = f"bridge {br.name}"
        for index, link in enumerate(lab.links):
            for end in (link.a, link.b):
                space = HOST if end.node == HOST or lab.nodes[end.node].kind == "bridge" else end.node
                key = (space, end.ifname)
                if key in taken:
                    raise self.error(("topology", "links", index, "endpoints"),
                                     f"interface {end} is already taken by {taken[key]} (networks take eth0, "
                                     "eth1, ... in order; name link interfaces after them)")
                taken[key] = f"link {link.key}"

    def check_parents(self, lab: Lab) -> None:
        """A VLAN's trunk is in the host's namespace and exists before the networks are made: a
        lab bridge or a host interface, not a node, not a link end (links come after networks)."""
        for net in lab.networks.values():
            parent = net.parent
            if parent is None:
                continue
            p: Path = ("cnmkit", "networks", net.name, "options", VLAN_PARENT)
            if parent in lab.nodes and lab.nodes[parent].kind != "bridge":
                raise self.error(p, f"{parent} is a {lab.nodes[parent].kind} node; the trunk is an interface "
                                 "of the host's namespace: a kind: bridge node or a host interface")
            for link in lab.links:
                for end in (link.a, link.b):
                    if end.ifname == parent and (end.node == HOST or lab.nodes[end.node].kind == "bridge"):
                        raise self.error(p, f"{parent} is the end {end} of link {link.key}, made after the "
                                         "networks; make the trunk a kind: bridge node and link the far side "
                                         "to it")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)
