"""Human tables by default, JSON for scripts; errors are one line on stderr and exit 1."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn


def fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"cnmkit: {message.splitlines()[0] if message else 'failed'}\n")
    raise SystemExit(code)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"
