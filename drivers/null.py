"""A driver that makes nothing in the kernel: the reference implementation of the contract.

It answers every call as a real driver would (MACs, join replies with the gateway) so the
protocol layer, the manager and the clients can be tested without root, and it documents the
smallest thing that satisfies drivers/base.py.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from drivers.base import EndpointResult, EndpointSpec, JoinRequest, JoinResult, NetworkSpec
from drivers.errors import InvalidOption


def derived_mac(endpoint_id: str) -> str:
    """Stable, locally administered unicast MAC, so a retried CreateEndpoint answers the same."""
    digest = hashlib.sha256(endpoint_id.encode()).digest()[:5]
    return ":".join(f"{b:02x}" for b in (0x02, *digest))


class NullDriver:
    name: str = "cnmkit-null"
    scope: Literal["local", "global"] = "local"
    connectivity_scope: Literal["local", "global"] = "local"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def validate(self, spec: NetworkSpec) -> None:
        for key in spec.options:
            if not key.startswith("com.docker.network."):
                raise InvalidOption(key, "not supported by the null driver")

    def create_network(self, spec: NetworkSpec) -> None:
        self.calls.append(("create_network", spec.network_id))

    def delete_network(self, spec: NetworkSpec) -> None:
        self.calls.append(("delete_network", spec.network_id))

    def create_endpoint(self, network: NetworkSpec, endpoint: EndpointSpec) -> EndpointResult:
        self.calls.append(("create_endpoint", endpoint.endpoint_id))
        return EndpointResult(mac="" if endpoint.mac else derived_mac(endpoint.endpoint_id))

    def delete_endpoint(self, network: NetworkSpec, endpoint: EndpointSpec) -> None:
        self.calls.append(("delete_endpoint", endpoint.endpoint_id))

    def join(self, network: NetworkSpec, endpoint: EndpointSpec, request: JoinRequest) -> JoinResult:
        self.calls.append(("join", endpoint.endpoint_id))
        gw4 = next((d.gateway.ip for d in network.ipv4 if d.gateway is not None), None)
        gw6 = next((d.gateway.ip for d in network.ipv6 if d.gateway is not None), None)
        if network.internal:
            return JoinResult(src_name=f"null{endpoint.endpoint_id[:8]}", disable_gateway_service=True)
        return JoinResult(src_name=f"null{endpoint.endpoint_id[:8]}", gateway=gw4, gateway_v6=gw6)

    def leave(self, network: NetworkSpec, endpoint: EndpointSpec) -> None:
        self.calls.append(("leave", endpoint.endpoint_id))

    def endpoint_info(self, network: NetworkSpec, endpoint: EndpointSpec) -> dict[str, object]:
        return {"driver": self.name}
