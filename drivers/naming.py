"""Names and ownership marks of the kernel objects cnmkit makes.

Names are derived from Docker's 64-hex ids, never chosen at random, so a restarted daemon (or a
retried request) finds the objects it made before without keeping its own records, and so
cleanup can go by name. Every name fits the kernel's IFNAMSIZ (15 usable bytes).

Ownership is carried by the link's ifalias, ``cnmkit:<kind>:<id>``: a name collision with
somebody else's link is then detected instead of silently adopted or deleted.

    bridge            cnm-<network_id[:11]>     alias cnmkit:net:<network_id>
    host veth end     cnv<endpoint_id[:12]>     alias cnmkit:ep:<endpoint_id>
    container end     cni<endpoint_id[:12]>     (renamed by Docker or the runtime)
    VLAN sub-interface <parent>.<vid>           alias cnmkit:uplink:<parent>.<vid>
                      (cnq<sha(parent)[:6]>.<vid> when that is longer than 15 bytes)
    macvlan endpoint  cnv<endpoint_id[:12]>     alias cnmkit:ep:<endpoint_id>
    doomed host end   (same name)               alias cnmkit:doomed:<endpoint_id>, netdev group
                                                DOOMED_GROUP: deleted in the background (drivers/reaper.py)
"""

from __future__ import annotations

import hashlib
import os
import re

IFNAMSIZ = 15                   # usable bytes; the kernel's IFNAMSIZ counts the NUL too
ALIAS_ROOT = "cnmkit:"
BRIDGE_PREFIX = "cnm-"
HOST_VETH_PREFIX = "cnv"
CONTAINER_VETH_PREFIX = "cni"

DOOMED_GROUP = 0x636E6B64    # "cnkd": the netdev group of doomed links, deleted as one batch
DOOMED_ALIAS_PREFIX = ALIAS_ROOT + "doomed:"
_HEX_ID = re.compile(r"[0-9a-f]{64}")          # always fullmatch: "$" lets a trailing newline in
# Interface names a client may choose (-o com.docker.network.bridge.name): the kernel's rules
# (1..15 bytes, not "." or "..", no "/", ":" or whitespace) are not enough, because names reach
# iptables (where "+" is a wildcard, "!" a negation, a leading "-" an option), the kernel's name
# templates ("%d") and our rule parser (quotes, backslashes). Only this alphabet is let through.
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")


def check_id(value: str, what: str = "id") -> str:
    """A full Docker id: exactly 64 lowercase hex digits, nothing before or after.

    Anything else would make names collide, break iptables, or smuggle a newline into a name.
    """
    if not isinstance(value, str) or not _HEX_ID.fullmatch(value):
        raise ValueError(f"{what} {_short(value)} is not a 64-digit lowercase hex id")
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + f"...({len(text)} chars)"


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + check_id(network_id, "network id")[:11]


def host_veth_name(endpoint_id: str) -> str:
    return HOST_VETH_PREFIX + check_id(endpoint_id, "endpoint id")[:12]


def container_veth_name(endpoint_id: str) -> str:
    return CONTAINER_VETH_PREFIX + check_id(endpoint_id, "endpoint id")[:12]


def alias(kind: str, object_id: str) -> str:
    """The ifalias that marks an object as ours: ``cnmkit:net:<id>``, ``cnmkit:ep:<id>``."""
    return f"{ALIAS_ROOT}{kind}:{object_id}"


def doomed_alias(endpoint_id: str) -> str:
    """The mark of a host veth whose endpoint is deleted and whose link awaits the reaper."""
    return alias("doomed", endpoint_id)


def network_alias(network_id: str) -> str:
    return alias("net", network_id)


def endpoint_alias(endpoint_id: str) -> str:
    return alias("ep", endpoint_id)


def vlan_link_name(parent: str, vid: int) -> str:
    """The 802.1Q sub-interface of ``parent`` for ``vid``: ``eth1.100``, as ``ip link`` users name it.

    A parent whose name leaves no room for ``.<vid>`` gets a hashed stand-in, still one name per
    (parent, VID), so a restarted daemon finds the same link again.
    """
    name = f"{parent}.{vid}"
    if len(name.encode()) <= IFNAMSIZ:
        return name
    return f"cnq{hashlib.sha256(parent.encode()).hexdigest()[:6]}.{vid}"


def uplink_alias(link: str) -> str:
    """The mark of an uplink cnmkit made (a VLAN sub-interface): ``cnmkit:uplink:<name>``.

    Only links carrying it are ever deleted; a sub-interface the operator made carries none.
    """
    return alias("uplink", link)


def is_ours(alias_text: str) -> bool:
    """A link marked by cnmkit (bridge, veth, uplink): never a parent for a VLAN network."""
    return isinstance(alias_text, str) and alias_text.startswith(ALIAS_ROOT)


def firewall_mark(network_id: str) -> str:
    """The iptables comment on every rule of one network: ``cnmkit:<the whole network id>``.

    The whole id (comments hold up to 256 chars), never a prefix: with ``id[:12]``, deleting a
    network removed the rules of every other network whose id began with the same 12 digits.
    """
    return f"{ALIAS_ROOT}{check_id(network_id, 'network id')}"


def valid_ifname(name: str) -> bool:
    """A name safe for the kernel, iptables and our rule parser alike (see ``_IFNAME``).

    Stricter than the kernel's dev_valid_name(), so a bad option fails at create instead of in
    netlink, and so a name like ``eth+`` never becomes an iptables wildcard.
    """
    return isinstance(name, str) and bool(_IFNAME.fullmatch(name)) and len(name.encode()) <= IFNAMSIZ


def random_mac() -> str:
    """A locally administered unicast MAC (02:...), the kind Docker and the kernel pick."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def address_mac(ipv4: str) -> str:
    """The MAC for an endpoint with this IPv4 address: 02:cb followed by the address's octets.

    A container restarted with the same static address then comes back with the same MAC, so
    its neighbours' ARP caches stay right; with a fresh random MAC they would send to the dead
    one until the entry went stale and was re-probed (seconds of lost traffic). Docker's bridge
    derives MACs from addresses for the same reason. Addresses are unique within a bridge.
    """
    octets = [int(part) for part in ipv4.split(".")]
    return ":".join(f"{b:02x}" for b in (0x02, 0xCB, *octets))


def stable_mac(seed: str) -> str:
    """A locally administered MAC derived from ``seed``.

    Used for bridges: a bridge without an explicit MAC takes the lowest port MAC, so its
    gateway MAC would change under the containers' ARP caches as ports come and go.
    """
    octets = bytearray(hashlib.sha256(seed.encode()).digest()[:6])
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def valid_mac(mac: str) -> bool:
    return bool(_MAC.match(mac.lower()))
