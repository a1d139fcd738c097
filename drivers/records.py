"""How network and endpoint specs are written to the store, and read back after a restart.

Kept apart from the manager so that the CLI, the runtime and later the vxlan driver read the
same records the same way. Values are JSON; netaddr objects travel as strings.
"""

from __future__ import annotations

from typing import Any

from netaddr import IPNetwork

from drivers.base import EndpointSpec, IPAMData, NetworkSpec

NETWORKS = "networks/"
NAMES = "names/"
ENDPOINTS = "endpoints/"


def network_key(network_id: str) -> str:
    return f"{NETWORKS}{network_id}"


def name_key(name: str) -> str:
    return f"{NAMES}{name}"


def endpoint_key(network_id: str, endpoint_id: str) -> str:
    return f"{ENDPOINTS}{network_id}/{endpoint_id}"


def endpoints_prefix(network_id: str) -> str:
    return f"{ENDPOINTS}{network_id}/"


def _ipam_to_dict(data: IPAMData) -> dict[str, Any]:
    return {"Pool": str(data.pool), "Gateway": str(data.gateway) if data.gateway else "",
            "AuxAddresses": {k: str(v) for k, v in data.aux_addresses.items()},
            "AddressSpace": data.address_space}


def _ipam_from_dict(d: dict[str, Any]) -> IPAMData:
    return IPAMData(pool=IPNetwork(d["Pool"]), gateway=IPNetwork(d["Gateway"]) if d.get("Gateway") else None,
                    aux_addresses={k: IPNetwork(v) for k, v in d.get("AuxAddresses", {}).items()},
                    address_space=d.get("AddressSpace", ""))


def network_to_dict(spec: NetworkSpec) -> dict[str, Any]:
    return {"NetworkID": spec.network_id, "Name": spec.name, "Options": dict(spec.options),
            "EnableIPv6": spec.enable_ipv6, "Internal": spec.internal,
            "IPv4": [_ipam_to_dict(d) for d in spec.ipv4], "IPv6": [_ipam_to_dict(d) for d in spec.ipv6]}


def network_from_dict(d: dict[str, Any]) -> NetworkSpec:
    return NetworkSpec(network_id=d["NetworkID"], name=d.get("Name", ""), options=dict(d.get("Options", {})),
                       enable_ipv6=bool(d.get("EnableIPv6")), internal=bool(d.get("Internal")),
                       ipv4=tuple(_ipam_from_dict(x) for x in d.get("IPv4", [])),
                       ipv6=tuple(_ipam_from_dict(x) for x in d.get("IPv6", [])))


def endpoint_to_dict(spec: EndpointSpec) -> dict[str, Any]:
    return {"NetworkID": spec.network_id, "EndpointID": spec.endpoint_id,
            "Address": str(spec.address) if spec.address else "",
            "AddressIPv6": str(spec.address_v6) if spec.address_v6 else "",
            "MacAddress": spec.mac, "Options": _jsonable(spec.options)}


def endpoint_from_dict(d: dict[str, Any]) -> EndpointSpec:
    return EndpointSpec(network_id=d["NetworkID"], endpoint_id=d["EndpointID"],
                        address=IPNetwork(d["Address"]) if d.get("Address") else None,
                        address_v6=IPNetwork(d["AddressIPv6"]) if d.get("AddressIPv6") else None,
                        mac=d.get("MacAddress", ""), options=dict(d.get("Options", {})))


def _jsonable(options: dict[str, object]) -> dict[str, object]:
    """Endpoint options come from JSON already; keep only what round-trips."""
    import json

    try:
        json.dumps(options)
        return dict(options)
    except TypeError:
        return {k: v for k, v in options.items() if isinstance(v, str | int | float | bool | list | dict)}
