"""/IpamDriver.* handlers and cnmkit's own inspection calls, served on cnmkit.sock."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web

from agent.hosts import HostLiveness
from agent.reconcile import Agent
from drivers.manager import NetworkManager
from ipam.batcher import AddressBatcher
from ipam.service import IpamService
from plugin import profile
from plugin import protocol as p
from plugin.errors import reply

IPAM = web.AppKey("ipam", IpamService)
MANAGER = web.AppKey("manager", NetworkManager)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
AGENT = web.AppKey("agent", Agent)
HOSTS = web.AppKey("hosts", HostLiveness)
BATCHER = web.AppKey("batcher", AddressBatcher)

T = TypeVar("T")


async def _call(request: web.Request, fn: Callable[..., T], *args: Any) -> T:
    return await profile.run_in_executor(request.app[EXECUTOR], fn, *args)


async def _body(request: web.Request) -> dict:
    return p.parse_body(await request.read())


async def activate(request: web.Request) -> web.Response:
    return reply({"Implements": ["IpamDriver"]})


async def capabilities(request: web.Request) -> web.Response:
    return reply(request.app[IPAM].capabilities())


async def default_spaces(request: web.Request) -> web.Response:
    return reply(request.app[IPAM].default_address_spaces())


async def request_pool(request: web.Request) -> web.Response:
    args = p.decode_request_pool(await _body(request))
    pool_id, pool, data = await _call(request, lambda: request.app[IPAM].request_pool(**args))
    return reply({"PoolID": pool_id, "Pool": pool, "Data": data})


async def release_pool(request: web.Request) -> web.Response:
    await _call(request, request.app[IPAM].release_pool, p.decode_pool_id(await _body(request)))
    return reply({})


async def request_address(request: web.Request) -> web.Response:
    args = p.decode_request_address(await _body(request))
    if not args["address"] and BATCHER in request.app:  # dynamic: coalesced with its pool's others
        address, data = await request.app[BATCHER].request_address(args["pool_id"], args["options"])
    else:
        address, data = await _call(request, lambda: request.app[IPAM].request_address(**args))
    return reply({"Address": address, "Data": data})


async def release_address(request: web.Request) -> web.Response:
    await _call(request, request.app[IPAM].release_address, *p.decode_release_address(await _body(request)))
    return reply({})


async def network_list(request: web.Request) -> web.Response:
    return reply({"Networks": await request.app[MANAGER].list_networks()})


async def network_inspect(request: web.Request) -> web.Response:
    body = await _body(request)
    ref, overlay = p.decode_network_ref(body), p.decode_overlay_flag(body)
    return reply({"Network": await request.app[MANAGER].inspect_network(ref, overlay=overlay)})


async def pool_list(request: web.Request) -> web.Response:
    pools = await _call(request, request.app[IPAM].list_pools)
    return reply({"Pools": [{"PoolID": x["pool_id"], "Pool": x["pool"], "SubPool": x["sub_pool"],
                             "AddressSpace": x["address_space"], "V6": x["v6"]} for x in pools]})


async def cleanup(request: web.Request) -> web.Response:
    dry_run = p.decode_cleanup(await _body(request))
    return reply({"Actions": await request.app[AGENT].remove_orphans(dry_run=dry_run)})


async def reconcile(request: web.Request) -> web.Response:
    dry_run, cleanup_too = p.decode_reconcile(await _body(request))
    return reply({"Actions": await request.app[AGENT].reconcile(dry_run=dry_run, cleanup=cleanup_too)})


async def host_list(request: web.Request) -> web.Response:
    p.parse_body(await request.read())
    hosts = request.app.get(HOSTS)
    return reply({"Hosts": await _call(request, hosts.hosts) if hosts is not None else []})


ROUTES = {
    "/Plugin.Activate": activate,
    "/IpamDriver.GetCapabilities": capabilities,
    "/IpamDriver.GetDefaultAddressSpaces": default_spaces,
    "/IpamDriver.RequestPool": request_pool,
    "/IpamDriver.ReleasePool": release_pool,
    "/IpamDriver.RequestAddress": request_address,
    "/IpamDriver.ReleaseAddress": release_address,
    "/Cnmkit.NetworkList": network_list,
    "/Cnmkit.NetworkInspect": network_inspect,
    "/Cnmkit.PoolList": pool_list,
    "/Cnmkit.Cleanup": cleanup,
    "/Cnmkit.Reconcile": reconcile,
    "/Cnmkit.HostList": host_list,
}
