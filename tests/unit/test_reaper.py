"""Deferred veth deletion (drivers/reaper.py) on FakeKernel: mark, batch, exactly once, reconcile.

The kernel tier (tests/kernel/test_deferred_delete.py) proves the same on real links and across
a SIGKILL; here the driver's decisions are checked one by one, and the reaper thread's batching
is made deterministic with a kernel whose delete blocks until the test lets it go.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from netaddr import IPNetwork

from drivers import naming
from drivers.base import EndpointSpec, EndpointState, IPAMData, JoinRequest, NetworkSpec
from drivers.bridge import BridgeDriver
from drivers.errors import LinkExists
from drivers.firewall import Firewall
from drivers.reaper import IDLE_WAIT, BackgroundReaper, InFlight
from tests.fakekernel import FakeIptables, FakeKernel, FakeSysctl

NID = "1" * 64
EID = "e" * 64
EID2 = "f" * 64
HOST_END = naming.host_veth_name(EID)


class HeldReaper:
    """A reaper that never deletes until told: the state between DeleteEndpoint's answer and the batch."""

    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.submitted = 0

    def submit(self, name: str = "", doomed_alias: str = "") -> None:
        self.submitted += 1

    def close(self) -> None:
        self.kernel.reap_doomed()


def spec() -> NetworkSpec:
    return NetworkSpec(network_id=NID, ipv4=(IPAMData(pool=IPNetwork("10.20.0.0/24"),
                                                      gateway=IPNetwork("10.20.0.1/24")),))


def ep(eid: str = EID) -> EndpointSpec:
    return EndpointSpec(network_id=NID, endpoint_id=eid, address=IPNetwork("10.20.0.2/24"),
                        mac="02:00:00:aa:bb:cc")


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def reaper(kernel: FakeKernel) -> HeldReaper:
    return HeldReaper(kernel)


@pytest.fixture
def driver(kernel: FakeKernel, reaper: HeldReaper, tmp_path: Path) -> BridgeDriver:
    d = BridgeDriver(kernel, Firewall(run=FakeIptables(), sysctl=FakeSysctl()), sandbox_dirs=[str(tmp_path)],
                     reaper=reaper)
    d.create_network(spec())
    return d


def joined(driver: BridgeDriver, eid: str = EID) -> None:
    driver.join(spec(), ep(eid), JoinRequest(network_id=NID, endpoint_id=eid, sandbox_key="/var/run/x"))


def test_delete_endpoint_marks_the_host_end_and_leaves_the_delete_to_the_reaper(
        driver: BridgeDriver, kernel: FakeKernel, reaper: HeldReaper) -> None:
    joined(driver)
    driver.delete_endpoint(spec(), ep())
    link = kernel.link_get(HOST_END)
    assert link is not None and link["alias"] == naming.doomed_alias(EID)
    assert link["group"] == naming.DOOMED_GROUP and reaper.submitted == 1
    driver.delete_endpoint(spec(), ep())               # a retried delete: still marked, nothing else
    driver.close()                                      # the daemon's stop: the last batch
    assert kernel.link_get(HOST_END) is None
    assert naming.container_veth_name(EID) not in kernel.host
    driver.delete_endpoint(spec(), ep())               # gone: nothing to mark, nothing submitted
    assert reaper.submitted == 2


def test_delete_refuses_a_link_that_is_not_ours(driver: BridgeDriver, kernel: FakeKernel) -> None:
    kernel.plant(HOST_END, "veth", alias="somebody-else")
    with pytest.raises(LinkExists):
        driver.delete_endpoint(spec(), ep())
    assert kernel.link_get(HOST_END)["alias"] == "somebody-else"   # type: ignore[index]


def test_a_new_endpoint_with_the_same_id_replaces_its_doomed_predecessor(
        driver: BridgeDriver, kernel: FakeKernel) -> None:
    joined(driver)
    old = kernel.link_get(HOST_END)["index"]          # type: ignore[index]
    driver.delete_endpoint(spec(), ep())
    joined(driver)                                     # same id, before the reaper ran
    link = kernel.link_get(HOST_END)
    assert link is not None and link["alias"] == naming.endpoint_alias(EID) and link["index"] != old
    assert link.get("group") != naming.DOOMED_GROUP
    driver.close()                                     # the batch must not take the new one
    assert kernel.link_get(HOST_END)["alias"] == naming.endpoint_alias(EID)   # type: ignore[index]


def test_reconcile_removes_doomed_links_whatever_the_records_say(driver: BridgeDriver, kernel: FakeKernel) -> None:
    joined(driver)
    joined(driver, EID2)
    driver.delete_endpoint(spec(), ep())
    dry = driver.reconcile(lambda: ({NID}, {EID2}), dry_run=True)
    assert dry == [f"delete link {HOST_END} (endpoint {EID[:12]} was deleted, its link marked doomed)"]
    assert kernel.link_get(HOST_END) is not None
    assert driver.reconcile(lambda: ({NID}, {EID2}), dry_run=False) == dry
    assert kernel.link_get(HOST_END) is None
    assert kernel.link_get(naming.host_veth_name(EID2))["alias"] == naming.endpoint_alias(EID2)  # type: ignore[index]


def test_converging_a_recorded_endpoint_whose_link_is_doomed_makes_it_afresh(
        driver: BridgeDriver, kernel: FakeKernel) -> None:
    """A crash between the mark and the record's removal: the record (joined) wins, the link is re-made."""
    joined(driver)
    driver.delete_endpoint(spec(), ep())
    state = EndpointState(spec=ep(), joined=True)
    actions = driver.ensure_endpoints(spec(), [state], dry_run=False)
    assert actions[0] == f"delete doomed veth {HOST_END} of endpoint {EID[:12]}"
    link = kernel.link_get(HOST_END)
    assert link is not None and link["alias"] == naming.endpoint_alias(EID)
    assert driver.ensure_endpoints(spec(), [state], dry_run=False) == []


def test_converging_a_left_endpoint_whose_link_is_doomed_only_deletes_it(
        driver: BridgeDriver, kernel: FakeKernel) -> None:
    """Leave marked the pair and the daemon died before DeleteEndpoint: not joined, nothing re-made."""
    joined(driver)
    driver.leave(spec(), ep())
    assert kernel.link_get(HOST_END)["alias"] == naming.doomed_alias(EID)  # type: ignore[index]
    state = EndpointState(spec=ep(), joined=False)
    assert driver.ensure_endpoints(spec(), [state], dry_run=False) == [
        f"delete doomed veth {HOST_END} of endpoint {EID[:12]}"]
    assert kernel.link_get(HOST_END) is None
    assert driver.ensure_endpoints(spec(), [state], dry_run=False) == []


def test_delete_network_marks_the_bridge_down_and_a_new_create_takes_the_name(
        driver: BridgeDriver, kernel: FakeKernel, reaper: HeldReaper) -> None:
    bridge = naming.bridge_name(NID)
    driver.create_network(spec())
    driver.delete_network(spec())
    link = kernel.link_get(bridge)
    assert link is not None and link["alias"] == naming.doomed_alias(NID) and not link["up"]
    assert reaper.submitted == 1
    assert driver.ensure_network(spec(), dry_run=True)[0] == (
        f"delete doomed bridge {bridge}, network {NID[:12]} is still on record")
    driver.create_network(spec())                     # the same id again before the reaper ran
    link = kernel.link_get(bridge)
    assert link is not None and link["alias"] == naming.network_alias(NID)
    assert driver.reconcile(lambda: ({NID}, set()), dry_run=True) == []


class GatedKernel(FakeKernel):
    """reap_doomed blocks until released, and counts its calls: the reaper thread made observable."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.entered = threading.Semaphore(0)
        self.release = threading.Semaphore(0)

    def reap_doomed(self) -> None:
        self.calls += 1
        self.entered.release()
        self.release.acquire()
        super().reap_doomed()


def test_marks_made_while_a_batch_runs_are_all_deleted_by_the_next_single_batch() -> None:
    kernel = GatedKernel()
    reaper = BackgroundReaper(kernel, hold=False)
    kernel.plant("a0", "veth", alias="x:0")
    kernel.link_doom("a0", alias="x:0", doomed_alias="d:0")
    reaper.submit()
    assert kernel.entered.acquire(timeout=60)          # the first batch is running (and blocked)
    for i in range(1, 6):
        kernel.plant(f"a{i}", "veth", alias=f"x:{i}")
        kernel.link_doom(f"a{i}", alias=f"x:{i}", doomed_alias=f"d:{i}")
        reaper.submit()
    kernel.release.release()                           # batch 1 ends; the five wait for batch 2
    assert kernel.entered.acquire(timeout=60)
    kernel.release.release()
    kernel.release.release()                           # for close()'s final batch
    reaper.close()
    assert kernel.calls == 3 and reaper.batches == 3   # 1, then all five at once, then the close
    assert [n for n in kernel.host if n.startswith("a")] == []


def test_a_batch_waits_until_no_request_is_in_flight() -> None:
    """The batch a request's mark starts waits for that request's answer (InFlight back to 0)."""
    kernel = GatedKernel()
    inflight = InFlight()
    asked: list[float] = []

    class Watched:                                     # InFlight without the give-up: no clock in the test
        def wait_idle(self, timeout: float) -> bool:
            asked.append(timeout)
            return inflight.wait_idle(None)

    reaper = BackgroundReaper(kernel, hold=False, idle=Watched())
    inflight.enter()                                   # a request marks a link and submits
    kernel.plant("a0", "veth", alias="x:0")
    kernel.link_doom("a0", alias="x:0", doomed_alias="d:0")
    reaper.submit()
    inflight.enter()                                   # a second request overlaps it
    inflight.leave()
    assert kernel.calls == 0 and not kernel.entered.acquire(blocking=False)
    inflight.leave()                                   # the last answer is out: the batch may go
    assert kernel.entered.acquire(timeout=60)
    kernel.release.release()
    kernel.release.release()                           # for close()'s final batch
    reaper.close()
    assert asked == [IDLE_WAIT] and kernel.link_get("a0") is None


def test_one_named_link_is_deleted_at_once_by_name_without_a_batch_or_waiting() -> None:
    """After Leave the delete must start before dockerd reads the answer: no dump, no InFlight wait."""
    deleted = threading.Event()
    asked: list[float] = []

    class Counting(FakeKernel):
        reaps = 0

        def reap_doomed(self) -> None:
            Counting.reaps += 1
            super().reap_doomed()

        def link_delete(self, name: str, *, alias: str) -> bool:
            gone = super().link_delete(name, alias=alias)
            deleted.set()
            return gone

    class Busy:                                        # a request is always in flight
        def wait_idle(self, timeout: float) -> bool:
            asked.append(timeout)
            return False

    kernel = Counting()
    reaper = BackgroundReaper(kernel, hold=False, idle=Busy())
    kernel.plant("a0", "veth", alias="x:0")
    kernel.link_doom("a0", alias="x:0", doomed_alias="d:0")
    reaper.submit("a0", "d:0")
    assert deleted.wait(timeout=60)
    assert kernel.link_get("a0") is None and Counting.reaps == 0 and asked == []
    reaper.close()


def test_a_named_link_that_lost_its_mark_is_left_alone() -> None:
    """The same endpoint id joined again before the reaper ran: the name is no longer doomed."""
    kernel = FakeKernel()
    reaper = BackgroundReaper(kernel, hold=False)
    kernel.plant("a0", "veth", alias="x:0")
    reaper.submit("a0", "d:0")                        # its mark is "x:0" now, not "d:0"
    reaper.close()
    assert kernel.link_get("a0") is not None


def test_in_flight_gives_up_waiting_after_the_timeout() -> None:
    inflight = InFlight()
    assert inflight.wait_idle(0) is True
    inflight.enter()
    assert inflight.wait_idle(0) is False
    inflight.leave()
    assert inflight.wait_idle(0) is True


def test_a_held_reaper_deletes_nothing_even_on_close() -> None:
    kernel = FakeKernel()
    reaper = BackgroundReaper(kernel, hold=True)
    kernel.plant("a0", "veth", alias="x:0")
    kernel.link_doom("a0", alias="x:0", doomed_alias="d:0")
    reaper.submit()
    reaper.close()
    assert kernel.link_get("a0") is not None and reaper.batches == 0


def test_the_agent_removes_doomed_links_even_when_it_leaves_other_orphans_alone(
        driver: BridgeDriver, kernel: FakeKernel) -> None:
    """An unattended pass on a store with no network keeps marked objects (maybe the wrong store),
    but a doomed link was condemned by the DeleteEndpoint that marked it: it goes all the same."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from agent.reconcile import Agent
    from store.memory import MemoryStore

    joined(driver)
    joined(driver, EID2)
    driver.delete_endpoint(spec(), ep())
    with ThreadPoolExecutor(2) as pool:
        actions = asyncio.run(Agent(MemoryStore(), {driver.name: driver}, pool).reconcile(unattended=True))
    assert actions == [f"delete link {HOST_END} (endpoint {EID[:12]} was deleted, its link marked doomed)"]
    assert kernel.link_get(HOST_END) is None
    assert kernel.link_get(naming.host_veth_name(EID2)) is not None       # an orphan, left alone
