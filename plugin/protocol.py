"""Docker's remote NetworkDriver/IpamDriver wire format: decode, validate, encode.

This module is the contract in code (shared/design/protocol.md is the contract in prose).
Decoders take the parsed JSON body and return the driver-level dataclasses of drivers/base.py,
or raise ``BadRequest`` naming the offending field; encoders build the reply dicts. Nothing
here performs I/O, so every malformed input is unit-testable.

Quirks honoured here: Docker sends no Content-Type and an empty body for argument-less calls;
gateways in Join replies are plain IPs while IPAMData gateways are CIDRs; the MAC inside
CreateEndpoint ``Options`` is base64, so only ``Interface.MacAddress`` is read.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from netaddr import EUI, AddrFormatError, IPAddress, IPNetwork, mac_unix_expanded

from drivers.base import (
    EndpointResult,
    EndpointSpec,
    IPAMData,
    JoinRequest,
    JoinResult,
    NetworkSpec,
    PortRequest,
)
from ipam.allocator import MIN_POOL_PREFIX
from plugin.errors import BadRequest, shown, shown_key

GENERIC = "com.docker.network.generic"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
INTERNAL = "com.docker.network.internal"
NAME_OPTION = "cnmkit.name"              # our CLI and runtime name their networks through -o
DIRECT_OPTION = "cnmkit.direct"          # our runtime: create the container end inside the sandbox

_ID = re.compile(r"[0-9a-f]{64}")                 # always fullmatch: "$" would let a trailing "\n" in
# A network name ends up in the store's keys, in logs and in `network ls`: one docker-like token.
_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_BODY = 1 << 20            # bytes; dockerd's largest bodies (port maps) are a few KB
MAX_DEPTH = 32                # JSON nesting; Docker's deepest body (Join's port map) is 4 levels
MAX_SANDBOX_KEY = 1024        # bytes of a SandboxKey (a path; stored and echoed even when unused)

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(rb"[\[\]{}]")


def _check_depth(raw: bytes) -> None:
    """Refuse nesting deeper than MAX_DEPTH before the parser recurses into it.

    json.loads recurses once per level and raises RecursionError around 1000 levels, which used
    to reach the client as "internal error"; counting brackets outside strings first is linear
    and stops at the first level too many.
    """
    depth = 0
    for m in _BRACKETS.finditer(_STRINGS.sub(b"", raw)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise BadRequest("body", f"JSON nested deeper than {MAX_DEPTH} levels")
        else:
            depth -= 1


def parse_body(raw: bytes) -> dict[str, Any]:
    """Docker sends JSON with a trailing newline, or nothing at all for argument-less calls."""
    if len(raw) > MAX_BODY:
        raise BadRequest("body", f"{len(raw)} bytes is more than the {MAX_BODY} a request may carry")
    if not raw.strip():
        return {}
    _check_depth(raw)
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadRequest("body", "JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("body", f"malformed JSON ({shown(str(exc))})") from None
    if not isinstance(body, dict):
        raise BadRequest("body", f"expected a JSON object, got {type(body).__name__}")
    return body


def _str(body: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(key, "missing")
        return ""
    if not isinstance(value, str):
        raise BadRequest(key, f"expected a string, got {type(value).__name__}")
    return value


def _id(body: dict[str, Any], key: str) -> str:
    value = _str(body, key)
    if not _ID.fullmatch(value):
        raise BadRequest(key, f"{shown(value)} is not a 64-character lowercase hex id")
    return value


def _dict(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(key, f"expected an object, got {type(value).__name__}")
    return value


def _bool(value: object, key: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise BadRequest(key, f"expected a boolean, got {shown(value)}")


def _cidr(value: object, key: str, *, version: int | None = None) -> IPNetwork:
    if not isinstance(value, str) or "/" not in value:
        raise BadRequest(key, f"{shown(value)} is not an address with a prefix length (CIDR)")
    try:
        net = IPNetwork(value)
    except (AddrFormatError, ValueError, TypeError):
        raise BadRequest(key, f"{shown(value)} is not a valid CIDR") from None
    if version is not None and net.version != version:
        raise BadRequest(key, f"{shown(value)} is not an IPv{version} CIDR")
    return net


def _pool(value: object, key: str, version: int) -> IPNetwork:
    """A pool as IPAM would accept it: no host bits (IPAM refuses those), no absurdly short prefix.

    A /0 overlaps every other network (it skipped the overlap check) and would MASQUERADE all
    traffic; anything shorter than IPAM's MIN_POOL_PREFIX is refused for the same reason.
    """
    net = _cidr(value, key, version=version)
    if net.ip != net.network:
        raise BadRequest(key, f"{shown(value)} has host bits set (did you mean {net.cidr}?)")
    if net.prefixlen < MIN_POOL_PREFIX[version]:
        raise BadRequest(key, f"{shown(value)}: a pool must be a /{MIN_POOL_PREFIX[version]} or longer")
    return net


def _optional_cidr(body: dict[str, Any], key: str, version: int) -> IPNetwork | None:
    value = body.get(key)
    if value in (None, ""):
        return None
    return _cidr(value, key, version=version)


def normalize_mac(value: str, key: str) -> str:
    """A unicast, non-zero 48-bit MAC: the kernel refuses the others with errno 99 naming nothing."""
    try:
        mac = EUI(value, dialect=mac_unix_expanded)
    except (AddrFormatError, ValueError, TypeError):
        raise BadRequest(key, f"{shown(value)} is not a valid MAC address") from None
    if len(value.replace(":", "").replace("-", "")) != 12:
        raise BadRequest(key, f"{shown(value)} is not a 48-bit MAC address")
    if int(mac) == 0:
        raise BadRequest(key, f"{shown(value)} is the all-zero MAC address")
    if int(mac) == (1 << 48) - 1:
        raise BadRequest(key, f"{shown(value)} is the broadcast MAC address")
    if int(mac) >> 40 & 1:
        raise BadRequest(key, f"{shown(value)} is a multicast MAC address")
    return str(mac)


def _ipam_data(items: object, key: str, version: int) -> tuple[IPAMData, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise BadRequest(key, f"expected a list, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(where, "expected an object")
        pool = _pool(item.get("Pool"), f"{where}.Pool", version)
        gateway = _optional_cidr(item, "Gateway", version)
        if gateway is not None and gateway.ip not in pool:
            raise BadRequest(f"{where}.Gateway", f"{gateway.ip} is outside pool {pool}")
        aux_raw = item.get("AuxAddresses") or {}
        if not isinstance(aux_raw, dict):
            raise BadRequest(f"{where}.AuxAddresses", "expected an object")
        aux = {}
        for name, addr in aux_raw.items():
            at = f"{where}.AuxAddresses.{shown_key(str(name))}"
            aux[str(name)] = _cidr(addr, at, version=version)
            if aux[str(name)].ip not in pool:
                raise BadRequest(at, f"{aux[str(name)].ip} is outside pool {pool}")
        space = item.get("AddressSpace") or ""
        out.append(IPAMData(pool=pool, gateway=gateway, aux_addresses=aux, address_space=str(space)))
    return tuple(out)


def decode_create_network(body: dict[str, Any]) -> NetworkSpec:
    options = _dict(body, "Options")
    generic = options.get(GENERIC) or {}
    if not isinstance(generic, dict):
        raise BadRequest(f"Options.{GENERIC}", "expected an object of string options")
    for k, v in generic.items():
        if not isinstance(v, str):
            raise BadRequest(f"Options.{GENERIC}.{shown_key(str(k))}", f"expected a string, got {type(v).__name__}")
    ipv4 = _ipam_data(body.get("IPv4Data"), "IPv4Data", 4)
    ipv6 = _ipam_data(body.get("IPv6Data"), "IPv6Data", 6)
    enable_ipv6 = _bool(options.get(ENABLE_IPV6), f"Options.{ENABLE_IPV6}")
    if ipv6 and not enable_ipv6:
        enable_ipv6 = True
    name = generic.get(NAME_OPTION, "")
    if name and not _NETWORK_NAME.fullmatch(name):
        raise BadRequest(f"Options.{GENERIC}.{NAME_OPTION}",
                         f"{shown(name)} is not a network name (1..64 of letters, digits, '_', '.', '-'; "
                         "starting with a letter or digit)")
    driver_options = {k: v for k, v in generic.items() if k != NAME_OPTION}
    return NetworkSpec(network_id=_id(body, "NetworkID"), ipv4=ipv4, ipv6=ipv6, options=driver_options,
                       enable_ipv6=enable_ipv6, internal=_bool(options.get(INTERNAL), f"Options.{INTERNAL}"),
                       name=name)


def decode_network_ref(body: dict[str, Any]) -> str:
    """Cnmkit.NetworkInspect's ``Network``: a name, an id or an id prefix, all of one token's shape."""
    ref = _str(body, "Network")
    if not _NETWORK_NAME.fullmatch(ref):
        raise BadRequest("Network", f"{shown(ref)} is not a network name, id or id prefix")
    return ref


def decode_overlay_flag(body: dict[str, Any]) -> bool:
    """Cnmkit.NetworkInspect's optional ``Overlay``: list the endpoints of the whole overlay too."""
    return _bool(body.get("Overlay"), "Overlay")


def decode_network_id(body: dict[str, Any]) -> str:
    return _id(body, "NetworkID")


def decode_endpoint_ref(body: dict[str, Any]) -> tuple[str, str]:
    return _id(body, "NetworkID"), _id(body, "EndpointID")


def decode_create_endpoint(body: dict[str, Any]) -> EndpointSpec:
    network_id, endpoint_id = decode_endpoint_ref(body)
    iface = _dict(body, "Interface")
    mac = _str(iface, "MacAddress", required=False)
    return EndpointSpec(
        network_id=network_id, endpoint_id=endpoint_id,
        address=_optional_cidr(iface, "Address", 4) if iface.get("Address") else None,
        address_v6=_optional_cidr(iface, "AddressIPv6", 6) if iface.get("AddressIPv6") else None,
        mac=normalize_mac(mac, "Interface.MacAddress") if mac else "",
        options=_dict(body, "Options"),
    )


def options_of(body: dict[str, Any]) -> dict[str, Any]:
    return _dict(body, "Options")


def decode_join(body: dict[str, Any]) -> JoinRequest:
    network_id, endpoint_id = decode_endpoint_ref(body)
    options = _dict(body, "Options")
    sandbox_key = _str(body, "SandboxKey")
    if len(sandbox_key.encode(errors="surrogatepass")) > MAX_SANDBOX_KEY or _CONTROL.search(sandbox_key):
        raise BadRequest("SandboxKey", f"{shown(sandbox_key)} is not a path of at most {MAX_SANDBOX_KEY} bytes "
                         "without control characters")
    return JoinRequest(network_id=network_id, endpoint_id=endpoint_id,
                       sandbox_key=sandbox_key, options=options,
                       direct=_bool(options.get(DIRECT_OPTION), f"Options.{DIRECT_OPTION}"))


PORTMAP = "com.docker.network.portmap"
_PROTOS: dict[int, Literal["tcp", "udp", "sctp"]] = {6: "tcp", 17: "udp", 132: "sctp"}


def _port(item: dict[str, Any], key: str, where: str, *, zero: bool = False) -> int:
    value = item.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not (0 if zero else 1) <= value <= 65535:
        raise BadRequest(f"{where}.{key}", f"{shown(value)} is not a port number")
    return value


def decode_port_requests(options: dict[str, Any]) -> tuple[PortRequest, ...]:
    """Docker's port map (``-p``/``-P``) from Join/ProgramExternalConnectivity options."""
    items = options.get(PORTMAP) or []
    where = f"Options.{PORTMAP}"
    if not isinstance(items, list):
        raise BadRequest(where, "expected a list")
    out = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(at, "expected an object")
        proto = _PROTOS.get(item.get("Proto", 6))
        if proto is None:
            raise BadRequest(f"{at}.Proto", f"{shown(item.get('Proto'))} is not 6 (tcp), 17 (udp) or 132 (sctp)")
        host_ip = item.get("HostIP") or ""
        if host_ip:
            try:
                if IPAddress(host_ip).version != 4:
                    raise BadRequest(f"{at}.HostIP", f"{shown(host_ip)}: only IPv4 host addresses are published")
            except (AddrFormatError, ValueError, TypeError):
                raise BadRequest(f"{at}.HostIP", f"{shown(host_ip)} is not an IP address") from None
        first = _port(item, "HostPort", at, zero=True)
        last = _port(item, "HostPortEnd", at, zero=True) or first
        if last < first:
            raise BadRequest(f"{at}.HostPortEnd", f"{last} is below HostPort {first}")
        out.append(PortRequest(proto=proto, port=_port(item, "Port", at), host_ip=str(host_ip),
                               host_port_first=first, host_port_last=last))
    return tuple(out)


def encode_endpoint(result: EndpointResult) -> dict[str, Any]:
    iface: dict[str, str] = {}
    if result.mac:
        iface["MacAddress"] = result.mac
    if result.address is not None:
        iface["Address"] = str(result.address)
    if result.address_v6 is not None:
        iface["AddressIPv6"] = str(result.address_v6)
    return {"Interface": iface} if iface else {}


def encode_join(result: JoinResult) -> dict[str, Any]:
    body: dict[str, Any] = {
        "InterfaceName": {"SrcName": result.src_name, "DstPrefix": result.dst_prefix},
        "DisableGatewayService": result.disable_gateway_service,
    }
    if result.gateway is not None:
        body["Gateway"] = str(result.gateway)
    if result.gateway_v6 is not None:
        body["GatewayIPv6"] = str(result.gateway_v6)
    if result.static_routes:
        body["StaticRoutes"] = [
            {"Destination": str(r.destination), "RouteType": r.route_type,
             **({"NextHop": str(r.next_hop)} if r.next_hop is not None else {})}
            for r in result.static_routes
        ]
    return body


# --- IPAM -------------------------------------------------------------------------------------

def decode_request_pool(body: dict[str, Any]) -> dict[str, Any]:
    options = body.get("Options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("Options", "expected an object")
    return {
        "address_space": _str(body, "AddressSpace", required=False),
        "pool": _str(body, "Pool", required=False),
        "sub_pool": _str(body, "SubPool", required=False),
        "options": {str(k): str(v) for k, v in (options or {}).items()},
        "v6": _bool(body.get("V6"), "V6"),
    }


def decode_pool_id(body: dict[str, Any]) -> str:
    pool_id = _str(body, "PoolID")
    if not pool_id:
        raise BadRequest("PoolID", "empty")
    return pool_id


def decode_request_address(body: dict[str, Any]) -> dict[str, Any]:
    options = body.get("Options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("Options", "expected an object")
    address = _str(body, "Address", required=False)
    if address:
        try:
            IPAddress(address)
        except (AddrFormatError, ValueError):
            raise BadRequest("Address", f"{shown(address)} is not a valid IP address") from None
    return {"pool_id": decode_pool_id(body), "address": address,
            "options": {str(k): str(v) for k, v in (options or {}).items()}}


def decode_release_address(body: dict[str, Any]) -> tuple[str, str]:
    address = _str(body, "Address")
    try:
        IPAddress(address)
    except (AddrFormatError, ValueError):
        raise BadRequest("Address", f"{shown(address)} is not a valid IP address") from None
    return decode_pool_id(body), address


def decode_cleanup(body: dict[str, Any]) -> bool:
    dry_run = body.get("DryRun", False)
    if not isinstance(dry_run, bool):
        raise BadRequest("DryRun", f"expected a boolean, got {shown(dry_run)}")
    return dry_run


def decode_reconcile(body: dict[str, Any]) -> tuple[bool, bool]:
    """``{"DryRun": bool, "Cleanup": bool}`` (both optional; Cleanup defaults to true)."""
    dry_run = decode_cleanup(body)
    cleanup = body.get("Cleanup", True)
    if not isinstance(cleanup, bool):
        raise BadRequest("Cleanup", f"expected a boolean, got {shown(cleanup)}")
    return dry_run, cleanup
