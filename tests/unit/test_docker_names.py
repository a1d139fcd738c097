"""Names of dockerd's containers, learnt after Join (agent/dockernames.py), on a fake dockerd.

The overlay tier proves it with a real dockerd (tests/overlay/test_overlay_hosts.py); here each
rule is pinned: found -> recorded through the manager, validated; not yet listed -> retried;
endpoint gone -> stops; a network dockerd does not know (the CLI's) -> stops at once; the
runtime's Joins and other drivers' endpoints are never looked up; hostile answers record
nothing bad. One test goes through a real HTTP server on a unix socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from netaddr import IPNetwork

from agent.dockernames import DockerUnreachable, NameLearner, UnixDockerAPI, names_value
from drivers.base import EndpointSpec, JoinRequest, NetworkSpec
from drivers.manager import NetworkManager
from store import records
from store.memory import MemoryStore
from store.records import NAMES_OPTION, EndpointRecord, NetworkRecord

NID, EID, CID = "a" * 64, "b" * 64, "c" * 64
T = TypeVar("T")


class FakeDocker:
    """Answers from dicts; ``listed_after`` GETs of the network pass before the endpoint shows."""

    def __init__(self, *, name: str = "web", hostname: str = "cccccccccccc", aliases: Any = None,
                 listed_after: int = 0, known: bool = True, down: int = 0) -> None:
        self.name, self.hostname, self.known, self.down = name, hostname, known, down
        self.aliases = ["www", "cccccccccccc"] if aliases is None else aliases
        self.listed_after = listed_after
        self.calls: list[str] = []

    async def get(self, path: str) -> tuple[int, Any]:
        self.calls.append(path)
        if self.down:
            self.down -= 1
            raise DockerUnreachable("refused")
        if path == f"/networks/{NID}":
            if not self.known:
                return 404, {"message": "network not found"}
            shown = sum(c.startswith("/networks/") for c in self.calls) > self.listed_after
            entry = {"Name": self.name, "EndpointID": EID, "MacAddress": "02:42:0a:00:00:02"}
            return 200, {"Id": NID, "Containers": {CID: entry} if shown else {f"ep-{EID}": entry}}
        if path == f"/containers/{CID}/json":
            return 200, {"Config": {"Hostname": self.hostname},
                         "NetworkSettings": {"Networks": {"ov": {"EndpointID": EID, "Aliases": self.aliases}}}}
        return 404, None

    async def close(self) -> None:
        pass


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    s = MemoryStore()
    yield s
    s.close()


def put_endpoint(store: MemoryStore, driver: str = "cnmkit-vxlan", options: dict[str, object] | None = None) -> None:
    store.put(records.network_key(NID), NetworkRecord(driver, NetworkSpec(network_id=NID), host="h1").encode())
    spec = EndpointSpec(network_id=NID, endpoint_id=EID, address=IPNetwork("10.77.0.2/24"), options=options or {})
    store.put(records.endpoint_key(NID, EID), EndpointRecord(spec=spec, sandbox="/x", host="h1").encode())


def names_on_record(store: MemoryStore) -> object:
    kv = store.get(records.endpoint_key(NID, EID))
    return None if kv is None else EndpointRecord.decode(kv.value).spec.options.get(NAMES_OPTION)


def with_learner(store: MemoryStore, docker: Any, body: Callable[[NameLearner], Awaitable[T]]) -> T:
    """``body(learner)`` on a loop, the learner wired to a manager on ``store`` as the daemon wires it."""
    async def go() -> T:
        with ThreadPoolExecutor(max_workers=2) as pool:
            manager = NetworkManager(store, {}, pool, host_id="h1")
            loop = asyncio.get_running_loop()
            learner = NameLearner(docker, store, manager.record_names, first_delay=0.001, max_delay=0.004,
                                  unreachable_delay=0.004, run=lambda fn, *a: loop.run_in_executor(pool, fn, *a))
            return await body(learner)

    return asyncio.run(go())


def learn(store: MemoryStore, docker: Any, *, gone_after: int | None = None) -> str:
    if gone_after is not None:
        real = docker.get

        async def get(path: str) -> tuple[int, Any]:
            if len(docker.calls) >= gone_after:
                store.delete(records.endpoint_key(NID, EID))
            return await real(path)

        docker.get = get
    return with_learner(store, docker, lambda learner: learner.learn(NID, EID))


def test_the_name_hostname_and_aliases_are_recorded_once_dockerd_lists_the_container(store: MemoryStore) -> None:
    put_endpoint(store)
    docker = FakeDocker(listed_after=3)            # "ep-<id>" three times: retried, not given up
    assert learn(store, docker).startswith("recorded")
    assert names_on_record(store) == "web,cccccccccccc,www"     # the short id is the hostname: once
    assert docker.calls.count(f"/networks/{NID}") == 4


def test_dockerd_away_is_retried_while_the_endpoint_exists(store: MemoryStore) -> None:
    put_endpoint(store)
    assert learn(store, FakeDocker(down=3)).startswith("recorded")
    assert names_on_record(store) == "web,cccccccccccc,www"


def test_an_endpoint_removed_before_dockerd_lists_it_ends_the_look_up(store: MemoryStore) -> None:
    put_endpoint(store)
    assert learn(store, FakeDocker(listed_after=10**6), gone_after=5) == "gone"
    assert names_on_record(store) is None


def test_a_network_dockerd_does_not_know_is_not_dockerds_and_is_not_retried(store: MemoryStore) -> None:
    put_endpoint(store)
    docker = FakeDocker(known=False)
    assert learn(store, docker) == "not dockerd's"
    assert docker.calls == [f"/networks/{NID}"] and names_on_record(store) is None


def test_endpoints_with_names_or_of_other_drivers_are_not_looked_up(store: MemoryStore) -> None:
    put_endpoint(store, options={NAMES_OPTION: "box,box"})
    docker = FakeDocker()
    assert learn(store, docker) == "named" and docker.calls == []
    put_endpoint(store, driver="cnmkit-bridge")
    assert learn(store, docker) == "other" and docker.calls == []


@pytest.mark.parametrize(("name", "hostname", "aliases", "recorded"), [
    ("web\n10.0.0.1 bank", "h", [], None),                         # a bad name records nothing
    ("web", "x 10.0.0.9 bank", ["ok", "bad,comma", "-dash", "a" * 300, 7], "web,,ok"),
    ("/web", "web", ["web", "ok", "ok"], "web,web,ok"),            # duplicates once, "/" of old APIs
])
def test_hostile_names_from_the_api_never_reach_the_record(store: MemoryStore, name: str, hostname: str,
                                                           aliases: list[Any], recorded: str | None) -> None:
    put_endpoint(store)
    outcome = learn(store, FakeDocker(name=name, hostname=hostname, aliases=aliases))
    assert names_on_record(store) == recorded
    assert outcome == ("bad name" if recorded is None else f"recorded {recorded}")


def test_names_value_caps_the_aliases() -> None:
    value = names_value("web", "", [f"a{i}" for i in range(100)])
    assert value is not None and len(value.split(",")) == 2 + 32


def test_the_join_hook_skips_the_runtimes_joins_and_schedules_dockerds(store: MemoryStore) -> None:
    put_endpoint(store)

    async def body(learner: NameLearner) -> tuple[int, int]:
        learner.joined(JoinRequest(NID, EID, "/x", options={"cnmkit.direct": False}))
        runtime = len(learner.tasks)
        learner.joined(JoinRequest(NID, EID, "/x", options={}))
        learner.joined(JoinRequest(NID, EID, "/x", options={}))         # the same endpoint: one task
        dockerd = len(learner.tasks)
        await asyncio.gather(*learner.tasks.values())
        return runtime, dockerd

    assert with_learner(store, FakeDocker(), body) == (0, 1)
    assert names_on_record(store) == "web,cccccccccccc,www"


def test_dockerds_joins_on_other_drivers_networks_cost_one_read_per_network(store: MemoryStore) -> None:
    put_endpoint(store, driver="cnmkit-bridge")
    docker = FakeDocker()

    async def body(learner: NameLearner) -> list[int]:
        counts = []
        for _ in range(3):
            learner.joined(JoinRequest(NID, EID, "/x", options={}))
            counts.append(len(learner.tasks))
            await asyncio.gather(*learner.tasks.values())
        return counts

    assert with_learner(store, docker, body) == [1, 0, 0] and docker.calls == []


def test_the_unix_socket_client_reads_dockerds_json_and_reports_no_answer(tmp_path: Path) -> None:
    async def network(request: web.Request) -> web.Response:
        return web.json_response({"Containers": {}}, status=200 if request.match_info["id"] == NID else 404)

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    async def go() -> list[object]:
        app = web.Application()
        app.router.add_get("/networks/{id}", network)
        app.router.add_get("/containers/{id}/json", broken)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = str(tmp_path / "docker.sock")
        await web.UnixSite(runner, sock).start()
        api, missing = UnixDockerAPI(sock), UnixDockerAPI(str(tmp_path / "absent.sock"))
        out: list[object] = [await api.get(f"/networks/{NID}"), await api.get(f"/networks/{EID}")]
        for client, path in ((api, f"/containers/{CID}/json"), (missing, "/networks/x")):
            try:
                await client.get(path)
            except DockerUnreachable:
                out.append("unreachable")
        await api.close()
        await missing.close()
        await runner.cleanup()
        return out

    assert asyncio.run(go()) == [(200, {"Containers": {}}), (404, None), "unreachable", "unreachable"]


def test_a_restarted_daemon_looks_up_its_joined_overlay_endpoints_that_have_no_names(store: MemoryStore) -> None:
    put_endpoint(store)
    other = EndpointSpec(network_id=NID, endpoint_id="d" * 64, options={NAMES_OPTION: "box,box"})
    store.put(records.endpoint_key(NID, "d" * 64), EndpointRecord(spec=other, sandbox="/y", host="h1").encode())

    async def body(learner: NameLearner) -> tuple[int, int]:
        elsewhere = await learner.sweep("h2")          # another host's endpoints: not ours to ask
        here = await learner.sweep("h1")
        await asyncio.gather(*learner.tasks.values())
        return elsewhere, here

    assert with_learner(store, FakeDocker(), body) == (0, 1)
    assert names_on_record(store) == "web,cccccccccccc,www"
