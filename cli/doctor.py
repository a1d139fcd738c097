"""``cnmkit doctor``: what cnmkit can use on this host, and what each missing piece disables.

The probing is drivers/capabilities.py (also used by the VLAN driver); this module only prints:
a table for people, ``--format json`` for scripts. It needs no daemon.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cli.output import emit_json, table
from drivers.capabilities import Capability, probe_all, report


def _status(cap: Capability) -> str:
    return {True: "yes", False: "NO", None: "?"}[cap.available]


def render_table(caps: Sequence[Capability], kernel: str) -> str:
    """One row per capability; IF MISSING is shown only for what is missing or unknown."""
    rows = [[c.name, _status(c), c.detail, "" if c.available else c.if_missing] for c in caps]
    missing = [c for c in caps if c.available is False]
    summary = (f"kernel {kernel}: {len(missing)} missing ({', '.join(c.name for c in missing)})" if missing
               else f"kernel {kernel}: everything cnmkit uses is available")
    return table(["FEATURE", "OK", "DETAIL", "IF MISSING"], rows) + summary + "\n"


def register(sub: argparse._SubParsersAction) -> None:
    doctor = sub.add_parser("doctor", help="report what cnmkit can use on this host (tried in a throwaway "
                            "network namespace) and what each missing feature disables")
    doctor.set_defaults(func=cmd_doctor, needs_engine=False)


def cmd_doctor(args: argparse.Namespace) -> None:
    caps = probe_all()
    data = report(caps)
    if args.format == "json":
        emit_json(data)
        return
    sys.stdout.write(render_table(caps, str(data["kernel"])))
