"""802.1Q basics on the guest's real kernel: the harness's own proof that the tier runs what the
VLAN driver needs (sub-interfaces, tagged frames on a trunk)."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from drivers.kernel import entered_netns
from tests.conftest import ip_json

ETH_P_ALL = 0x0003
ETH_P_8021Q = 0x8100
SOL_PACKET, PACKET_AUXDATA, TP_STATUS_VLAN_VALID = 263, 8, 0x10
PROBE = b"cnmkit-guest-probe"
ROOT = Path(__file__).resolve().parents[2]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _trunk(netns_factory: Callable[[str], str]) -> tuple[str, str]:
    """Two "hosts" joined by a veth trunk (``trunk`` in each), both ends up."""
    a, b = netns_factory("a"), netns_factory("b")
    _ip("link", "add", "trunk", "netns", a, "type", "veth", "peer", "name", "trunk", "netns", b)
    for ns in (a, b):
        _ip("-n", ns, "link", "set", "trunk", "up")
    return a, b


def test_vlan_subinterface_is_made_with_its_id(netns_factory: Callable[[str], str]) -> None:
    a, _ = _trunk(netns_factory)
    _ip("-n", a, "link", "add", "link", "trunk", "name", "trunk.100", "type", "vlan", "id", "100")
    [link] = ip_json("link", "show", "trunk.100", netns=a)
    assert link["linkinfo"]["info_kind"] == "vlan"
    assert link["linkinfo"]["info_data"]["id"] == 100
    assert link["linkinfo"]["info_data"]["protocol"] == "802.1Q"


def _vlan_host(ns: str, vid: int, addr: str) -> None:
    _ip("-n", ns, "link", "add", "link", "trunk", "name", f"trunk.{vid}", "type", "vlan", "id", str(vid))
    _ip("-n", ns, "addr", "add", addr, "dev", f"trunk.{vid}")
    _ip("-n", ns, "link", "set", f"trunk.{vid}", "up")


def _parse(data: bytes, anc: list[tuple[int, int, bytes]]) -> tuple[int | None, bytes]:
    """(VID or None, the frame's payload after the Ethernet and any 802.1Q header).

    The kernel may hand the tag to a packet socket out of band (VLAN offload on veth): then the
    frame arrives untagged and PACKET_AUXDATA carries TCI and TPID. Both ways it is the tag the
    frame had on the trunk, read by the test, not taken from our code.
    """
    if struct.unpack("!H", data[12:14])[0] == ETH_P_8021Q:
        return struct.unpack("!H", data[14:16])[0] & 0x0FFF, data[16:]
    for level, kind, cdata in anc:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(cdata) >= 20:
            # struct tpacket_auxdata: u32 status, len, snaplen; u16 mac, net, vlan_tci, vlan_tpid
            status, _len, _snap, _mac, _net, tci, tpid = struct.unpack("=IIIHHHH", cdata[:20])
            if status & TP_STATUS_VLAN_VALID and tpid in (0, ETH_P_8021Q):
                return tci & 0x0FFF, data[12:]
    return None, data[12:]


def _is_probe(rest: bytes) -> bool:
    """An IPv4 UDP datagram to port 9 carrying PROBE (``rest`` starts at the ethertype)."""
    if rest[:2] != b"\x08\x00" or rest[2 + 9] != 17:
        return False
    ihl = (rest[2] & 0x0F) * 4
    udp = rest[2 + ihl:]
    return struct.unpack("!H", udp[2:4])[0] == 9 and udp[8:].startswith(PROBE)


def _capture_on_trunk(ns: str, send: Callable[[], None], ifname: str = "trunk") -> list[tuple[int | None, bool]]:
    """(VID or None, is our probe) of every frame seen on ``ifname`` in ``ns``, received or sent,
    from before ``send`` until our probe datagram passes (the socket's timeout only guards
    against a hang)."""
    with entered_netns(f"/run/netns/{ns}"):          # a socket stays in the netns it was made in
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((ifname, 0))
    seen: list[tuple[int | None, bool]] = []
    try:
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.settimeout(60)
        send()
        while not any(probe for _vid, probe in seen):
            data, anc, _flags, _addr = sock.recvmsg(65535, socket.CMSG_SPACE(64))
            vid, rest = _parse(data, anc)
            seen.append((vid, _is_probe(rest)))
    finally:
        sock.close()
    return seen


def test_frames_on_the_trunk_carry_the_vlan_tag(netns_factory: Callable[[str], str]) -> None:
    a, b = _trunk(netns_factory)
    _vlan_host(a, 100, "10.100.0.1/24")
    _vlan_host(b, 100, "10.100.0.2/24")

    def send() -> None:
        done = subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c",
                               "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                               f"s.sendto({PROBE!r},('10.100.0.2',9))"],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr

    frames = _capture_on_trunk(b, send)
    assert [vid for vid, probe in frames if probe] == [100], frames


def test_iptables_in_the_guest_is_legacy_and_programs_rules(netns: str) -> None:
    """The UML kernel's nf_tables lacks the ip families: `iptables` on the guest's PATH must be
    the legacy one, and it must take a rule (what the firewall module does) in a namespace."""
    version = subprocess.run(["iptables", "--version"], capture_output=True, text=True, check=True).stdout
    assert "(legacy)" in version, version
    subprocess.run(["ip", "netns", "exec", netns, "iptables", "-w", "5", "-t", "nat", "-A", "POSTROUTING",
                    "-s", "10.9.0.0/24", "-m", "comment", "--comment", "cnmkit:probe", "-j", "MASQUERADE"],
                   check=True, capture_output=True, text=True)
    rules = subprocess.run(["ip", "netns", "exec", netns, "iptables-legacy-save", "-t", "nat"],
                           capture_output=True, text=True, check=True).stdout
    assert '-A POSTROUTING -s 10.9.0.0/24 -m comment --comment "cnmkit:probe" -j MASQUERADE' in rules
