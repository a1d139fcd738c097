"""Application factories: one aiohttp app per socket, everything injected, nothing global.

Each driver gets its own socket and app because nothing in a request tells the plugin which
driver name dockerd used (protocol.md §1.1). Routing is by path only, never by Host header,
which dockerd sends empty or odd depending on the Go that built it (§1.3).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from aiohttp.typedefs import Middleware

from agent.hosts import HostLiveness
from agent.reconcile import Agent
from drivers.base import NetworkDriver
from drivers.manager import NetworkManager
from drivers.reaper import InFlight
from ipam.batcher import AddressBatcher
from ipam.service import IpamService
from plugin import ipam_routes, network_routes, profile
from plugin.errors import error_middleware

Handler = Callable[[web.Request], Awaitable[web.Response]]


def _router(routes: Mapping[str, Handler]) -> Handler:
    """Dispatch on the exact path; anything else is a 404, which dockerd understands as 'not implemented'."""

    async def dispatch(request: web.Request) -> web.Response:
        handler = routes.get(request.path)
        if handler is None or request.method != "POST":
            raise web.HTTPNotFound()
        return await handler(request)

    return dispatch


def _counting(inflight: InFlight) -> Middleware:
    """Count the request as in flight while its handler runs (the reaper waits for none)."""

    @web.middleware
    async def counting(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        inflight.enter()
        try:
            return await handler(request)
        finally:
            inflight.leave()

    return counting


def _app(routes: Mapping[str, Handler], inflight: InFlight | None = None) -> web.Application:
    middlewares: list[Middleware] = [profile.middleware, error_middleware] if profile.enabled() else [error_middleware]
    if inflight is not None:
        middlewares.insert(0, _counting(inflight))
    app = web.Application(middlewares=middlewares, client_max_size=4 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", _router(routes))
    return app


def build_network_app(driver: NetworkDriver, manager: NetworkManager,
                      inflight: InFlight | None = None) -> web.Application:
    app = _app(network_routes.ROUTES, inflight)
    app[network_routes.DRIVER] = driver
    app[network_routes.MANAGER] = manager
    return app


def build_ipam_app(ipam: IpamService, manager: NetworkManager, executor: ThreadPoolExecutor,
                   agent: Agent | None = None, hosts: HostLiveness | None = None,
                   inflight: InFlight | None = None) -> web.Application:
    app = _app(ipam_routes.ROUTES, inflight)
    if hosts is not None:
        app[ipam_routes.HOSTS] = hosts
    app[ipam_routes.AGENT] = agent or Agent(manager.store, manager.drivers, executor, manager.network_lock)
    app[ipam_routes.IPAM] = ipam
    app[ipam_routes.MANAGER] = manager
    app[ipam_routes.EXECUTOR] = executor
    app[ipam_routes.BATCHER] = AddressBatcher(ipam, executor)
    return app
