"""The DNS wire format, as far as an overlay's name responder needs it (RFC 1035, RFC 3596).

Pure bytes in, bytes out: ``answer(packet, lookup)`` is the whole responder's logic, so the unit
tier can feed it every malformed packet there is. Every packet comes from a container, so from
a possibly hostile source:

- fewer than 12 bytes (no header to answer), or a response (QR set: answering it could start a
  loop between two responders): dropped, nothing is sent;
- an opcode other than QUERY: NOTIMP; not exactly one question, a label longer than 63 bytes, a
  name longer than 255, a compression pointer or a reserved label type in the question, a
  question cut short: FORMERR, with no question echoed;
- a well-formed question: the answer is authoritative (AA) for the names ``lookup`` knows, with
  every A/AAAA record of the name (TTL 0: endpoints come and go, nothing may cache them); a known
  name asked for another type is NOERROR without records; a name not known, or a class other
  than IN/ANY, is REFUSED: we are nobody's recursive resolver, and REFUSED makes dockerd's
  embedded DNS try its next ``--dns`` server, so the user's upstream still answers the rest.

Answers fit in 512 bytes (no EDNS): records that do not fit are left out and TC is set. The
sections after the question (an EDNS OPT record, say) are ignored, never parsed.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Sequence

HEADER = struct.Struct("!HHHHHH")
MAX_UDP = 512
MAX_NAME = 255
TTL = 0

QR, AA, TC, RD = 0x8000, 0x0400, 0x0200, 0x0100
OPCODE_MASK, OPCODE_SHIFT = 0x7800, 11
NOERROR, FORMERR, NOTIMP, REFUSED = 0, 1, 4, 5
TYPE_A, TYPE_AAAA, TYPE_ANY = 1, 28, 255
CLASS_IN, CLASS_ANY = 1, 255

Lookup = Callable[[str], Sequence[str] | None]      # a lowercase name -> its addresses, None: unknown


class Malformed(ValueError):
    """The question cannot be read: answered with FORMERR."""


def parse_question(packet: bytes) -> tuple[str | None, int, int, int]:
    """(name, qtype, qclass, end offset) of the one question. The name is lowercase ASCII, or None
    when it cannot be one of ours (a byte outside ASCII, a '.' inside a label): such a name is
    well-formed DNS, so it is answered (REFUSED), not treated as malformed."""
    pos, labels, length, ours = HEADER.size, [], 0, True
    while True:
        if pos >= len(packet):
            raise Malformed("name cut short")
        size = packet[pos]
        if size & 0xC0:
            raise Malformed("compression pointer or reserved label type in the question")
        pos += 1
        if size == 0:
            break
        if pos + size > len(packet):
            raise Malformed("label cut short")
        label = packet[pos:pos + size]
        length += size + 1
        if length + 1 > MAX_NAME:
            raise Malformed("name longer than 255 bytes")
        if not label.isascii() or b"." in label:
            ours = False
        labels.append(label)
        pos += size
    if pos + 4 > len(packet):
        raise Malformed("question type and class cut short")
    qtype, qclass = struct.unpack_from("!HH", packet, pos)
    name = b".".join(labels).decode("ascii").lower() if ours else None
    return name, qtype, qclass, pos + 4


def _record(rtype: int, address: str) -> bytes:
    rdata = ipaddress.ip_address(address).packed
    # 0xC00C: the name is the question's, at offset 12 (right after the header).
    return struct.pack("!HHHIH", 0xC00C, rtype, CLASS_IN, TTL, len(rdata)) + rdata


def _header(ident: int, flags: int, rcode: int, qd: int, an: int) -> bytes:
    return HEADER.pack(ident, QR | flags | rcode, qd, an, 0, 0)


def answer(packet: bytes, lookup: Lookup) -> bytes | None:
    """The reply to ``packet``, or None when nothing must be sent (see the module's rules)."""
    if len(packet) < HEADER.size:
        return None
    ident, flags, qdcount, _, _, _ = HEADER.unpack_from(packet)
    if flags & QR:
        return None
    rd = flags & RD
    if (flags & OPCODE_MASK) >> OPCODE_SHIFT != 0:
        return _header(ident, rd | (flags & OPCODE_MASK), NOTIMP, 0, 0)
    if qdcount != 1:
        return _header(ident, rd, FORMERR, 0, 0)
    try:
        name, qtype, qclass, end = parse_question(packet)
    except Malformed:
        return _header(ident, rd, FORMERR, 0, 0)
    question = packet[HEADER.size:end]
    addresses = lookup(name) if name is not None and qclass in (CLASS_IN, CLASS_ANY) else None
    if addresses is None:
        return _header(ident, rd, REFUSED, 1, 0) + question
    wanted = {TYPE_A: (4,), TYPE_AAAA: (6,), TYPE_ANY: (4, 6)}.get(qtype, ())
    out, count, flags_out = _header(ident, rd | AA, NOERROR, 1, 0) + question, 0, rd | AA
    for address in addresses:
        version = ipaddress.ip_address(address).version
        if version not in wanted:
            continue
        rec = _record(TYPE_A if version == 4 else TYPE_AAAA, address)
        if len(out) + len(rec) > MAX_UDP:
            flags_out |= TC
            break
        out += rec
        count += 1
    return _header(ident, flags_out, NOERROR, 1, count) + out[HEADER.size:]


def query(name: str, qtype: int = TYPE_A, ident: int = 0x1234, *, rd: bool = True) -> bytes:
    """A standard query for ``name`` (tests and ``cnmkit``'s own checks build questions with it)."""
    labels = b"".join(bytes([len(p)]) + p for p in name.encode().split(b".") if p)
    return HEADER.pack(ident, RD if rd else 0, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, CLASS_IN)


def parse_reply(packet: bytes) -> tuple[int, int, list[str]]:
    """(id, rcode, addresses) of a reply made by ``answer`` (tests read replies with it)."""
    ident, flags, _, ancount, _, _ = HEADER.unpack_from(packet)
    _, _, _, pos = parse_question(packet)
    out: list[str] = []
    for _ in range(ancount):
        _, _, _, _, size = struct.unpack_from("!HHHIH", packet, pos)
        pos += 12
        out.append(str(ipaddress.ip_address(packet[pos:pos + size])))
        pos += size
    return ident, flags & 0xF, out
