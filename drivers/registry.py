"""Which drivers exist, built explicitly: no import side effects, nothing global.

Each entry maps the short name used by ``cnmkit daemon --driver`` to a factory taking the
store; the kernel adapter and firewall are imported only when a kernel-backed driver is asked
for, so unit tiers and the null driver need neither root nor pyroute2 sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from drivers.base import NetworkDriver
from drivers.null import NullDriver
from drivers.reaper import Idle
from store.base import Store


@dataclass(frozen=True)
class DriverSettings:
    """Daemon settings some drivers need; empty ``sandbox_dirs`` means the driver's defaults."""

    sandbox_dirs: tuple[str, ...] = field(default=())
    host_id: str = ""                                  # the VLAN and VXLAN drivers: this host's id
    vlan_range: tuple[int, int] | None = None          # None: drivers/vlan.py's DEFAULT_VID_RANGE
    advertise: str = ""                                # the VXLAN driver's tunnel address
    idle: Idle | None = None                           # the bridge's reaper waits for no request in flight


def _bridge(store: Store, settings: DriverSettings) -> NetworkDriver:
    from drivers.bridge import DEFAULT_SANDBOX_DIRS, BridgeDriver
    from drivers.firewall import Firewall
    from drivers.kernel import Kernel
    from drivers.reaper import BackgroundReaper
    from plugin import profile

    kernel = profile.wrap(Kernel(), "kernel")
    return BridgeDriver(kernel, Firewall(), sandbox_dirs=settings.sandbox_dirs or DEFAULT_SANDBOX_DIRS,
                        reaper=BackgroundReaper(kernel, idle=settings.idle))


def _vlan(store: Store, settings: DriverSettings) -> NetworkDriver:
    from drivers.bridge import DEFAULT_SANDBOX_DIRS
    from drivers.firewall import Firewall
    from drivers.kernel import Kernel
    from drivers.vlan import DEFAULT_VID_RANGE, VlanDriver

    return VlanDriver(Kernel(), Firewall(), store, host_id=settings.host_id,
                      vid_range=settings.vlan_range or DEFAULT_VID_RANGE,
                      sandbox_dirs=settings.sandbox_dirs or DEFAULT_SANDBOX_DIRS)


def _vxlan(store: Store, settings: DriverSettings) -> NetworkDriver:
    from drivers.bridge import DEFAULT_SANDBOX_DIRS
    from drivers.kernel import OverlayKernel
    from drivers.vxlan import VxlanDriver

    return VxlanDriver(OverlayKernel(), store, settings.host_id, settings.advertise,
                       sandbox_dirs=settings.sandbox_dirs or DEFAULT_SANDBOX_DIRS)


FACTORIES: dict[str, Callable[[Store, DriverSettings], NetworkDriver]] = {
    "bridge": _bridge,
    "vlan": _vlan,
    "vxlan": _vxlan,
    "null": lambda store, settings: NullDriver(),
}


def build_drivers(names: Sequence[str], store: Store,
                  settings: DriverSettings | None = None) -> list[NetworkDriver]:
    unknown = [n for n in names if n not in FACTORIES]
    if unknown:
        raise ValueError(f"unknown driver {unknown[0]!r}; available: {', '.join(sorted(FACTORIES))}")
    return [FACTORIES[n](store, settings or DriverSettings()) for n in dict.fromkeys(names)]
