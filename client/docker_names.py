"""Docker's names for networks created through dockerd, for display only.

Networks made by ``docker network create`` reach the plugin with an id and no name (the
NetworkDriver protocol carries none). The CLI, never the daemon, asks dockerd's API for the
names: a plugin calling back into dockerd can deadlock it (protocol.md §6.1). Any failure or a
slow dockerd simply means no names; listing never waits more than ``timeout`` seconds.
"""

from __future__ import annotations

import http.client
import json
import os

from client.transport import UnixHTTPConnection

DOCKER_SOCKET = os.environ.get("CNMKIT_DOCKER_SOCKET", "/var/run/docker.sock")


def docker_network_names(path: str = DOCKER_SOCKET, timeout: float = 1.0) -> dict[str, str]:
    """{network id: name} from dockerd, or {} when dockerd is absent, slow or answers oddly."""
    if not os.path.exists(path):
        return {}
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", "/v1.41/networks")
        resp = conn.getresponse()
        if resp.status != 200:
            return {}
        return {str(n["Id"]): str(n["Name"]) for n in json.loads(resp.read()) if "Id" in n and "Name" in n}
    except (OSError, ValueError, TypeError, KeyError, http.client.HTTPException):
        return {}
    finally:
        conn.close()
