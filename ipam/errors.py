"""IPAM failures, each carrying a message that names what the operator must look at.

Docker shows the IPAM error text verbatim to the user (the plugin sends it as ``{"Error": msg}``),
so the message is the whole user interface: it names the field, the address or the pool involved.
The classes exist so that callers (plugin, CLI, tests) can tell failures apart by type, never by text.
"""

from __future__ import annotations

from plugin.quoting import shown


class IpamError(Exception):
    """Base class of every IPAM failure; ``str(err)`` is what Docker shows the user."""


class PoolNotFound(IpamError):
    def __init__(self, pool_id: str) -> None:
        super().__init__(f"pool {shown(pool_id)} not found")
        self.pool_id = pool_id


class PoolOverlap(IpamError):
    def __init__(self, requested: str, existing: str, existing_id: str) -> None:
        super().__init__(f"pool {requested} overlaps existing pool {existing} (PoolID {shown(existing_id)})")
        self.requested = requested
        self.existing = existing
        self.existing_id = existing_id


class PoolExhausted(IpamError):
    def __init__(self, pool: str, detail: str = "no free address left") -> None:
        super().__init__(f"pool {pool}: {detail}")
        self.pool = pool


class AddressInUse(IpamError):
    def __init__(self, address: str, pool_id: str) -> None:
        super().__init__(f"address {address} is already allocated in pool {shown(pool_id)}")
        self.address = address
        self.pool_id = pool_id


class AddressOutOfPool(IpamError):
    def __init__(self, address: str, pool: str, why: str = "is not inside") -> None:
        super().__init__(f"address {address} {why} pool {pool}")
        self.address = address
        self.pool = pool


class InvalidRequest(IpamError):
    """A request field is malformed; the message starts with the protocol field name."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class StoreContention(IpamError):
    """Compare-and-swap kept losing to other writers; nothing was allocated, the caller may retry."""
