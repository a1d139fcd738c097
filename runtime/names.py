"""What a container name, a hostname and a network alias may be.

These strings end up as words of every peer's /etc/hosts (runtime/hosts.py), in /etc/hostname,
in ``sethostname`` and on the operator's terminal. A space, a tab or a newline in one of them
would let a container's creator add entries to other containers' hosts files (``--hostname
'x 10.0.0.1 bank'``); so they are checked where they come in, with the rules Docker applies:

- container name: Docker's ``[a-zA-Z0-9][a-zA-Z0-9_.-]*``, at most 64 characters;
- hostname and alias: RFC 1123 host names: dot-separated labels of letters, digits and '-',
  not starting or ending with '-', each 1..63 characters, at most 253 in all.

The patterns are matched with ``fullmatch``: ``re.match(r"^...$")`` accepts a trailing newline.
"""

from __future__ import annotations

import re

MAX_NAME = 64
MAX_HOSTNAME = 253
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# What hosts.py accepts as one word of a hosts line: the union of the two rules above.
HOSTS_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
_ECHO_MAX = 64


class InvalidName(ValueError):
    """A refused name; the message names the option and is one printable line."""


def _shown(value: str) -> str:
    """The refused value as the message shows it: repr (escapes control characters), bounded."""
    return repr(value[:_ECHO_MAX]) + ("..." if len(value) > _ECHO_MAX else "")


def is_hostname(value: str) -> bool:
    if not value or len(value) > MAX_HOSTNAME:
        return False
    return all(_LABEL_RE.fullmatch(label) for label in value.split("."))


def check_container_name(value: str, option: str = "--name") -> str:
    if len(value) > MAX_NAME or not _NAME_RE.fullmatch(value):
        raise InvalidName(f"{option} {_shown(value)}: a container name is letters, digits, '_', '.', '-', "
                         f"starts with a letter or digit, at most {MAX_NAME} characters")
    return value


def check_hostname(value: str, option: str = "--hostname") -> str:
    if not is_hostname(value):
        raise InvalidName(f"{option} {_shown(value)}: not an RFC 1123 host name (dot-separated labels of "
                         "letters, digits and '-', not starting or ending with '-', each at most 63, "
                         f"at most {MAX_HOSTNAME} in all)")
    return value


def check_alias(value: str, option: str = "--alias") -> str:
    return check_hostname(value, option)


def is_hosts_word(value: str) -> bool:
    """True if ``value`` can be written as one name on a hosts line without changing its meaning."""
    return bool(HOSTS_WORD_RE.fullmatch(value))
