"""Fixtures shared by unit test files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from client.engine import Engine
from plugin.server import DaemonConfig
from tests.daemon_thread import DaemonThread


@pytest.fixture
def null_engine(tmp_path: Path) -> Iterator[Engine]:
    """An Engine on an in-process daemon with the null driver and a SQLite store under ``tmp_path``."""
    config = DaemonConfig(plugin_dir=str(tmp_path / "plugins"), state_dir=str(tmp_path / "state"),
                          store_url=f"sqlite://{tmp_path}/state.db", drivers=["null"])
    daemon = DaemonThread(config).start()
    e = Engine(config.plugin_dir)
    yield e
    e.close()
    daemon.stop()
