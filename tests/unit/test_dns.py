"""The overlay's DNS responder: the wire codec (agent/dnswire.py) against well-formed and hostile
packets, the zone built from the store's records (agent/dns.py View), and the responder protocol
on a loopback socket. The overlay tier (tests/overlay/test_overlay_hosts.py) proves it inside the
overlay namespace with a real dockerd."""

from __future__ import annotations

import asyncio
import random
import socket
import struct

import pytest
from netaddr import IPNetwork

from agent import dnswire
from agent.dns import OverlayDNS, View, _Responder
from drivers.base import EndpointSpec, NetworkSpec
from store import records
from store.base import KV, Event
from store.records import NAMES_OPTION, EndpointRecord, NetworkRecord

ZONE = {"web": ("10.77.0.2", "fd00:77::2"), "db": ("10.77.0.3",)}


def ask(packet: bytes, zone: dict[str, tuple[str, ...]] = ZONE) -> bytes | None:
    return dnswire.answer(packet, zone.get)


def flags(reply: bytes) -> int:
    return struct.unpack_from("!H", reply, 2)[0]


@pytest.mark.parametrize(("name", "qtype", "addresses"), [
    ("web", dnswire.TYPE_A, ["10.77.0.2"]),
    ("WeB.", dnswire.TYPE_AAAA, ["fd00:77::2"]),               # case-insensitive, trailing dot
    ("web", dnswire.TYPE_ANY, ["10.77.0.2", "fd00:77::2"]),
    ("db", dnswire.TYPE_AAAA, []),                              # a known name without that type: NODATA
    ("web", 15, []),                                            # MX of a known name: NODATA
])
def test_known_names_are_answered_authoritatively(name: str, qtype: int, addresses: list[str]) -> None:
    reply = ask(dnswire.query(name, qtype, ident=0xBEEF))
    assert reply is not None
    assert dnswire.parse_reply(reply) == (0xBEEF, dnswire.NOERROR, addresses)
    assert flags(reply) & dnswire.AA and flags(reply) & dnswire.QR and flags(reply) & dnswire.RD


@pytest.mark.parametrize("packet", [
    dnswire.query("google.com"),                                # not ours: the next --dns server's
    dnswire.query("web.example"),
    dnswire.query("web")[:-2] + struct.pack("!H", 3),           # class CH
    dnswire.query("w\xe9b"),                                    # not ASCII
    dnswire.HEADER.pack(1, 0, 1, 0, 0, 0) + b"\x07web.x.y\x00\x00\x01\x00\x01",   # a '.' inside a label
])
def test_names_that_are_not_ours_are_refused_with_the_question(packet: bytes) -> None:
    reply = ask(packet)
    assert reply is not None and dnswire.parse_reply(reply)[1:] == (dnswire.REFUSED, [])
    assert reply[12:] == packet[12:len(reply)] and not flags(reply) & dnswire.AA


def _formerr(packet: bytes) -> bool:
    reply = ask(packet)
    return reply is not None and len(reply) == 12 and flags(reply) & 0xF == dnswire.FORMERR


def test_malformed_questions_get_formerr_and_nothing_else() -> None:
    good = dnswire.query("web")
    header = good[:4]
    cases = [
        dnswire.HEADER.pack(7, 0, 0, 0, 0, 0),                 # no question
        dnswire.HEADER.pack(7, 0, 2, 0, 0, 0) + good[12:] * 2,  # two questions
        good[:14],                                              # label cut short
        good[:-3],                                              # type/class cut short
        good[:12] + b"\xc0\x0c" + good[-4:],                    # compression pointer (a loop to itself)
        good[:12] + b"\x43abc\x00" + good[-4:],                 # reserved label type 01
        good[:12] + b"\x03web",                                 # no root label
        header + struct.pack("!HHHH", 1, 0, 0, 0) + b"\x3f" + b"a" * 63 + (b"\x3f" + b"a" * 63) * 3 + b"\x00"
        + good[-4:],                                            # 256 bytes of name
    ]
    assert all(_formerr(p) for p in cases)


def test_packets_that_must_not_be_answered_are_dropped() -> None:
    assert ask(b"") is None and ask(b"\x00" * 11) is None
    reply = ask(dnswire.query("web"))
    assert reply is not None and ask(reply) is None             # a response (QR): never answered


def test_other_opcodes_are_not_implemented() -> None:
    packet = bytearray(dnswire.query("web"))
    packet[2] |= 2 << 3                                         # STATUS
    reply = ask(bytes(packet))
    assert reply is not None and flags(reply) & 0xF == dnswire.NOTIMP


def test_a_big_answer_is_truncated_to_512_bytes_with_tc() -> None:
    zone = {"many": tuple(f"10.77.{i // 250}.{i % 250 + 1}" for i in range(100))}
    reply = dnswire.answer(dnswire.query("many"), zone.get)
    assert reply is not None and len(reply) <= 512 and flags(reply) & dnswire.TC
    _, rcode, addresses = dnswire.parse_reply(reply)
    assert rcode == dnswire.NOERROR and addresses == list(zone["many"][:len(addresses)]) and len(addresses) > 20


def test_random_and_mutated_packets_never_raise_and_keep_the_id() -> None:
    rng = random.Random(8)
    seeds = [dnswire.query("web"), dnswire.query("db", dnswire.TYPE_AAAA)]
    for i in range(20000):
        if i % 2:
            packet = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
        else:
            packet = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                packet[rng.randrange(len(packet))] = rng.getrandbits(8)
            packet = bytes(packet[:rng.randrange(len(packet) + 1)])
        reply = ask(packet)
        if reply is not None:
            assert len(reply) <= 512 and reply[:2] == packet[:2] and flags(reply) & dnswire.QR


# -- the zone from the records -----------------------------------------------------------------

OV_NET, OTHER_NET = "1" * 64, "2" * 64


def _net(nid: str, driver: str, overlay: str) -> KV:
    spec = NetworkSpec(network_id=nid, options={"cnmkit.overlay": overlay} if overlay else {})
    return KV(records.network_key(nid), NetworkRecord(driver, spec, host="h1").encode(), 1, 1, 1)


def _ep(nid: str, eid: str, address: str, names: str, host: str) -> KV:
    spec = EndpointSpec(network_id=nid, endpoint_id=eid * 64, address=IPNetwork(address),
                        options={NAMES_OPTION: names})
    return KV(records.endpoint_key(nid, eid * 64), EndpointRecord(spec=spec, host=host).encode(), 1, 1, 1)


def _host(host: str) -> KV:
    return KV(records.host_key(host), b'{"HostID":"x","Advertise":"192.0.2.9"}', 1, 1, 1)


def test_the_zone_holds_the_overlays_names_on_live_hosts_checked() -> None:
    view = View("h1")
    view.reset([_net(OV_NET, "cnmkit-vxlan", "blue"), _net(OTHER_NET, "cnmkit-bridge", ""), _host("h2"),
                _ep(OV_NET, "a", "10.77.0.2/24", "web,web-host,www", "h1"),
                _ep(OV_NET, "b", "10.77.0.3/24", "db,bad name,-x,Store", "h2"),
                _ep(OV_NET, "c", "10.77.0.4/24", "ghost", "h3"),            # h3 has no lease: left out
                _ep(OTHER_NET, "d", "10.88.0.2/24", "bridged", "h1")])
    assert view.zone("blue") == {"web": ("10.77.0.2",), "web-host": ("10.77.0.2",), "www": ("10.77.0.2",),
                                 "db": ("10.77.0.3",), "store": ("10.77.0.3",)}
    assert view.lookup("blue", "bridged") is None and view.lookup("red", "web") is None
    view.apply(Event("PUT", records.host_key("h3"), b"{}", 2))             # h3 comes back
    view.apply(Event("DELETE", _ep(OV_NET, "a", "10.77.0.2/24", "", "h1").key, b"", 3))
    assert view.lookup("blue", "ghost") == ("10.77.0.4",) and view.lookup("blue", "web") is None
    second = _ep(OV_NET, "e", "10.77.0.9/24", "db", "h1")                  # one name on two endpoints
    view.apply(Event("PUT", second.key, second.value, 4))
    assert view.lookup("blue", "db") == ("10.77.0.3", "10.77.0.9")


def test_the_responder_survives_hostile_datagrams_and_answers_the_next_query() -> None:
    async def go() -> tuple[int, int, list[str]]:
        dns = OverlayDNS.__new__(OverlayDNS)
        dns.view = View("h1")
        dns.view.reset([_net(OV_NET, "cnmkit-vxlan", "blue"), _ep(OV_NET, "a", "10.77.0.2/24", "web", "h1")])
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Responder(dns, "blue"),
                                                           local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        try:
            for junk in (b"", b"\xff" * 3, dnswire.query("web")[:15], b"\x00" * 600):
                client.sendto(junk, ("127.0.0.1", port))
            client.sendto(dnswire.query("web", ident=77), ("127.0.0.1", port))
            while True:
                data = await loop.sock_recv(client, 1024)
                if data[:2] == b"\x00\x4d":
                    return dnswire.parse_reply(data)
        finally:
            client.close()
            transport.close()

    assert asyncio.run(go()) == (77, dnswire.NOERROR, ["10.77.0.2"])
