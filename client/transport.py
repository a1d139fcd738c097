"""A tiny synchronous HTTP client for the plugin sockets, speaking exactly as dockerd does.

Stdlib only (http.client over AF_UNIX) so that ``cnmkit`` CLI commands start fast and never
need an event loop. Every call is a POST with a JSON body and Docker's Accept header; errors
come back in ``Err`` (network) or ``Error`` (IPAM) and are raised as ``PluginError``.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

ACCEPT = "application/vnd.docker.plugins.v1.2+json"


class DaemonUnavailable(Exception):
    """No daemon answers on the socket: the CLI says so in one line instead of hanging."""


class PluginError(Exception):
    """The plugin answered with an error; the message is the plugin's own."""


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket: the plugin sockets, and dockerd's API socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class PluginTransport:
    def __init__(self, socket_path: str, timeout: float = 120.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._conn: UnixHTTPConnection | None = None

    def call(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = b"" if body is None else (json.dumps(body) + "\n").encode()
        for attempt in (0, 1):
            conn = self._conn or UnixHTTPConnection(self.socket_path, self.timeout)
            try:
                conn.request("POST", f"/{method}", body=payload, headers={"Accept": ACCEPT, "Host": ""})
                resp = conn.getresponse()
                raw = resp.read()
                self._conn = conn
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                conn.close()
                raise DaemonUnavailable(f"no cnmkit daemon is listening on {self.socket_path} "
                                        f"(start one with 'cnmkit daemon'): {exc.strerror}") from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._conn = None
                if attempt:                       # a kept-alive connection the server closed: retry once
                    raise DaemonUnavailable(f"the daemon on {self.socket_path} closed the connection") from None
            except TimeoutError:
                conn.close()
                self._conn = None
                raise DaemonUnavailable(f"the daemon on {self.socket_path} did not answer {method} "
                                        f"within {self.timeout:.0f} s") from None
        try:
            reply = json.loads(raw) if raw else {}
        except ValueError:
            raise PluginError(f"{method}: unreadable reply: {raw[:200]!r}") from None
        message = reply.get("Err") or reply.get("Error") if isinstance(reply, dict) else None
        if message or resp.status != 200:
            raise PluginError(message or f"{method}: HTTP {resp.status}")
        return reply

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
