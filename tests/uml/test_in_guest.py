"""The real-kernel tier: boot user-mode-linux once and report every guest test as its own result.

Each test id of tests/guest/ (collected on the host) becomes ``test_in_guest[<inner id>]``; one
boot per session runs them all (tests/uml_guest.py). An inner failure fails its outer test with
the inner traceback and output; a guest that never booted, or produced no result for a test,
fails that test with the boot console, never passes or skips it. Every outer test records the
guest's kernel release (``guest_kernel`` in the JUnit properties), and the session summary prints
it (tests/uml/conftest.py).
"""

from __future__ import annotations

import os

import pytest

from tests.uml_guest import GuestRun

COLLECT_FAILED = "<collection of tests/guest failed>"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "inner_id" not in metafunc.fixturenames:
        return
    from tests.uml_guest import collect_guest_tests

    ids, output = collect_guest_tests()
    metafunc.config.stash[_COLLECT_OUTPUT] = output
    params = ids or [COLLECT_FAILED]
    metafunc.parametrize("inner_id", params, ids=[p.split("/")[-1] for p in params])


_COLLECT_OUTPUT = pytest.StashKey[str]()


def _describe(phase: dict) -> str:
    sections = "\n".join(f"--- {title} ---\n{text}" for title, text in phase.get("sections", []))
    return f"[{phase['when']}] {phase['outcome']}\n{phase.get('longrepr', '')}\n{sections}".rstrip()


def test_in_guest(inner_id: str, guest_run: GuestRun, request: pytest.FixtureRequest,
                  record_property: pytest.RecordProperty) -> None:
    if inner_id == COLLECT_FAILED:
        pytest.fail("collecting tests/guest on the host failed:\n" + request.config.stash.get(_COLLECT_OUTPUT, ""))
    record_property("guest_kernel", guest_run.kernel)
    if not guest_run.booted:
        pytest.fail(f"the user-mode-linux guest never booted (no kernel release reported)\n{guest_run.evidence()}",
                    pytrace=False)
    phases = guest_run.reports.get(inner_id, [])
    collect_errors = [p for key, reports in guest_run.reports.items() for p in reports
                      if p["when"] == "collect" and inner_id.startswith(key)]
    if collect_errors:
        pytest.fail(f"inner collection failed on kernel {guest_run.kernel}:\n"
                    + "\n".join(_describe(p) for p in collect_errors), pytrace=False)
    if not any(p["when"] == "call" for p in phases) and not any(p["outcome"] != "passed" for p in phases):
        pytest.fail(f"no result from the guest for {inner_id}\n{guest_run.evidence()}", pytrace=False)
    bad = [p for p in phases if p["outcome"] == "failed"]
    if bad:
        pytest.fail(f"{inner_id} failed inside the guest (kernel {guest_run.kernel}):\n"
                    + "\n\n".join(_describe(p) for p in bad), pytrace=False)
    skipped = [p for p in phases if p["outcome"] == "skipped"]
    if skipped:
        reason = f"skipped inside the guest (kernel {guest_run.kernel}): {skipped[0].get('longrepr', '')}"
        if os.environ.get("CNMKIT_ALL_TIERS") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
