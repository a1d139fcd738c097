"""Names of dockerd's containers on an overlay, learnt from the local dockerd after their Join.

The remote driver protocol never tells a plugin which container an endpoint is for, so the
endpoint record of a container dockerd started has no name, and no other host could resolve
it. The runtime gives its names at CreateEndpoint (``NAMES_OPTION``); for dockerd's endpoints
this host's daemon asks dockerd itself, after the Join:

- never during the call: dockerd holds its own locks around a driver call, and at engine start
  it runs restart-policy containers before serving its API (protocol.md §6.1), so a call made
  from the handler could deadlock both. The Join hook only schedules a task;
- ``GET /networks/<id>`` (the NetworkID dockerd sent is its own network id) lists
  ``Containers`` with each one's ``EndpointID`` (the one dockerd sent in CreateEndpoint) and
  ``Name``; ``GET /containers/<id>/json`` adds the hostname and the ``--network-alias`` names
  (dockerd 20.10 lists the short container id among them);
- retried with a capped backoff until found or the endpoint record is gone (dockerd writes the
  container into the network only after the Join); a 404 for the network means it is not
  dockerd's (the CLI's own network) and ends the task at once;
- every name is checked as a client-given one (runtime/names.py) before it is recorded: it ends
  up in other containers' hosts files and in DNS answers. A bad hostname or alias is dropped,
  a bad container name records nothing.

The names go into the endpoint record's ``Spec.Options`` under ``NAMES_OPTION``, exactly where
the runtime puts its own, through the manager (under the network's lock, by compare-and-swap).
Only endpoints of the overlay driver are looked up (only other hosts need the names; a bridge
network's containers are all on one engine, whose DNS knows them), and only Joins that did not
come from cnmkit's runtime (which always sends ``cnmkit.direct``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp

from drivers.base import JoinRequest
from drivers.naming import check_id
from plugin.protocol import DIRECT_OPTION
from runtime.names import InvalidName, check_alias, check_container_name, check_hostname
from store import records
from store.base import Store
from store.records import NAMES_OPTION, EndpointRecord, NetworkRecord

log = logging.getLogger("cnmkit.dockernames")

DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
OVERLAY_DRIVER = "cnmkit-vxlan"
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
_MAX_NAMES = 32                       # a container with more aliases than this keeps the first ones


class DockerUnreachable(Exception):
    """dockerd did not answer (no socket, refused, timed out, a 5xx): try again later."""


class DockerAPI(Protocol):
    async def get(self, path: str) -> tuple[int, Any]: ...

    async def close(self) -> None: ...


class UnixDockerAPI:
    """GET requests to dockerd's API on its unix socket; one session, opened on first use."""

    def __init__(self, path: str, *, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def get(self, path: str) -> tuple[int, Any]:
        """(status, decoded JSON body or None); ``DockerUnreachable`` when there was no answer."""
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.path),
                                                  timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            async with self._session.get(f"http://docker{path}") as resp:
                if resp.status >= 500:
                    raise DockerUnreachable(f"{path}: HTTP {resp.status}")
                body = await resp.json(content_type=None) if resp.status == 200 else None
                return resp.status, body
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise DockerUnreachable(f"{self.path}: {exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _checked(value: object, check: Callable[[str, str], str], what: str) -> str:
    """``value`` if it is a string ``check`` accepts, else "" (logged): hostile input stops here."""
    if not isinstance(value, str) or not value:
        return ""
    try:
        return check(value, what)
    except InvalidName as exc:
        log.warning("docker names: leaving out %s", exc)
        return ""


def endpoint_entry(network: Any, endpoint_id: str) -> tuple[str, str] | None:
    """(key, container name) of the endpoint in dockerd's network inspect, None if not listed.

    The key is the container id once dockerd has written the container's sandbox into the
    network, ``ep-<endpoint id>`` before that.
    """
    containers = network.get("Containers") if isinstance(network, dict) else None
    if not isinstance(containers, dict):
        return None
    for key, entry in containers.items():
        if isinstance(entry, dict) and entry.get("EndpointID") == endpoint_id:
            name = entry.get("Name")
            return str(key), name if isinstance(name, str) else ""
    return None


def container_extras(container: Any, endpoint_id: str) -> tuple[str, list[str]]:
    """(hostname, aliases on the endpoint's network) from dockerd's container inspect."""
    if not isinstance(container, dict):
        return "", []
    config = container.get("Config")
    hostname = config.get("Hostname") if isinstance(config, dict) else None
    nets = (container.get("NetworkSettings") or {}).get("Networks") if isinstance(
        container.get("NetworkSettings"), dict) else None
    aliases: list[str] = []
    if isinstance(nets, dict):
        for net in nets.values():
            if isinstance(net, dict) and net.get("EndpointID") == endpoint_id:
                found = net.get("Aliases")
                aliases = [a for a in found if isinstance(a, str)] if isinstance(found, list) else []
    return (hostname if isinstance(hostname, str) else ""), aliases


def names_value(name: str, hostname: str, aliases: list[str]) -> str | None:
    """The ``NAMES_OPTION`` value (``name,hostname,alias...``) of checked names; None without a
    valid container name. Commas cannot pass the checks, so the value splits back unambiguously."""
    name = _checked(name.lstrip("/"), check_container_name, "container name")
    if not name:
        return None
    host = _checked(hostname, check_hostname, "hostname")
    extra: list[str] = []
    for alias in aliases[:_MAX_NAMES]:
        ok = _checked(alias, check_alias, "alias")
        if ok and ok not in (name, host) and ok not in extra:
            extra.append(ok)
    return ",".join([name, host, *extra])


class NameLearner:
    """Records the names of dockerd's overlay containers on their endpoint records.

    ``record`` is the manager's ``record_names`` (it answers False when the endpoint is gone);
    ``store`` is only read, to see whether the endpoint still exists and what it is.
    """

    def __init__(self, api: DockerAPI, store: Store, record: Callable[[str, str, str], Awaitable[bool]], *,
                 run: Callable[..., Awaitable[Any]], first_delay: float = 0.05, max_delay: float = 2.0,
                 unreachable_delay: float = 30.0) -> None:
        self.api = api
        self.store = store
        self.record = record
        self._run = run                           # runs a blocking store call off the loop
        # Until dockerd lists the container (milliseconds after the Join): up to max_delay apart;
        # while dockerd does not answer at all: up to unreachable_delay apart, per endpoint.
        self.first_delay, self.max_delay, self.unreachable_delay = first_delay, max_delay, unreachable_delay
        self.tasks: dict[str, asyncio.Task[str]] = {}
        # network id -> whether it is an overlay's, once read (a network never changes driver): the
        # dockerd Joins on other networks then cost nothing here, not even a task.
        self.overlay: dict[str, bool] = {}
        self._unreachable_said = False

    def joined(self, request: JoinRequest) -> None:
        """The manager's Join hook (on the loop, after the Join succeeded): schedule, never wait."""
        if DIRECT_OPTION in request.options:      # cnmkit's runtime always sends it, with the names
            return
        if self.overlay.get(request.network_id) is False:
            return                                # a bridge's, say: not even a store read
        self._schedule(request.network_id, request.endpoint_id)

    def _schedule(self, network_id: str, endpoint_id: str) -> None:
        if endpoint_id in self.tasks:
            return
        task = asyncio.get_running_loop().create_task(self.learn(network_id, endpoint_id))
        self.tasks[endpoint_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(endpoint_id, None))

    async def sweep(self, host_id: str) -> int:
        """At start: this host's joined overlay endpoints without names (the daemon stopped between
        a Join and its look-up) are looked up again; how many. The runtime's all have names."""
        unnamed = await self._run(self._unnamed, host_id)
        for network_id, endpoint_id in unnamed:
            self._schedule(network_id, endpoint_id)
        return len(unnamed)

    def _unnamed(self, host_id: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for kv in self.store.list(records.NETWORKS)[0]:
            if NetworkRecord.decode(kv.value).driver != OVERLAY_DRIVER:
                continue
            network_id = records.network_id_of(kv.key)
            for ep_kv in self.store.list(records.endpoints_prefix(network_id))[0]:
                ep = EndpointRecord.decode(ep_kv.value)
                if ep.owned_by(host_id) and ep.joined and not ep.spec.options.get(NAMES_OPTION):
                    out.append((network_id, ep.spec.endpoint_id))
        return out

    async def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.api.close()

    def _state(self, network_id: str, endpoint_id: str) -> str:
        """'gone', 'named', 'other' (not an overlay endpoint) or 'wanted'."""
        if network_id not in self.overlay:
            net = self.store.get(records.network_key(network_id))
            if net is None:
                return "gone"
            self.overlay[network_id] = NetworkRecord.decode(net.value).driver == OVERLAY_DRIVER
        if not self.overlay[network_id]:
            return "other"
        ep = self.store.get(records.endpoint_key(network_id, endpoint_id))
        if ep is None:
            return "gone"
        if EndpointRecord.decode(ep.value).spec.options.get(NAMES_OPTION):
            return "named"
        return "wanted"

    async def learn(self, network_id: str, endpoint_id: str) -> str:
        """Look the endpoint up in dockerd until its names are recorded; the outcome, for tests
        and the log: 'recorded', 'gone', 'named', 'other', 'not dockerd's', 'bad name'."""
        check_id(network_id, "network id")
        check_id(endpoint_id, "endpoint id")
        delay = self.first_delay
        while True:
            state = await self._run(self._state, network_id, endpoint_id)
            if state != "wanted":
                return state
            cap = self.max_delay
            try:
                outcome = await self._attempt(network_id, endpoint_id)
            except DockerUnreachable as exc:
                if not self._unreachable_said:
                    log.warning("docker names: dockerd does not answer (%s); retrying while the endpoint "
                                "exists", exc)
                    self._unreachable_said = True
                outcome, cap = None, self.unreachable_delay   # a wrong --docker-socket: rarely
            if outcome is not None:
                log.info("docker names: endpoint %s: %s", endpoint_id[:12], outcome)
                return outcome
            await asyncio.sleep(delay)
            delay = min(delay * 2, cap)

    async def _attempt(self, network_id: str, endpoint_id: str) -> str | None:
        """One look-up; None: not there yet (try again)."""
        status, network = await self.api.get(f"/networks/{network_id}")
        self._unreachable_said = False
        if status == 404:
            return "not dockerd's"
        found = endpoint_entry(network, endpoint_id) if status == 200 else None
        if found is None or not _CONTAINER_ID.fullmatch(found[0]):
            return None                           # not written into the network yet (or ep-<id>)
        key, name = found
        status, container = await self.api.get(f"/containers/{key}/json")
        if status != 200:
            return None
        hostname, aliases = container_extras(container, endpoint_id)
        value = names_value(name, hostname, aliases)
        if value is None:
            return "bad name"
        if not await self.record(network_id, endpoint_id, value):
            return "gone"
        return f"recorded {value}"
