"""Quoting client values in messages: bounded, one line, no control characters.

A leaf module (no imports from the project) because the protocol layer, the drivers and IPAM
all echo values a client sent, and none of them may let a hostile value grow a reply or a log
line without bound or write a newline or a terminal escape sequence into the daemon's log.
"""

from __future__ import annotations

import re

SHOWN_MAX = 64            # characters of one client value quoted in a message
MESSAGE_MAX = 1024        # characters of one whole error message, in a reply or a log line

_UNSAFE = re.compile(r"[^\x20-\x7e\u00a0-\u2027\u202a-\uffff]")   # control chars, DEL, C1, U+2028/9


def _escape(char: re.Match[str]) -> str:
    code = ord(char.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shown(value: object, limit: int = SHOWN_MAX) -> str:
    """A client-supplied value as an error message may quote it: repr-like, bounded, one safe line.

    Errors echo what the client sent so the user sees what was wrong, but a hostile client must
    not be able to make a reply or a log line arbitrarily long, nor put a newline or a terminal
    escape sequence into the daemon's log. Strings are quoted as ``repr`` quotes them (so an empty
    or blank value is visible and control characters are escaped); past ``limit`` characters the
    value is cut and its full length said.
    """
    if isinstance(value, str):
        text = repr(value[:limit])
        length = len(value)
    else:
        whole = repr(value)
        text = _UNSAFE.sub(_escape, whole[:limit])
        length = len(whole)
    return text + (f"...({length} chars)" if length > limit else "")


def shown_key(key: str, limit: int = SHOWN_MAX) -> str:
    """A client-chosen key inside a field path (``Options.<key>``): like ``shown``, without quotes."""
    text = repr(key[:limit])[1:-1]
    return text + (f"...({len(key)} chars)" if len(key) > limit else "")


def bounded(message: str) -> str:
    """A whole message made safe for a reply or a log line: control characters escaped, length capped.

    The last line of defence for messages built from exception texts we do not control.
    """
    text = _UNSAFE.sub(_escape, message)
    return text if len(text) <= MESSAGE_MAX else text[:MESSAGE_MAX] + f"...({len(text)} chars)"
