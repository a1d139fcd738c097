"""The real-kernel tier: boot user-mode-linux once and report every guest test as its own result.

Each test id of tests/guest/ (collected on the host) becomes ``test_in_guest[<inner id>]``; one
boot per session runs them all, or only those selected here (``pytest tests/uml -k trunk`` boots
and runs just the matching inner tests: tests/uml/conftest.py). An inner failure fails its
outer test with the inner traceback and output; a guest that never booted, or produced no result
for a test, fails that test with the boot console, never passes or skips it
(tests/uml_guest.py ``verdict``). Every outer test records the guest's kernel release
(``guest_kernel`` in the JUnit properties), and the session summary prints it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.uml_guest import ALL_INNER_IDS, GuestRun, verdict

COLLECT_FAILED = "<collection of tests/guest failed>"
_COLLECT_OUTPUT = pytest.StashKey[str]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "inner_id" not in metafunc.fixturenames:
        return
    from tests.uml_guest import collect_guest_tests

    ids, output = collect_guest_tests()
    metafunc.config.stash[_COLLECT_OUTPUT] = output
    metafunc.config.stash[ALL_INNER_IDS] = ids
    params = ids or [COLLECT_FAILED]
    metafunc.parametrize("inner_id", params, ids=[p.split("/")[-1] for p in params])


def test_in_guest(inner_id: str, guest_run: GuestRun, request: pytest.FixtureRequest,
                  record_property: Callable[[str, object], None]) -> None:
    if inner_id == COLLECT_FAILED:
        pytest.fail("collecting tests/guest on the host failed:\n" + request.config.stash.get(_COLLECT_OUTPUT, ""))
    record_property("guest_kernel", guest_run.kernel)
    outcome, message = verdict(inner_id, guest_run)
    if outcome == "failed":
        pytest.fail(message, pytrace=False)
    if outcome == "skipped":
        if os.environ.get("CNMKIT_ALL_TIERS") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
