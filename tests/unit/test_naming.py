"""Derived names must fit IFNAMSIZ, stay distinct per id, and reject what the kernel would."""

from __future__ import annotations

import pytest

from drivers import naming

NID = "3f6c" + "a" * 60
EID = "b7e1" + "c" * 60


def test_names_fit_ifnamsiz_and_use_their_prefixes() -> None:
    assert naming.bridge_name(NID) == "cnm-3f6caaaaaaa"
    assert naming.host_veth_name(EID) == "cnvb7e1cccccccc"
    assert naming.container_veth_name(EID) == "cnib7e1cccccccc"
    for name in (naming.bridge_name(NID), naming.host_veth_name(EID), naming.container_veth_name(EID)):
        assert len(name) == naming.IFNAMSIZ
        assert naming.valid_ifname(name)


def test_host_and_container_ends_differ() -> None:
    assert naming.host_veth_name(EID) != naming.container_veth_name(EID)


def test_aliases_and_firewall_mark() -> None:
    assert naming.network_alias(NID) == f"cnmkit:net:{NID}"
    assert naming.endpoint_alias(EID) == f"cnmkit:ep:{EID}"
    assert naming.firewall_mark(NID) == f"cnmkit:{NID}"            # the whole id, never a prefix


@pytest.mark.parametrize("bad", ["", "ABCDEF" + "0" * 58, "xyz" + "0" * 61, "12ab", "0" * 65, "../etc"])
def test_ids_that_are_not_lowercase_hex_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        naming.bridge_name(bad)


@pytest.mark.parametrize("name,ok", [
    ("br0", True), ("a" * 15, True), ("a" * 16, False), ("", False), (".", False), ("..", False),
    ("br/0", False), ("br:0", False), ("br 0", False), ("br\t0", False),
])
def test_valid_ifname_mirrors_the_kernel(name: str, ok: bool) -> None:
    assert naming.valid_ifname(name) is ok


def test_random_mac_is_locally_administered_unicast() -> None:
    for _ in range(50):
        mac = naming.random_mac()
        assert naming.valid_mac(mac)
        first = int(mac[:2], 16)
        assert first & 0x01 == 0 and first & 0x02 == 0x02


def test_stable_mac_is_deterministic_and_distinct() -> None:
    assert naming.stable_mac("x") == naming.stable_mac("x")
    assert naming.stable_mac("x") != naming.stable_mac("y")
    assert int(naming.stable_mac("x")[:2], 16) & 0x03 == 0x02
