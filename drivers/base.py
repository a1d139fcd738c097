"""What a network driver is: the contract bridge, vlan and vxlan all fill.

The plugin layer decodes Docker's wire format into these frozen dataclasses, hands them to
a driver, and encodes the results back. Drivers never see JSON or HTTP, so the same driver
serves dockerd, the CLI and the embedded runtime, and a driver is unit-testable on a fake
kernel. Drivers are synchronous: the daemon calls them from worker threads under a
per-network lock, which keeps them simple and keeps the event loop free.

Driver-specific options (``-o parent=eth1``) arrive already split out of Docker's generic
option map as ``NetworkSpec.options``; each driver parses them into its own typed config at
``create_network`` and rejects what it does not understand, naming the option.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from netaddr import IPAddress, IPNetwork


@dataclass(frozen=True)
class IPAMData:
    """One pool of a network, as IPAM granted it (Docker's IPv4Data/IPv6Data entry)."""

    pool: IPNetwork
    gateway: IPNetwork | None = None          # address with the pool's prefix length
    aux_addresses: dict[str, IPNetwork] = field(default_factory=dict)
    address_space: str = ""


@dataclass(frozen=True)
class NetworkSpec:
    network_id: str
    ipv4: tuple[IPAMData, ...] = ()
    ipv6: tuple[IPAMData, ...] = ()
    options: dict[str, str] = field(default_factory=dict)   # the -o key=value map
    enable_ipv6: bool = False
    internal: bool = False
    name: str = ""                                            # set by the CLI and runtime, not by dockerd


@dataclass(frozen=True)
class EndpointSpec:
    network_id: str
    endpoint_id: str
    address: IPNetwork | None = None          # IPv4 with prefix length, as IPAM gave it
    address_v6: IPNetwork | None = None
    mac: str = ""                             # empty: the driver chooses
    options: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointResult:
    """What CreateEndpoint answers: only fields Docker left empty may be filled (protocol §2)."""

    mac: str = ""
    address: IPNetwork | None = None
    address_v6: IPNetwork | None = None


@dataclass(frozen=True)
class PortBinding:
    """One published port (``docker run -p HOSTIP:HOSTPORT:PORT/PROTO``), resolved to a single host port."""

    proto: Literal["tcp", "udp", "sctp"]
    port: int                                  # inside the container
    host_port: int
    host_ip: str = ""                          # empty: every address of the host


@dataclass(frozen=True)
class PortRequest:
    """A port as Docker asks for it: a host port, a range to pick from, or 0 (``-P``: any free one)."""

    proto: Literal["tcp", "udp", "sctp"]
    port: int
    host_ip: str = ""
    host_port_first: int = 0
    host_port_last: int = 0


@dataclass(frozen=True)
class StaticRoute:
    destination: IPNetwork
    route_type: Literal[0, 1] = 0             # 0 next hop, 1 connected
    next_hop: IPAddress | None = None


@dataclass(frozen=True)
class JoinRequest:
    network_id: str
    endpoint_id: str
    sandbox_key: str
    options: dict[str, object] = field(default_factory=dict)
    # Set by cnmkit's own runtime when the sandbox netns already exists and it wants the
    # container end created inside it (no move: about 3 ms instead of 18 ms of kernel time).
    direct: bool = False


@dataclass(frozen=True)
class JoinResult:
    src_name: str
    dst_prefix: str = "eth"
    gateway: IPAddress | None = None
    gateway_v6: IPAddress | None = None
    static_routes: tuple[StaticRoute, ...] = ()
    disable_gateway_service: bool = False


class NetworkDriver(Protocol):
    """One driver type (bridge, vlan, vxlan); the plugin serves each on its own socket.

    Drivers keep no records of their own: the manager persists every NetworkSpec and
    EndpointSpec in the store and passes them in, so a restarted daemon can Leave and Delete
    what it made before. Every method is idempotent: create may find the object made, delete
    may find it gone. A driver that needs shared state (vxlan peers) gets the store in __init__.
    """

    name: str                                  # socket and driver name: cnmkit-bridge, ...
    scope: Literal["local", "global"]
    connectivity_scope: Literal["local", "global"]

    def validate(self, spec: NetworkSpec) -> Sequence[str] | None:
        """Raise ``InvalidOption`` for options this driver cannot take, before anything is made.

        May answer the option keys it accepts without acting on them (kept with the network, as
        Docker's bridge keeps unknown options; the manager logs a warning naming them).
        """
        ...

    def create_network(self, spec: NetworkSpec) -> None: ...

    def delete_network(self, spec: NetworkSpec) -> None: ...

    def create_endpoint(self, network: NetworkSpec, endpoint: EndpointSpec) -> EndpointResult: ...

    def delete_endpoint(self, network: NetworkSpec, endpoint: EndpointSpec) -> None: ...

    def join(self, network: NetworkSpec, endpoint: EndpointSpec, request: JoinRequest) -> JoinResult: ...

    def leave(self, network: NetworkSpec, endpoint: EndpointSpec) -> None: ...

    def endpoint_info(self, network: NetworkSpec, endpoint: EndpointSpec) -> dict[str, object]: ...


@runtime_checkable
class Reconciler(Protocol):
    """Optional capability: find (and remove) kernel objects of ours that the store no longer knows.

    ``known`` returns the network and endpoint ids in the store. The driver must call it *after*
    listing its kernel objects: records are written before kernel objects are made and removed
    after them, so an object seen before the store was read and missing from it is a true orphan
    (left by a crash), never a create in flight.
    """

    def reconcile(self, known: Callable[[], tuple[set[str], set[str]]], *, dry_run: bool) -> list[str]:
        """Human-readable actions, taken unless ``dry_run``."""
        ...


@dataclass(frozen=True)
class EndpointState:
    """What the store says one endpoint should have in the kernel: the agent's input per endpoint.

    ``joined``: a Join succeeded and no Leave followed (the record's Sandbox is set), so its
    host-side link must exist; ``ports``: the published ports on record.
    """

    spec: EndpointSpec
    joined: bool = False
    ports: tuple[PortBinding, ...] = ()


@runtime_checkable
class Converger(Protocol):
    """Optional capability: make one network's kernel objects match its records (agent/reconcile.py).

    Each method looks first and acts only on what is missing or half-made, so a pass over a
    network that is already right changes nothing (no flap of a bridge that carries traffic).
    Answers one human-readable line per action, taken unless ``dry_run``.
    """

    def ensure_network(self, spec: NetworkSpec, *, dry_run: bool) -> list[str]: ...

    def ensure_endpoints(self, network: NetworkSpec, endpoints: Sequence[EndpointState], *,
                         dry_run: bool) -> list[str]: ...


@runtime_checkable
class PortPublisher(Protocol):
    """Optional capability: ProgramExternalConnectivity/RevokeExternalConnectivity with port maps."""

    def publish(self, network: NetworkSpec, endpoint: EndpointSpec, ports: tuple[PortBinding, ...]) -> None:
        """Make ``ports`` reach the endpoint; idempotent, replaces what the endpoint published before."""
        ...

    def unpublish(self, network: NetworkSpec, endpoint: EndpointSpec) -> None:
        """Withdraw everything the endpoint published; nothing published is fine."""
        ...
