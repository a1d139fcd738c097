"""The daemon hands its command-line settings to the drivers it builds.

Why: ``Daemon.__init__`` once built its drivers twice and the second build dropped
``--vlan-range``, so the option was accepted and silently ignored.
"""

from __future__ import annotations

from pathlib import Path

from drivers.vlan import DEFAULT_VID_RANGE, VlanDriver
from plugin.server import Daemon, DaemonConfig


def _vlan_driver(tmp_path: Path, **kw: object) -> VlanDriver:
    config = DaemonConfig(plugin_dir=str(tmp_path / "p"), state_dir=str(tmp_path / "s"),
                          store_url="memory://", drivers=["vlan"], advertise="192.0.2.1", **kw)  # type: ignore[arg-type]
    daemon = Daemon(config)
    try:
        (driver,) = daemon.drivers
        assert isinstance(driver, VlanDriver)
        return driver
    finally:
        daemon.executor.shutdown()


def test_the_daemons_vlan_range_reaches_the_vlan_driver(tmp_path: Path) -> None:
    assert _vlan_driver(tmp_path, vlan_range=(100, 110)).vid_range == (100, 110)


def test_without_a_vlan_range_the_driver_keeps_its_default(tmp_path: Path) -> None:
    assert DEFAULT_VID_RANGE != (100, 110)
    assert _vlan_driver(tmp_path).vid_range == DEFAULT_VID_RANGE
