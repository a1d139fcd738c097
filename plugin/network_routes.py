"""/NetworkDriver.* handlers for one driver socket: decode, delegate to the manager, encode."""

from __future__ import annotations

from aiohttp import web

from drivers.base import NetworkDriver
from drivers.manager import NetworkManager
from plugin import protocol as p
from plugin.errors import reply

MANAGER = web.AppKey("manager", NetworkManager)
DRIVER = web.AppKey("driver", NetworkDriver)  # type: ignore[type-abstract]


async def _body(request: web.Request) -> dict:
    return p.parse_body(await request.read())


async def activate(request: web.Request) -> web.Response:
    return reply({"Implements": ["NetworkDriver"]})


async def capabilities(request: web.Request) -> web.Response:
    driver = request.app[DRIVER]
    return reply({"Scope": driver.scope, "ConnectivityScope": driver.connectivity_scope})


async def create_network(request: web.Request) -> web.Response:
    spec = p.decode_create_network(await _body(request))
    await request.app[MANAGER].create_network(request.app[DRIVER].name, spec)
    return reply({})


async def delete_network(request: web.Request) -> web.Response:
    await request.app[MANAGER].delete_network(p.decode_network_id(await _body(request)))
    return reply({})


async def create_endpoint(request: web.Request) -> web.Response:
    result = await request.app[MANAGER].create_endpoint(p.decode_create_endpoint(await _body(request)))
    return reply(p.encode_endpoint(result))


async def delete_endpoint(request: web.Request) -> web.Response:
    await request.app[MANAGER].delete_endpoint(*p.decode_endpoint_ref(await _body(request)))
    return reply({})


async def join(request: web.Request) -> web.Response:
    result = await request.app[MANAGER].join(p.decode_join(await _body(request)))
    return reply(p.encode_join(result))


async def leave(request: web.Request) -> web.Response:
    await request.app[MANAGER].leave(*p.decode_endpoint_ref(await _body(request)))
    return reply({})


async def endpoint_info(request: web.Request) -> web.Response:
    value = await request.app[MANAGER].endpoint_info(*p.decode_endpoint_ref(await _body(request)))
    return reply({"Value": value})


async def program_external(request: web.Request) -> web.Response:
    body = await _body(request)
    ports = p.decode_port_requests(p.options_of(body))
    await request.app[MANAGER].program_external(*p.decode_endpoint_ref(body), ports)
    return reply({})


async def revoke_external(request: web.Request) -> web.Response:
    await request.app[MANAGER].revoke_external(*p.decode_endpoint_ref(await _body(request)))
    return reply({})


async def swarm_only(request: web.Request) -> web.Response:
    """AllocateNetwork/FreeNetwork/Discover*: swarm-only calls a local driver answers with success."""
    await _body(request)
    return reply({})


ROUTES = {
    "/Plugin.Activate": activate,
    "/NetworkDriver.GetCapabilities": capabilities,
    "/NetworkDriver.CreateNetwork": create_network,
    "/NetworkDriver.DeleteNetwork": delete_network,
    "/NetworkDriver.CreateEndpoint": create_endpoint,
    "/NetworkDriver.DeleteEndpoint": delete_endpoint,
    "/NetworkDriver.Join": join,
    "/NetworkDriver.Leave": leave,
    "/NetworkDriver.EndpointOperInfo": endpoint_info,
    "/NetworkDriver.ProgramExternalConnectivity": program_external,
    "/NetworkDriver.RevokeExternalConnectivity": revoke_external,
    "/NetworkDriver.AllocateNetwork": swarm_only,
    "/NetworkDriver.FreeNetwork": swarm_only,
    "/NetworkDriver.DiscoverNew": swarm_only,
    "/NetworkDriver.DiscoverDelete": swarm_only,
}
