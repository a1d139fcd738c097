"""One user-mode-linux boot per session for the real-kernel tier, and its kernel in the summary.

The boot needs root (the guest's init mounts and builds namespaces as the guest's root, but the
UML process itself writes its results into a host directory and must be able to ptrace its own
children), linux.uml and kmod: without them the tier skips, or fails under CNMKIT_ALL_TIERS=1.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.uml_guest import ALL_INNER_IDS, GuestRun, boot, missing_tools

_RUN = pytest.StashKey[GuestRun]()


def require_uml() -> None:
    missing = missing_tools()
    if not missing:
        return
    reason = "user-mode-linux tier needs " + ", ".join(missing) + " (scripts/install.sh installs them)"
    if os.environ.get("CNMKIT_ALL_TIERS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def guest_run(request: pytest.FixtureRequest) -> Iterator[GuestRun]:
    require_root()
    require_uml()
    workdir = Path(tempfile.mkdtemp(prefix="cnmkit-uml-"))
    try:
        run = boot(targets=_selected_inner_ids(request.session), workdir=workdir)
        request.config.stash[_RUN] = run
        yield run
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _selected_inner_ids(session: pytest.Session) -> list[str]:
    """The inner ids of the outer tests this session runs, or [] (= all of tests/guest) when it
    runs them all: `pytest tests/uml -k trunk` then boots for the trunk tests only."""
    selected = [str(item.callspec.params["inner_id"]) for item in session.items
                if isinstance(item, pytest.Function) and hasattr(item, "callspec")
                and "inner_id" in item.callspec.params]
    everything = session.config.stash.get(ALL_INNER_IDS, [])
    return [] if not selected or set(selected) >= set(everything) else selected


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    run = config.stash.get(_RUN, None)
    if run is None:
        return
    terminalreporter.write_sep("-", "user-mode-linux tier")
    workaround = "with" if run.workaround else "without"
    terminalreporter.write_line(f"guest kernel: {run.kernel or '(never booted)'} ({workaround} the AVX-512/AMX "
                                f"xstate workaround); inner pytest exit status {run.pytest_rc}")
