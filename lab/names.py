"""What a lab name, a node name, a network name and an interface name may be.

Everything here reaches the kernel (interface names), a path (the lab's record file), a
container name and hostname (peers' /etc/hosts) or the terminal; so it is checked where it
enters, against an alphabet, never escaped later. The rules:

- lab, node and network names: one RFC 1123 label (letters, digits, '-', not at either end);
  a lab name at most 32 characters, so ``<lab>.<node>`` fits a container name (64);
- interface names: the kernel's (1..15 bytes) narrowed to the alphabet drivers/naming.py lets
  through (letters, digits, '_', '.', '-'; not starting with '.' or '-').
"""

from __future__ import annotations

import re

MAX_LAB = 32
CONTAINER_MAX = 64
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")


def shown(value: object) -> str:
    """A refused value as an error shows it: repr (control characters escaped), bounded."""
    text = repr(value)
    return text if len(text) <= 66 else text[:64] + "..."


def is_label(value: object) -> bool:
    return isinstance(value, str) and bool(_LABEL.fullmatch(value))


def is_ifname(value: object) -> bool:
    return isinstance(value, str) and bool(_IFNAME.fullmatch(value)) and value not in (".", "..")


def label_rule(what: str) -> str:
    return f"a {what} is one RFC 1123 label: letters, digits and '-', not starting or ending with '-', at most 63"


IFNAME_RULE = ("an interface name is 1..15 of letters, digits, '_', '.', '-', not starting with '.' or '-'")


def container_name(lab: str, node: str) -> str:
    """The runtime's name for a lab node; '.' cannot occur in either part, so it is unambiguous."""
    return f"{lab}.{node}"


def network_name(lab: str, network: str) -> str:
    """The cnmkit network a lab's ``cnmkit.networks`` entry becomes."""
    return f"{lab}-{network}"
