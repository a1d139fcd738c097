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
from tests.overlay.dockerd import HostDockerd
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
        mine = [r["Name"] for r in host.json("ps", "-a") if r["Name"] in made]
        if mine:
            host.cli("rm", "-f", *mine, check=False)
    live = [h for h in lab.hosts if h.daemon is not None]
    if not live:
        return
    # A network is removed through the host whose kernel has it, so its bridge is gone when the rm
    # returns (removed through another host, the owner removes it on its watch event, a moment later).
    for net in live[0].json("network", "ls"):
        if net["Name"] in made:
            alias = f"cnmkit:net:{net['Id']}"
            owner = next((h for h in live if any(str(link.get("ifalias", "")) == alias
                                                 for link in h.ip_json("link", "show"))), live[0])
            owner.cli("network", "rm", net["Name"], check=False)


@pytest.fixture(scope="session")
def docker_h1(lab: Lab) -> Iterator[HostDockerd]:
    """A real dockerd in host h1 (its own mount namespace, h1's plugin sockets), started once."""
    require_tool("dockerd", "docker.io")
    require_tool("unshare", "util-linux")
    engine = HostDockerd(lab.hosts[0])
    try:
        engine.start()
        engine.image = engine.import_busybox()
        yield engine
    finally:
        engine.stop()
