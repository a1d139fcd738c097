"""The record format: every key cnmkit keeps in a ``Store``, and how its value is encoded.

One module owns it (issue 7 item 9) so that the daemon's manager, the reconciling agent, the host
liveness, the CLI's inspection and the tests read and write the same bytes the same way; before,
the keys and spec codecs sat in ``drivers/records.py`` while the envelopes around them (Driver,
Host, Result, Sandbox, Ports) were JSON built inline in ``drivers/manager.py`` and ``agent/``.
It lives in ``store/`` because it is the layer between the backends (bytes under keys) and their
users (typed records); the backends themselves never import it. It does import the spec types of
``drivers/base.py``: those are what the records persist, and copying them would make two truths.

IPAM's pool, address, free-offset and space records (``ipam/...``) are not here: only
``ipam/service.py`` reads or writes them, their invariants are its transactions', and it encodes
them with this module's ``encode``/``decode``; its docstring is their schema.

Layout (values are JSON objects unless said otherwise):

- ``networks/<id>``             ``NetworkRecord``: {"Driver", "Spec", "Host"};
- ``names/<name>``              the network id, raw bytes (not JSON);
- ``endpoints/<net>/<ep>``      ``EndpointRecord``: {"Spec", "Result", "Sandbox", "Host"[, "Ports"]};
- ``claims/subnets``            a decimal generation, bumped by every network create;
- ``claims/ports/<host>``       a decimal generation, bumped by every host-port choice of that host;
- ``hosts/<host>``              ``HostRecord``, under the host's lease;
- ``overlays/<name>``           ``OverlayRecord``: one VXLAN overlay shared by every host (drivers/vxlan.py);
- ``claims/vni/<vni>``          the overlay name holding that VNI, raw bytes; created with the overlay.

A record without ``Host`` was written before hosts existed and belongs to whichever host reads
it. Keys a newer version adds to a record are kept through every read-modify-write here.

Every record is one JSON object under one key, and every update is an optimistic
read-modify-CAS loop on the key's mod revision, the pattern libnetwork's ``PutObjectAtomic``
and Calico's IPAM use (design/store.md section 5). On a conflict the loop re-reads from the
store, never from a cache: a stale cached token is how libnetwork#576 got stuck. Values are
written in one canonical form (sorted keys, no spaces); any JSON object is read, so a store
written by an earlier version (``json.dumps`` with its default separators) reads the same.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, TypedDict

from netaddr import IPNetwork

from drivers.base import EndpointResult, EndpointSpec, IPAMData, NetworkSpec, PortBinding
from ipam.pools import OVERLAY_OPTION
from store.base import KV, Cmp, Delete, Op, Put, Store, StoreError, TxnResult

Record = dict[str, Any]


class Conflict(StoreError):
    """``update_json`` lost the CAS race more often than its retry budget allows."""


class Entry(NamedTuple):
    key: str
    value: Record
    mod_rev: int


def encode(value: Record) -> bytes:
    """Canonical bytes (sorted keys, no spaces), so equal records are equal values in the store."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes) -> Record:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError(f"record is not a JSON object: {data[:80]!r}")
    return value


def get_json(store: Store, key: str) -> tuple[Record | None, int]:
    """The record at ``key`` and its mod revision, the CAS token (None and 0 when absent)."""
    kv = store.get(key)
    return (None, 0) if kv is None else (decode(kv.value), kv.mod_rev)


def put_json(store: Store, key: str, value: Record) -> int:
    """Unconditional write; returns the store revision. Use ``cas_json`` when others may write too."""
    return store.put(key, encode(value))


def cas_json(store: Store, key: str, value: Record, expect_mod_rev: int) -> TxnResult:
    """Write if ``key``'s mod revision is still ``expect_mod_rev`` (0: create only if absent)."""
    return store.cas(key, encode(value), expect_mod_rev)


def list_json(store: Store, prefix: str) -> tuple[list[Entry], int]:
    """Every record under ``prefix`` in key order, with the snapshot revision to watch from (+1)."""
    kvs, rev = store.list(prefix)
    return [Entry(kv.key, decode(kv.value), kv.mod_rev) for kv in kvs], rev


def update_json(store: Store, key: str, fn: Callable[[Record | None], Record | None], *,
                retries: int = 64) -> tuple[Record | None, int]:
    """Apply ``fn(old) -> new`` atomically, retrying when another writer got in first.

    ``fn`` gets the current record (None if absent) and returns the new one, or None to delete
    the key; it may run several times, so it must not have side effects (raise to abort). When
    it returns the record unchanged nothing is written. Returns the record now stored and the
    revision it was read or written at.
    """
    for attempt in range(retries + 1):
        kv = store.get(key)
        old = None if kv is None else decode(kv.value)
        token = 0 if kv is None else kv.mod_rev
        new = fn(None if old is None else json.loads(json.dumps(old)))  # fn may mutate its argument
        if new == old:
            return old, token
        if new is None:
            result = store.delete(key, expect_mod_rev=token)
        else:
            result = store.cas(key, encode(new), token)
        if result.succeeded:
            return new, result.revision
        # Jittered, capped backoff: contending writers otherwise collide again in lock-step.
        time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 6))))
    raise Conflict(f"update of {key!r} lost {retries + 1} CAS races in a row")


@dataclass
class TxnBuilder:
    """Collects guarded record writes into one all-or-nothing txn.

    Used where two records must change together (an allocation and its endpoint record, moby#27398
    left endpoints behind because they were written separately).
    """

    compares: list[Cmp] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)

    def create(self, key: str, value: Record) -> TxnBuilder:
        """Write ``value`` only if ``key`` does not exist yet."""
        self.compares.append(Cmp(key, 0))
        self.ops.append(Put(key, encode(value)))
        return self

    def replace(self, key: str, value: Record, mod_rev: int) -> TxnBuilder:
        """Overwrite ``key`` only if it is still at ``mod_rev`` (0: only if absent)."""
        self.compares.append(Cmp(key, mod_rev))
        self.ops.append(Put(key, encode(value)))
        return self

    def delete(self, key: str, mod_rev: int | None = None) -> TxnBuilder:
        """Delete ``key`` (only if it is at ``mod_rev``, when given)."""
        if mod_rev is not None:
            self.compares.append(Cmp(key, mod_rev))
        self.ops.append(Delete(key))
        return self

    def require(self, key: str, mod_rev: int) -> TxnBuilder:
        """Commit only if ``key`` is still at ``mod_rev``, without writing it."""
        self.compares.append(Cmp(key, mod_rev))
        return self

    def commit(self, store: Store) -> TxnResult:
        return store.txn(self.compares, self.ops)


# -- keys ------------------------------------------------------------------------------------------

NETWORKS = "networks/"
NAMES = "names/"
ENDPOINTS = "endpoints/"
HOSTS = "hosts/"
SUBNET_CLAIMS = "claims/subnets"          # bumped by every network create: the overlap check's token
PORT_CLAIMS = "claims/ports/"             # + host: bumped by every host-port choice of that host
OVERLAYS = "overlays/"
VNI_CLAIMS = "claims/vni/"                # + VNI: the overlay holding it, created with the overlay
# An endpoint's ``Spec.Options`` key holding its container's names, "name,hostname,alias...": given
# by the runtime at CreateEndpoint, learnt from dockerd after Join (agent/dockernames.py). Other
# hosts of an overlay resolve the container by them (runtime hosts files, agent/dns.py).
NAMES_OPTION = "cnmkit.names"


def network_key(network_id: str) -> str:
    return f"{NETWORKS}{network_id}"


def name_key(name: str) -> str:
    return f"{NAMES}{name}"


def endpoint_key(network_id: str, endpoint_id: str) -> str:
    return f"{ENDPOINTS}{network_id}/{endpoint_id}"


def endpoints_prefix(network_id: str) -> str:
    return f"{ENDPOINTS}{network_id}/"


def host_key(host_id: str) -> str:
    return f"{HOSTS}{host_id}"


def port_claims_key(host_id: str) -> str:
    return PORT_CLAIMS + (host_id or "-")


def overlay_key(name: str) -> str:
    return f"{OVERLAYS}{name}"


def vni_claim_key(vni: int) -> str:
    return f"{VNI_CLAIMS}{vni}"


def network_id_of(key: str) -> str:
    """``networks/<id>`` -> ``<id>``."""
    return key[len(NETWORKS):]


def host_id_of(key: str) -> str:
    """``hosts/<id>`` -> ``<id>``."""
    return key[len(HOSTS):]


def endpoint_ids_of(key: str) -> tuple[str, str]:
    """``endpoints/<net>/<ep>`` -> (``<net>``, ``<ep>``)."""
    network_id, _, endpoint_id = key[len(ENDPOINTS):].rpartition("/")
    return network_id, endpoint_id


# -- names and claims ------------------------------------------------------------------------------

def encode_name(network_id: str) -> bytes:
    """A name record holds the network id as raw bytes (not JSON)."""
    return network_id.encode()


def decode_name(data: bytes) -> str:
    return data.decode()


def next_claim(kv: KV | None) -> bytes:
    """The value that bumps a claims key (absent counts as generation 0)."""
    return str(int(kv.value) + 1 if kv else 1).encode()


# -- network and endpoint specs --------------------------------------------------------------------

def _ipam_to_dict(data: IPAMData) -> dict[str, Any]:
    return {"Pool": str(data.pool), "Gateway": str(data.gateway) if data.gateway else "",
            "AuxAddresses": {k: str(v) for k, v in data.aux_addresses.items()},
            "AddressSpace": data.address_space}


def _ipam_from_dict(d: dict[str, Any]) -> IPAMData:
    return IPAMData(pool=IPNetwork(d["Pool"]), gateway=IPNetwork(d["Gateway"]) if d.get("Gateway") else None,
                    aux_addresses={k: IPNetwork(v) for k, v in d.get("AuxAddresses", {}).items()},
                    address_space=d.get("AddressSpace", ""))


def network_to_dict(spec: NetworkSpec) -> dict[str, Any]:
    """The ``Spec`` of a network record; also what ``network ls``/``inspect`` show of it."""
    return {"NetworkID": spec.network_id, "Name": spec.name, "Options": dict(spec.options),
            "EnableIPv6": spec.enable_ipv6, "Internal": spec.internal,
            "IPv4": [_ipam_to_dict(d) for d in spec.ipv4], "IPv6": [_ipam_to_dict(d) for d in spec.ipv6]}


def network_from_dict(d: dict[str, Any]) -> NetworkSpec:
    return NetworkSpec(network_id=d["NetworkID"], name=d.get("Name", ""), options=dict(d.get("Options", {})),
                       enable_ipv6=bool(d.get("EnableIPv6")), internal=bool(d.get("Internal")),
                       ipv4=tuple(_ipam_from_dict(x) for x in d.get("IPv4", [])),
                       ipv6=tuple(_ipam_from_dict(x) for x in d.get("IPv6", [])))


def endpoint_to_dict(spec: EndpointSpec) -> dict[str, Any]:
    """The ``Spec`` of an endpoint record; also what ``network inspect`` shows of it."""
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
    try:
        json.dumps(options)
        return dict(options)
    except TypeError:
        return {k: v for k, v in options.items() if isinstance(v, str | int | float | bool | list | dict)}


# -- records ---------------------------------------------------------------------------------------

def _owned(host: str | None, host_id: str) -> bool:
    """A record with no host predates hosts: it is whichever host's reads it."""
    return (host_id if host is None else host) == host_id


@dataclass(frozen=True)
class NetworkRecord:
    """``networks/<id>``: the spec a network was created with, its driver, its host."""

    driver: str
    spec: NetworkSpec
    host: str | None = None                     # None: written before hosts existed (key absent)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # keys of a newer version

    _KEYS = frozenset({"Driver", "Spec", "Host"})

    def owned_by(self, host_id: str) -> bool:
        return _owned(self.host, host_id)

    def to_dict(self) -> Record:
        rec: Record = {**self.extra, "Driver": self.driver, "Spec": network_to_dict(self.spec)}
        if self.host is not None:
            rec["Host"] = self.host
        return rec

    @classmethod
    def from_dict(cls, rec: Record) -> NetworkRecord:
        return cls(driver=rec["Driver"], spec=network_from_dict(rec["Spec"]), host=rec.get("Host"),
                   extra={k: v for k, v in rec.items() if k not in cls._KEYS})

    def encode(self) -> bytes:
        return encode(self.to_dict())

    @classmethod
    def decode(cls, data: bytes) -> NetworkRecord:
        return cls.from_dict(decode(data))


@dataclass(frozen=True)
class EndpointRecord:
    """``endpoints/<net>/<ep>``: the endpoint's spec and what happened to it since.

    ``mac`` is the ``Result`` CreateEndpoint answered (replayed to a retried create); ``sandbox``
    the key of the sandbox it joined ("" when not joined); ``ports`` the host ports chosen for it
    (None: the record has no ``Ports`` key, as before the first publish and after a revoke).
    """

    spec: EndpointSpec
    mac: str = ""
    sandbox: str = ""
    host: str | None = None                     # None: written before hosts existed (key absent)
    ports: tuple[PortBinding, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # keys of a newer version

    _KEYS = frozenset({"Spec", "Result", "Sandbox", "Host", "Ports"})

    @property
    def result(self) -> EndpointResult:
        return EndpointResult(mac=self.mac)

    @property
    def joined(self) -> bool:
        return bool(self.sandbox)

    def owned_by(self, host_id: str) -> bool:
        return _owned(self.host, host_id)

    def to_dict(self) -> Record:
        rec: Record = {**self.extra, "Spec": endpoint_to_dict(self.spec), "Result": {"mac": self.mac},
                       "Sandbox": self.sandbox}
        if self.host is not None:
            rec["Host"] = self.host
        if self.ports is not None:
            rec["Ports"] = [asdict(p) for p in self.ports]
        return rec

    @classmethod
    def from_dict(cls, rec: Record) -> EndpointRecord:
        ports = rec.get("Ports")
        return cls(spec=endpoint_from_dict(rec["Spec"]), mac=(rec.get("Result") or {}).get("mac", ""),
                   sandbox=rec.get("Sandbox") or "", host=rec.get("Host"),
                   ports=None if ports is None else tuple(PortBinding(**p) for p in ports),
                   extra={k: v for k, v in rec.items() if k not in cls._KEYS})

    def encode(self) -> bytes:
        return encode(self.to_dict())

    @classmethod
    def decode(cls, data: bytes) -> EndpointRecord:
        return cls.from_dict(decode(data))


class HostRecord(TypedDict):
    """``hosts/<id>``: who a live daemon is, kept under its lease (agent/hosts.py)."""

    HostID: str
    Advertise: str
    Started: float
    PID: int


def encode_host(record: HostRecord) -> bytes:
    return encode(dict(record))


def decode_host(data: bytes) -> dict[str, Any]:
    """A host record as a plain dict: the CLI shows it, with whatever keys its writer put."""
    return decode(data)


@dataclass(frozen=True)
class OverlayRecord:
    """``overlays/<name>``: what every host's network of one VXLAN overlay must agree on.

    Written by compare-and-swap by the first create (of any host); every later create, on any
    host, must match it field by field or is refused naming the field (drivers/vxlan.py).
    ``subnets`` and ``gateways`` are CIDR strings in pool order (IPv4 first). ``networks`` (network
    id -> its host) is the overlay's membership, changed by compare-and-swap with every create and
    delete of one of its networks, so the delete that takes the last one is the one that removes
    the record, however many run at once (None: a record from before membership was kept).
    """

    name: str
    vni: int
    mtu: int
    subnets: tuple[str, ...]
    gateways: tuple[str, ...]
    internal: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    networks: dict[str, str] | None = field(default=None, compare=False)

    _KEYS = frozenset({"Name", "VNI", "MTU", "Subnets", "Gateways", "Internal", "Networks"})

    def to_dict(self) -> Record:
        rec = {**self.extra, "Name": self.name, "VNI": self.vni, "MTU": self.mtu,
               "Subnets": list(self.subnets), "Gateways": list(self.gateways), "Internal": self.internal}
        if self.networks is not None:
            rec["Networks"] = dict(sorted(self.networks.items()))
        return rec

    @classmethod
    def from_dict(cls, rec: Record) -> OverlayRecord:
        members = rec.get("Networks")
        return cls(name=rec["Name"], vni=int(rec["VNI"]), mtu=int(rec["MTU"]),
                   subnets=tuple(rec.get("Subnets") or ()), gateways=tuple(rec.get("Gateways") or ()),
                   internal=bool(rec.get("Internal")),
                   extra={k: v for k, v in rec.items() if k not in cls._KEYS},
                   networks={str(k): str(v) for k, v in members.items()} if isinstance(members, dict) else None)

    def encode(self) -> bytes:
        return encode(self.to_dict())

    @classmethod
    def decode(cls, data: bytes) -> OverlayRecord:
        return cls.from_dict(decode(data))


def overlay_network_ids(store: Store, network_id: str, rec: NetworkRecord) -> list[str]:
    """Every network record of ``rec``'s overlay (its own id included), or just ``network_id``.

    Why: the names of an overlay's containers on other hosts sit under those hosts' engines' network
    ids; both the inspect the runtime asks (drivers/manager.py) and the daemon's hosts-file rewrite
    (agent/peer_names.py) must read them all.
    """
    # ``-o cnmkit.overlay=NAME``: each dockerd mints its own network id for one overlay.
    name = rec.spec.options.get(OVERLAY_OPTION)
    if not name:
        return [network_id]
    return [network_id_of(kv.key) for kv in store.list(NETWORKS)[0]
            if (other := NetworkRecord.decode(kv.value)).driver == rec.driver
            and other.spec.options.get(OVERLAY_OPTION) == name]
