"""Which drivers exist, built explicitly: no import side effects, nothing global.

Each entry maps the short name used by ``cnmkit daemon --driver`` to a factory taking the
store; the kernel adapter and firewall are imported only when a kernel-backed driver is asked
for, so unit tiers and the null driver need neither root nor pyroute2 sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from drivers.base import NetworkDriver
from drivers.null import NullDriver
from store.base import Store


def _bridge(store: Store) -> NetworkDriver:
    from drivers.bridge import BridgeDriver
    from drivers.firewall import Firewall
    from drivers.kernel import Kernel

    return BridgeDriver(Kernel(), Firewall())


FACTORIES: dict[str, Callable[[Store], NetworkDriver]] = {
    "bridge": _bridge,
    "null": lambda store: NullDriver(),
}


def build_drivers(names: Sequence[str], store: Store) -> list[NetworkDriver]:
    unknown = [n for n in names if n not in FACTORIES]
    if unknown:
        raise ValueError(f"unknown driver {unknown[0]!r}; available: {', '.join(sorted(FACTORIES))}")
    return [FACTORIES[n](store) for n in dict.fromkeys(names)]
