"""One place that turns exceptions into Docker's error replies.

The two interfaces disagree on the key (protocol.md §1.5): the network API reads ``Err``, the
IPAM API reads ``Error`` on a 200 reply. Handlers raise; the middleware answers. Bad input is
answered with status 200 and the error key so that dockerd shows our message verbatim.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from drivers.errors import DriverError
from ipam.errors import IpamError
from plugin.quoting import bounded, shown, shown_key
from store.base import StoreError

log = logging.getLogger("cnmkit.plugin")

__all__ = ["BadRequest", "bounded", "error_middleware", "error_reply", "reply", "shown", "shown_key"]

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"


class BadRequest(Exception):
    """The request body is malformed; the message names the field and the problem."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field


def reply(body: Mapping[str, object], status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type=CONTENT_TYPE)


def error_reply(path: str, message: str) -> web.Response:
    # Both keys on IPAM replies keeps a non-200 reader and a 200 reader happy alike.
    body = {"Err": message}
    if path.startswith("/IpamDriver."):
        body["Error"] = message
    return reply(body)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return reply({"Err": f"{shown(path.lstrip('/'))} is not implemented"}, status=404)
    except web.HTTPException:
        raise
    except (BadRequest, DriverError, IpamError) as exc:
        message = bounded(str(exc))
        log.info("%s refused: %s", shown(path), message)
        return error_reply(path, message)
    except StoreError as exc:
        # The daemon's store (store/guard.py) names itself: "store etcd://...: unavailable (...)".
        text = str(exc)
        message = bounded(text if text.startswith("store ") else f"state store failure: {text}")
        log.error("%s: %s", shown(path), message)
        return error_reply(path, message)
    except RecursionError:  # a nesting the body check missed: answer as bad input, never a traceback
        log.info("%s refused: body nested too deeply", shown(path))
        return error_reply(path, "body: nested too deeply")
    except Exception as exc:  # the daemon keeps serving whatever one request did
        log.exception("%s failed", shown(path))
        return error_reply(path, bounded(f"internal error: {exc.__class__.__name__}: {exc}"))
