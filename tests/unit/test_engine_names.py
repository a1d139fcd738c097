"""A new network's name is checked against names only, never against id prefixes."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.engine import Engine
from client.transport import PluginError, PluginTransport


@pytest.fixture
def engine(null_engine: Engine) -> Engine:
    return null_engine


def test_a_name_that_is_another_networks_id_prefix_is_free(engine: Engine, tmp_path: Path) -> None:
    # The flaky case of test_automatic_pools_do_not_overlap made certain: an id starting with "b".
    nid = "b" + "0" * 63
    body = {"NetworkID": nid, "Options": {"com.docker.network.generic": {"cnmkit.name": "first"}},
            "IPv4Data": [{"AddressSpace": "x", "Pool": "10.83.0.0/24", "Gateway": "10.83.0.1/24"}],
            "IPv6Data": []}
    PluginTransport(str(tmp_path / "plugins" / "cnmkit-null.sock")).call("NetworkDriver.CreateNetwork", body)
    assert engine.inspect_network("b")["Id"] == nid          # a prefix still resolves for inspect
    created = engine.create_network("b", driver="null", subnets=["10.84.0.0/24"])
    assert engine.inspect_network("b")["Id"] == created
    with pytest.raises(PluginError, match="already in use"):
        engine.create_network("b", driver="null", subnets=["10.85.0.0/24"])
