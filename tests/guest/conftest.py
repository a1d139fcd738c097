"""Guest tests: they run only inside the user-mode-linux guest that tests/uml/ boots.

How to add one: put a ``test_*.py`` here (basename unique across tests/), using the shared
fixtures (``netns_factory``, ``ip_json``, ... from tests/conftest.py work inside: the guest has its
own /run/netns on tmpfs). The guest is root, has 8021q, bridge, br_netfilter, veth, macvlan,
vxlan and legacy iptables loaded (tests/uml_guest.py GUEST_MODULES; other modules load on
demand), and tcpdump and the virtualenv's python on PATH. The outer tier collects the new test's
id on the host and reports it as ``tests/uml/test_in_guest.py::test_in_guest[<inner id>]``.

Why the refusal: on the host these tests would either fail for want of 802.1Q or, worse, build
their trunks in the host's kernel; tests/conftest.py does not collect this folder on the host, and
if someone runs it anyway (CNMKIT_GUEST_COLLECT=1) every test fails here with the reason.

Reporting: with CNMKIT_GUEST_RESULTS set (the init script sets it to a file on hostfs), every
test phase and every collection error is appended as one JSON line, flushed at once, so a guest
that dies mid-run still leaves the results it had.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

GUEST_ENV = "CNMKIT_UML_GUEST"
RESULTS_ENV = "CNMKIT_GUEST_RESULTS"


def in_uml_guest() -> bool:
    """True only inside the guest our init script started: it sets CNMKIT_UML_GUEST to the
    guest's kernel release, and /proc/cpuinfo there names User Mode Linux (on the host it does
    not, whatever the environment says)."""
    if os.environ.get(GUEST_ENV) != os.uname().release:
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            return "User Mode Linux" in fh.read()
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _only_in_the_guest() -> Iterator[None]:
    if not in_uml_guest():
        pytest.fail("guest test: runs only inside the user-mode-linux guest; run tests/uml/test_in_guest.py")
    yield


def _append(record: dict) -> None:
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    record["kernel"] = os.uname().release
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _append({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
             "duration": report.duration, "longrepr": str(report.longrepr) if report.longrepr else "",
             "sections": [[title, text] for title, text in report.sections]})


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _append({"nodeid": report.nodeid, "when": "collect", "outcome": "failed", "duration": 0.0,
                 "longrepr": str(report.longrepr), "sections": []})
