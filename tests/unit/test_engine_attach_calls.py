"""What the client's attach sends (client/engine.py): the calls an attach needs, no listing.

Every call is a round trip to the daemon and, on etcd, at least one to the store (issue 8 item 8),
so the attach asks for the network without its endpoint list and names the pool from the
network's address space instead of listing every pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from client.engine import Engine
from client.transport import PluginError, PluginTransport


@pytest.fixture
def engine(null_engine: Engine) -> Engine:
    return null_engine


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    plain = PluginTransport.call

    def spy(self: PluginTransport, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        seen.append((method, dict(body or {})))
        return plain(self, method, body)

    monkeypatch.setattr(PluginTransport, "call", spy)
    return seen


def test_an_attach_is_five_calls_without_a_pool_listing(engine: Engine, calls: list, tmp_path: Path) -> None:
    engine.create_network("n1", driver="null", subnets=["10.86.0.0/24"])
    calls.clear()
    att = engine.attach("n1", str(tmp_path / "sandbox"))
    assert [m for m, _ in calls] == ["Cnmkit.NetworkInspect", "IpamDriver.RequestAddress",
                                     "NetworkDriver.CreateEndpoint", "NetworkDriver.Join",
                                     "NetworkDriver.EndpointOperInfo"]
    assert calls[0][1] == {"Network": "n1", "Endpoints": False}
    assert calls[1][1]["PoolID"] == "cnmkit-local/10.86.0.0/24" and att.address == "10.86.0.2/24"
    engine.detach(att, "cnmkit-null")
    assert engine.inspect_network("n1")["EndpointList"] == []


def test_a_network_whose_space_holds_no_such_pool_is_looked_up_in_the_list(engine: Engine, calls: list,
                                                                          tmp_path: Path) -> None:
    """Made by another engine with an address space the IPAM does not know: the named pool is
    not found, the list is asked, and its answer (none held) is the error, as before."""
    body = {"NetworkID": "c" * 64, "Options": {"com.docker.network.generic": {"cnmkit.name": "foreign"}},
            "IPv4Data": [{"AddressSpace": "x", "Pool": "10.87.0.0/24", "Gateway": "10.87.0.1/24"}],
            "IPv6Data": []}
    PluginTransport(str(tmp_path / "plugins" / "cnmkit-null.sock")).call("NetworkDriver.CreateNetwork", body)
    calls.clear()
    with pytest.raises(PluginError, match=r"no IPAM pool 10\.87\.0\.0/24 is held"):
        engine.attach("foreign", str(tmp_path / "sandbox"))
    assert [m for m, _ in calls] == ["Cnmkit.NetworkInspect", "IpamDriver.RequestAddress", "Cnmkit.PoolList"]
