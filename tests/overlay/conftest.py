"""The overlay tier: one multi-host lab (tests/overlay/harness.py) for the whole tier.

Building the lab (namespaces, a 3-member etcd, a daemon per host) costs seconds on a loaded
2-core machine, so it is built once per session and every test leaves it as it found it: the
tests that kill a daemon or etcd members bring them back before they end, and each test's
containers and networks are removed by name (``names`` fixture) even when it fails.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import require_root
from tests.etcd_cluster import require_etcd
from tests.overlay.harness import Lab
from tests.runtime.conftest import require_tool

HOSTS = 3
_counter = itertools.count()


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    require_root()
    require_etcd()
    for tool, package in (("nsenter", "util-linux"), ("bridge", "iproute2"), ("iperf3", "iperf3")):
        require_tool(tool, package)
    made = Lab(HOSTS).start()
    try:
        made.wait_hosts([h.name for h in made.hosts])
        yield made
    finally:
        made.close()


@pytest.fixture
def names(lab: Lab) -> Iterator[Callable[[str], str]]:
    """Unique names for this test's containers and networks, removed by name on every host after it."""
    made: list[str] = []

    def make(tag: str) -> str:
        name = f"t{next(_counter)}{tag}"
        made.append(name)
        return name

    yield make
    for host in lab.hosts:
        if host.daemon is None:
            continue
        mine = [n for n in host.container_names() if n in made]
        if mine:
            host.cli("rm", "-f", *mine, check=False)
    for host in lab.hosts:
        if host.daemon is None:
            continue
        existing = {n["Name"] for n in host.json("network", "ls")}
        for name in made:
            if name in existing:
                host.cli("network", "rm", name, check=False)
