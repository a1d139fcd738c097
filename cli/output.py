"""Human tables by default, JSON for scripts; errors are one line on stderr and exit 1.

Everything a human printer writes goes through ``safe``: names, options and messages come from
the store, the daemon or other clients (dockerd, another user of the socket), and a name holding
an escape sequence or a newline must not be able to drive the terminal or forge table rows.
JSON output needs no such step: ``json.dumps`` (ASCII mode) escapes every control character.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if ch == " " or ch.isprintable():
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe(value: object) -> str:
    """``value`` as text with no control or other non-printable character, escaped as Python does.

    A backslash is left as it is: messages already hold ``repr`` output (``'a\\nb'``), which
    must not come out doubled; what matters is that nothing reaches the terminal as a control
    character. Printable non-ASCII (accents, CJK) stays as it is; format characters such as the bidi
    overrides are escaped, since they reorder what the terminal shows.
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(_escape_char(ch) for ch in text)


def fail(message: str, code: int = 1) -> NoReturn:
    first = message.splitlines()[0] if message.strip() else "failed"
    sys.stderr.write(f"cnmkit: {safe(first)}\n")
    raise SystemExit(code)


def line(*fields: object) -> None:
    """Print one plain output line (fields joined by a space), each field escaped."""
    sys.stdout.write(" ".join(safe(f) for f in fields) + "\n")


def warn(message: str) -> None:
    """One escaped line on stderr for a failure that does not end the command."""
    sys.stderr.write(f"cnmkit: {safe(message)}\n")


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[safe(c) for c in headers]] + [[safe(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"
