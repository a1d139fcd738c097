"""Names and ownership marks of the kernel objects cnmkit makes.

Names are derived from Docker's 64-hex ids, never chosen at random, so a restarted daemon (or a
retried request) finds the objects it made before without keeping its own records, and so
cleanup can go by name. Every name fits the kernel's IFNAMSIZ (15 usable bytes).

Ownership is carried by the link's ifalias, ``cnmkit:<kind>:<id>``: a name collision with
somebody else's link is then detected instead of silently adopted or deleted.

    bridge            cnm-<network_id[:11]>     alias cnmkit:net:<network_id>
    host veth end     cnv<endpoint_id[:12]>     alias cnmkit:ep:<endpoint_id>
    container end     cni<endpoint_id[:12]>     (renamed by Docker or the runtime)
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

_HEX_ID = re.compile(r"^[0-9a-f]{12,64}$")


def check_id(value: str, what: str = "id") -> str:
    """Docker ids are lowercase hex; anything else would make names collide or break iptables."""
    if not _HEX_ID.match(value):
        raise ValueError(f"{what} {value!r} is not a lowercase hex id of 12..64 digits")
    return value


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + check_id(network_id, "network id")[:11]


def host_veth_name(endpoint_id: str) -> str:
    return HOST_VETH_PREFIX + check_id(endpoint_id, "endpoint id")[:12]


def container_veth_name(endpoint_id: str) -> str:
    return CONTAINER_VETH_PREFIX + check_id(endpoint_id, "endpoint id")[:12]


def alias(kind: str, object_id: str) -> str:
    """The ifalias that marks an object as ours: ``cnmkit:net:<id>``, ``cnmkit:ep:<id>``."""
    return f"{ALIAS_ROOT}{kind}:{object_id}"


def network_alias(network_id: str) -> str:
    return alias("net", network_id)


def endpoint_alias(endpoint_id: str) -> str:
    return alias("ep", endpoint_id)


def firewall_mark(network_id: str) -> str:
    """The iptables comment on every rule of one network: ``cnmkit:<the whole network id>``.

    The whole id (comments hold up to 256 chars), never a prefix: with ``id[:12]``, deleting a
    network removed the rules of every other network whose id began with the same 12 digits.
    """
    return f"{ALIAS_ROOT}{check_id(network_id, 'network id')}"


def valid_ifname(name: str) -> bool:
    """The kernel's dev_valid_name(), so a bad option fails at create instead of in netlink."""
    if not name or len(name.encode()) > IFNAMSIZ or name in (".", ".."):
        return False
    return not any(c in "/:" or c.isspace() for c in name)


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
