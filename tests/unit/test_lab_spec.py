"""Lab files: the examples and containerlab-style files parse; bad files are refused with the
line and the field; containerlab fields cnmkit does not implement are warned about once."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import spec
from lab.spec import SpecError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "labs").glob("*.clab.yml"))


def test_the_examples_parse_without_warnings() -> None:
    assert {p.name for p in EXAMPLES} >= {"lan.clab.yml", "router.clab.yml", "ring.clab.yml", "mixed.clab.yml"}
    for path in EXAMPLES:
        lab = spec.load_file(str(path))
        assert lab.warnings == [] and lab.nodes, path


CLAB = """\
name: srl01
mgmt:
  network: fixedips
  ipv4-subnet: 172.100.100.0/24
topology:
  defaults:
    env: {A: defaults, B: defaults}
    exec: ["echo defaults"]
  kinds:
    linux:
      image: ghcr.io/hellt/network-multitool
      env: {B: kind, C: kind}
      binds: [/tmp:/a]
  groups:
    spines:
      env: {C: group}
      exec: ["echo group"]
      labels: {tier: spine}
  nodes:
    s1:
      group: spines
      env: {D: node}
      mgmt-ipv4: 172.100.100.11
      binds: [".:/b:ro", "/:/a"]
    l1:
      labels: {tier: leaf}
      cmd: sh -c 'sleep 1000'
  links:
    - endpoints: ["s1:e1-1", "l1:e1-1"]
      mtu: 1400
    - endpoints: ["l1:eth9", "host:l1-eth9"]
"""


def test_containerlab_merge_order_defaults_kinds_groups_node() -> None:
    lab = spec.parse(CLAB, "srl01.clab.yml")
    s1, l1 = lab.nodes["s1"], lab.nodes["l1"]
    assert s1.env == {"A": "defaults", "B": "kind", "C": "group", "D": "node"}   # later layers win, key by key
    assert l1.env == {"A": "defaults", "B": "kind", "C": "kind"}
    assert s1.exec == [["echo", "group"]] and l1.exec == [["echo", "defaults"]]  # lists: the nearest wins
    # binds: appended, a later one for the same destination replacing; SRC relative to the file
    assert s1.binds == [spec.Bind(str(Path.cwd()), "/b", ro=True), spec.Bind("/", "/a")]
    assert l1.binds == [spec.Bind("/tmp", "/a")]
    assert s1.labels == {"tier": "spine"} and l1.labels == {"tier": "leaf"}
    assert l1.cmd == ["sh", "-c", "sleep 1000"]
    assert s1.image == "ghcr.io/hellt/network-multitool" and s1.rootfs is None
    assert s1.mgmt_ipv4 == "172.100.100.11" and lab.mgmt.network == "fixedips"
    assert lab.mgmt.subnets == ["172.100.100.0/24"]
    assert [str(lab.links[0].a), str(lab.links[0].b), lab.links[0].mtu] == ["s1:e1-1", "l1:e1-1", 1400]
    assert lab.links[1].b.node == spec.HOST
    assert any("no rootfs" in n for n in lab.notices)
    assert lab.warnings == []


def test_unknown_containerlab_fields_are_warned_once_each() -> None:
    text = ("name: w\ntopology:\n  kinds:\n    linux: {ports: ['80:80']}\n  nodes:\n"
            "    a: {memory: 1G}\n    b: {memory: 2G, startup-config: x.cfg, flavour: y}\n    c: {}\n")
    lab = spec.parse(text, "w.yml")
    assert lab.warnings == [
        "w.yml:4: topology.kinds.linux.ports: containerlab's 'ports' is not implemented by cnmkit; ignored",
        "w.yml:6: topology.nodes.a.memory: containerlab's 'memory' is not implemented by cnmkit; ignored "
        "(and 1 more)",
        "w.yml:7: topology.nodes.b.startup-config: containerlab's 'startup-config' is not implemented by cnmkit; "
        "ignored",
        "w.yml:7: topology.nodes.b.flavour: unknown field 'flavour'; ignored",
    ]


def test_cnmkit_extensions() -> None:
    text = """\
name: ext
topology:
  nodes:
    a:
      cnmkit:
        networks:
          lan: {ip: 10.9.0.10, ip6: "fd00:9::10"}
          wan: ~
    b:
      network-mode: none
      cnmkit: {networks: [lan]}
  links:
    - endpoints: ["a:eth3", "b:eth1"]
      cnmkit: {addresses: [[10.9.9.1/30, "fd00:99::1/64"], null]}
cnmkit:
  networks:
    lan: {driver: bridge, subnet: [10.9.0.0/24, "fd00:9::/64"], options: {com.docker.network.driver.mtu: 1400}}
    wan: {driver: vxlan, internal: true}
"""
    lab = spec.parse(text)
    a, b = lab.nodes["a"], lab.nodes["b"]
    assert [(j.network, j.ifname, j.ip, j.ip6) for j in a.joins] == [("lan", "eth1", "10.9.0.10", "fd00:9::10"),
                                                                   ("wan", "eth2", None, None)]
    assert [(j.network, j.ifname) for j in b.joins] == [("lan", "eth0")]        # no management network
    assert lab.networks["lan"].options == {"com.docker.network.driver.mtu": "1400"}
    assert lab.networks["wan"].driver == "vxlan" and lab.networks["wan"].internal
    assert lab.links[0].a.addresses == ("10.9.9.1/30", "fd00:99::1/64") and lab.links[0].b.addresses == ()


BAD = [
    # (file text, expected "LINE: FIELD: ..." start)
    ("topology: {}\n", ":1: (top): name: a lab needs a name"),
    ("name: 'bad name'\n", ":1: name: 'bad name'"),
    ("name: x\nname: y\n", ":2: key 'name' given twice"),
    ("name: x\ntopology:\n  nodes:\n    r1: {kind: srl}\n", ":4: topology.nodes.r1.kind: kind 'srl' is not supported"),
    ("name: x\ntopology:\n  nodes:\n    \"r1\\nX\": {}\n", ":4: topology.nodes.'r1\\nX': 'r1\\nX': a node name"),
    ("name: x\ntopology:\n  nodes:\n    host: {}\n", ":4: topology.nodes.host: 'host' is reserved"),
    ("name: x\ntopology:\n  nodes:\n    a: {}\n  links:\n    - endpoints: [\"a:eth1\"]\n",
     ":6: topology.links[0].endpoints: a link has exactly two endpoints"),
    ("name: x\ntopology:\n  nodes:\n    a: {}\n  links:\n    - endpoints: [\"a:eth1\", \"z:eth1\"]\n",
     ":6: topology.links[0].endpoints[1]: no node 'z'"),
    ("name: x\ntopology:\n  nodes:\n    a: {}\n    b: {}\n  links:\n"
     "    - endpoints: [\"a:averyveryverylongname\", \"b:eth1\"]\n",
     ":7: topology.links[0].endpoints[0]: 'averyveryverylongname': an interface name is 1..15"),
    ("name: x\ntopology:\n  nodes:\n    a: {}\n    b: {}\n  links:\n    - endpoints: [\"a:../x\", \"b:eth1\"]\n",
     ":7: topology.links[0].endpoints[0]: '../x'"),
    ("name: x\ntopology:\n  nodes:\n    a: {}\n    b: {}\n  links:\n    - endpoints: [\"a:eth0\", \"b:eth1\"]\n",
     ":7: topology.links[0].endpoints: interface a:eth0 is already taken by the management network"),
    ("name: x\ntopology:\n  nodes:\n    a: {}\n    b: {}\n  links:\n    - endpoints: [\"a:eth1\", \"b:eth1\"]\n"
     "      mtu: 99999\n", ":8: topology.links[0].mtu: expected a whole number in 68..65535"),
    ("name: x\ntopology:\n  nodes:\n    a: {}\n    b: {}\n  links:\n    - endpoints: [\"a:eth1\", \"b:eth1\"]\n"
     "      cnmkit: {addresses: [10.0.0.1, null]}\n",
     ":8: topology.links[0].cnmkit.addresses[0]: '10.0.0.1': give the prefix length too"),
    ("name: x\nmgmt: {ipv4-subnet: 10.5.0.0/24}\ntopology:\n  nodes:\n    a:\n      mgmt-ipv4: 10.6.0.5\n",
     ":5: topology.nodes.a: management address 10.6.0.5 is outside mgmt's subnets"),
    ("name: x\ntopology:\n  nodes:\n    a:\n      mgmt-ipv4: 10.6.0.500\n",
     ":5: topology.nodes.a.mgmt-ipv4: '10.6.0.500' is not an IP address"),
    ("name: x\ntopology:\n  nodes:\n    a: {cnmkit: {networks: [lan]}}\n",
     ":4: topology.nodes.a.cnmkit.networks[0]: no network 'lan' under cnmkit.networks"),
    ("name: x\ncnmkit:\n  networks:\n    lan: {driver: macvlan}\n",
     ":4: cnmkit.networks.lan.driver: 'macvlan': one of bridge, vlan, vxlan"),
    ("name: x\ncnmkit:\n  netwroks: {}\n", ":3: cnmkit.netwroks: unknown field"),
    ("name: x\ntopology:\n  nodes:\n    a: {exec: \"echo 'unclosed\"}\n", ":4: topology.nodes.a.exec: expected a list"),
    ("name: x\ntopology:\n  nodes:\n    a:\n      env: {\"BAD KEY\": 1}\n",
     ":5: topology.nodes.a.env.'BAD KEY': 'BAD KEY' is not a valid name here"),
    ("name: x\ntopology:\n  nodes:\n    a:\n      group: nope\n", ":5: topology.nodes.a.group: no group 'nope'"),
    ("name: x\ntopology: [1, 2\n", ":3: not valid YAML"),
    ("name: x\ntopology:\n  nodes:\n    a:\n      binds: [/tmp]\n",
     ":5: topology.nodes.a.binds[0]: '/tmp': a bind is SRC:DST or SRC:DST:ro"),
    ("name: x\ntopology:\n  nodes:\n    a:\n      binds: [\"/tmp:/x:rx\"]\n",
     ":5: topology.nodes.a.binds[0]: '/tmp:/x:rx': a bind is SRC:DST"),
    ("name: x\ntopology:\n  nodes:\n    a:\n      binds: [\"/tmp:rel\"]\n",
     ":5: topology.nodes.a.binds[0]: 'rel': the destination is an absolute path"),
    ("name: x\ntopology:\n  nodes:\n    a:\n      binds: [\"/no/such/dir:/x\"]\n",
     ":5: topology.nodes.a.binds[0]: '/no/such/dir': no such file or directory"),
    ("name: x\ntopology:\n  nodes:\n    a: {kind: bridge, exec: [ls]}\n",
     ":4: topology.nodes.a.exec: a bridge node takes no settings but labels"),
    ("name: x\ncnmkit:\n  networks:\n    v: {driver: vlan, options: {vlan: 10}}\n",
     ":4: cnmkit.networks.v.options: driver vlan needs options.parent: the trunk"),
    ("name: x\ncnmkit:\n  networks:\n    v:\n      driver: vlan\n      options: {parent: ../x}\n",
     ":6: cnmkit.networks.v.options.parent: '../x'"),
    ("name: x\ntopology:\n  nodes:\n    a: {}\ncnmkit:\n  networks:\n    v:\n      driver: vlan\n"
     "      options: {parent: a}\n", ":9: cnmkit.networks.v.options.parent: a is a linux node; the trunk is an "
     "interface of the host's namespace"),
    ("name: x\ntopology:\n  nodes:\n    a: {}\n    br: {kind: bridge}\n  links:\n"
     "    - endpoints: [\"a:eth1\", \"br:br-a\"]\ncnmkit:\n  networks:\n    v:\n      driver: vlan\n"
     "      options: {parent: br-a}\n", ":12: cnmkit.networks.v.options.parent: br-a is the end br:br-a of link "
     "a:eth1--br:br-a, made after the networks"),
    ("name: x\ntopology:\n  nodes:\n    a: {}\n  links:\n    - endpoints: [\"a:eth1\", \"host:tr0\"]\n"
     "cnmkit:\n  networks:\n    v: {driver: vlan, options: {parent: tr0}}\n",
     ":9: cnmkit.networks.v.options.parent: tr0 is the end host:tr0 of link"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_bad_files_name_the_line_and_the_field(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as err:
        spec.parse(text, "bad.yml")
    message = str(err.value)
    assert message.startswith("bad.yml" + expected), message
    assert "\n" not in message


def test_alias_bombs_and_huge_files_are_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        bomb += f"{chr(97 + i)}: &{chr(97 + i)} [*{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, " \
                f"*{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}]\n"
    with pytest.raises(SpecError, match="aliases expanding"):
        spec.parse(bomb)
    with pytest.raises(SpecError, match="larger than"):
        spec.parse("name: x\n" + "#" * (2 << 20))


def test_merge_keys_and_image_rootfs(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    path = tmp_path / "lab.yml"
    path.write_text("name: m\ncnmkit:\n  images: {busybox: rootfs}\ntopology:\n  defaults: &d {image: busybox}\n"
                    "  nodes:\n    a: {<<: *d}\n")
    lab = spec.load_file(str(path))
    assert lab.nodes["a"].rootfs == str(tmp_path / "rootfs") and lab.notices == []
    (tmp_path / "img.tar").write_bytes(b"")
    path.write_text("name: m\ncnmkit:\n  images: {bb: img.tar, gone: nothere}\ntopology:\n  nodes:\n"
                    "    a: {image: bb}\n    b: {image: bb, binds: ['/tmp:/mnt']}\n")
    with pytest.raises(SpecError) as err:
        spec.load_file(str(path))
    assert str(err.value) == f"{path}:7: topology.nodes.b: binds need a node on the host's files: binding " \
                             "into an image's rootfs is not supported yet"
    path.write_text("name: m\ncnmkit:\n  images: {bb: img.tar}\ntopology:\n  nodes:\n    a: {image: bb}\n")
    assert spec.load_file(str(path)).nodes["a"].rootfs_tar == str(tmp_path / "img.tar")
    path.write_text("name: m\ncnmkit:\n  images: {bb: nothere}\ntopology:\n  nodes:\n    a: {image: bb}\n")
    with pytest.raises(SpecError, match=r":3: cnmkit\.images\.bb: .*nothere': no such directory or tarball"):
        spec.load_file(str(path))
    with pytest.raises(SpecError, match=r"lab\.yml: cannot read"):
        spec.load_file(str(tmp_path / "missing" / "lab.yml"))
