"""Shared fixtures: throwaway network namespaces and tier gating.

Every kernel object a test makes lives in a namespace made here and removed here, whatever the
test's outcome. A tier that cannot run on this machine (not root) is skipped with its reason on
a developer's machine; under ``.ci/run`` (CNMKIT_ALL_TIERS=1) it fails instead, so CI can never
count a skipped tier as coverage.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.etcd_cluster import EtcdCluster

_counter = itertools.count()

# tests/guest/ runs only inside the user-mode-linux guest (tests/uml/ boots it and reports each
# inner test as its own result); a plain `pytest` on the host must not collect it. The guest's init
# and the host-side collection of the inner ids (tests/uml_guest.py) set CNMKIT_GUEST_COLLECT=1.
collect_ignore = [] if os.environ.get("CNMKIT_GUEST_COLLECT") == "1" else ["guest"]


def require_root() -> None:
    if os.geteuid() == 0:
        return
    reason = "needs root (network namespaces)"
    if os.environ.get("CNMKIT_ALL_TIERS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def ip_json(*args: str, netns: str | None = None) -> list[dict]:
    """Ask iproute2 (our independent oracle) for JSON: ``ip_json("link", "show", netns=ns)``."""
    import json

    cmd = ["ip"] + (["-n", netns] if netns else []) + ["-j", "-d", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def in_netns(netns: str, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True,
                          check=check, timeout=timeout)


@pytest.fixture
def netns_factory() -> Iterator[Callable[[str], str]]:
    """Make named namespaces (``cnmt<pid>x<n><tag>``) that are deleted, by name, after the test."""
    require_root()
    made: list[str] = []

    def make(tag: str = "") -> str:
        name = f"cnmt{os.getpid()}x{next(_counter)}{tag}"[:40]
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        made.append(name)
        return name

    yield make
    for name in reversed(made):
        # Processes a test started inside are its own to stop; deleting the name frees the netns
        # once they are gone, and links inside die with it.
        subprocess.run(["ip", "netns", "pids", name], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    leftover = _netns_names() & set(made)
    assert not leftover, f"namespaces left behind: {leftover}"


@pytest.fixture
def netns(netns_factory: Callable[[str], str]) -> str:
    """One throwaway namespace: a test "host" in which the code under test does its kernel work."""
    return netns_factory("h")


def socket_answers(path: str) -> bool:
    """True once a daemon accepts connections on ``path`` (a stale socket file does not count)."""
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """One real 3-member etcd cluster for the session (tests that kill members start their own)."""
    from tests.etcd_cluster import EtcdCluster, require_etcd

    require_etcd()
    cluster = EtcdCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd_cluster_factory() -> Iterator[Callable[[], EtcdCluster]]:
    """Fresh clusters for tests that kill members; all stopped and removed after the test."""
    from tests.etcd_cluster import EtcdCluster, require_etcd

    require_etcd()
    made: list[EtcdCluster] = []

    def make() -> EtcdCluster:
        cluster = EtcdCluster()
        made.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.stop()
