"""Pure IPAM arithmetic: parsing, usable ranges, offsets and keys (no store involved)."""

from __future__ import annotations

import itertools

import pytest
from netaddr import IPAddress, IPNetwork

from ipam.allocator import (
    PoolSpec,
    find_overlap,
    make_pool_spec,
    offset_key,
    parse_address,
    parse_cidr,
    parse_offset_key,
    usable_offsets,
)
from ipam.errors import AddressOutOfPool, InvalidRequest, PoolExhausted
from ipam.pools import candidates, pick_predefined


@pytest.mark.parametrize("text", ["abc", "10.0.0.0", "10/8", "10.0.0.0/33", "10.0.0.0/ 24",
                                  "10.0.0.0/24 ", "fd00::/129", "", "10.0.0.300/24", "10.0.0.0/-1"])
def test_parse_cidr_rejects_malformed_and_names_field(text: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_cidr("Pool", text)
    assert exc.value.field == "Pool"
    assert str(exc.value) == f"Pool: {text!r} is not a valid CIDR"


def test_parse_cidr_rejects_host_bits_and_suggests_network() -> None:
    with pytest.raises(InvalidRequest, match=r"^SubPool: '10\.0\.0\.5/24' has host bits set .*0\.0/24"):
        parse_cidr("SubPool", "10.0.0.5/24")


def test_parse_cidr_accepts_v4_and_v6() -> None:
    assert parse_cidr("Pool", "10.20.0.0/16") == IPNetwork("10.20.0.0/16")
    assert parse_cidr("Pool", "fd00:1::/64") == IPNetwork("fd00:1::/64")


@pytest.mark.parametrize("text", ["10.0.0.300", "127.1", "010.0.0.1", "10.0.0.1/24", "fe80::1%eth0", "x", ""])
def test_parse_address_rejects_with_field(text: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^Address: ") as exc:
        parse_address("Address", text)
    assert repr(text) in str(exc.value)


@pytest.mark.parametrize(("cidr", "expected"), [
    ("10.0.0.0/24", (1, 254)), ("10.0.0.0/30", (1, 2)), ("10.0.0.0/31", (0, 1)), ("10.0.0.5/32", (0, 0)),
    ("fd00::/64", (1, 2**64 - 1)), ("fd00::/120", (1, 255)), ("fd00::/127", (0, 1)), ("fd00::1/128", (0, 0)),
])
def test_usable_offsets(cidr: str, expected: tuple[int, int]) -> None:
    assert usable_offsets(IPNetwork(cidr)) == expected


def test_make_pool_spec_family_mismatch_names_v6_field() -> None:
    with pytest.raises(InvalidRequest, match=r"^V6: is true but Pool 10\.0\.0\.0/24 is IPv4$"):
        make_pool_spec("10.0.0.0/24", "", True)
    with pytest.raises(InvalidRequest, match=r"^V6: is false but Pool fd00::/64 is IPv6$"):
        make_pool_spec("fd00::/64", "", False)


def test_make_pool_spec_sub_pool_must_be_inside() -> None:
    with pytest.raises(InvalidRequest, match=r"^SubPool: 10\.0\.1\.0/25 is not inside Pool 10\.0\.0\.0/24$"):
        make_pool_spec("10.0.0.0/24", "10.0.1.0/25", False)
    with pytest.raises(InvalidRequest, match=r"^SubPool: fd00::/120 is not inside Pool 10\.0\.0\.0/24$"):
        make_pool_spec("10.0.0.0/24", "fd00::/120", False)
    with pytest.raises(InvalidRequest, match=r"^SubPool: 10\.0\.0\.0/16 is not inside"):
        make_pool_spec("10.0.0.0/24", "10.0.0.0/16", False)


def test_sub_pool_range_uses_pool_network_and_broadcast() -> None:
    """As in Docker: the range's first address is allocatable, the pool's broadcast is not."""
    spec = make_pool_spec("10.0.0.0/24", "10.0.0.128/25", False)
    lo, hi = spec.range()
    assert (str(spec.address_at(lo)), str(spec.address_at(hi))) == ("10.0.0.128", "10.0.0.254")
    assert spec.range_capacity() == 127
    assert spec.capacity() == 254
    low = make_pool_spec("10.0.0.0/24", "10.0.0.0/28", False)
    assert low.range() == (1, 15)


def test_sub_pool_without_usable_address_is_rejected() -> None:
    with pytest.raises(InvalidRequest, match=r"^SubPool: 10\.0\.0\.255/32 holds no usable address"):
        make_pool_spec("10.0.0.0/24", "10.0.0.255/32", False)


def test_offset_of_rejects_outside_network_broadcast_and_anycast() -> None:
    spec = PoolSpec(IPNetwork("10.0.0.0/24"))
    assert spec.offset_of(IPAddress("10.0.0.7")) == 7
    with pytest.raises(AddressOutOfPool, match=r"^address 10\.0\.1\.7 is not inside pool 10\.0\.0\.0/24$"):
        spec.offset_of(IPAddress("10.0.1.7"))
    with pytest.raises(AddressOutOfPool, match=r"^address 10\.0\.0\.0 is the network address of pool"):
        spec.offset_of(IPAddress("10.0.0.0"))
    with pytest.raises(AddressOutOfPool, match=r"^address 10\.0\.0\.255 is the broadcast address of pool"):
        spec.offset_of(IPAddress("10.0.0.255"))
    with pytest.raises(AddressOutOfPool, match=r"is not inside pool"):
        spec.offset_of(IPAddress("::ffff:10.0.0.7"))
    v6 = PoolSpec(IPNetwork("fd00::/64"))
    with pytest.raises(AddressOutOfPool, match=r"^address fd00:: is the subnet-router anycast address"):
        v6.offset_of(IPAddress("fd00::"))


def test_offsets_round_trip_on_a_64() -> None:
    spec = PoolSpec(IPNetwork("fd00:1:2:3::/64"))
    addr = IPAddress("fd00:1:2:3:ffff:ffff:ffff:fffe")
    off = spec.offset_of(addr)
    assert off == 2**64 - 2
    assert spec.address_at(off) == addr
    assert spec.with_prefix(addr) == "fd00:1:2:3:ffff:ffff:ffff:fffe/64"


def test_offset_keys_sort_numerically_up_to_2_128() -> None:
    offsets = [0, 1, 9, 10, 255, 256, 2**32, 2**64 - 1, 2**128 - 1]
    keys = [offset_key(o) for o in offsets]
    assert sorted(keys) == keys
    assert len({len(k) for k in keys}) == 1
    assert [parse_offset_key(k) for k in keys] == offsets


def test_find_overlap_names_the_existing_pool() -> None:
    existing = [("a/10.0.0.0/24", IPNetwork("10.0.0.0/24")), ("a/fd00::/64", IPNetwork("fd00::/64"))]
    assert find_overlap(IPNetwork("10.0.0.128/25"), existing) == existing[0]
    assert find_overlap(IPNetwork("10.0.0.0/8"), existing) == existing[0]
    assert find_overlap(IPNetwork("10.0.1.0/24"), existing) is None
    assert find_overlap(IPNetwork("fd00::/48"), existing) == existing[1]


def test_predefined_candidates_in_order() -> None:
    v4 = list(itertools.islice(candidates(False), 3))
    assert [str(n) for n in v4] == ["10.200.0.0/24", "10.200.1.0/24", "10.200.2.0/24"]
    assert str(list(candidates(False))[-1]) == "10.207.255.0/24"
    v6 = list(itertools.islice(candidates(True), 2))
    assert [str(n) for n in v6] == ["fd63:6e6d:6b00::/64", "fd63:6e6d:6b00:1::/64"]


def test_pick_predefined_skips_held_and_avoided() -> None:
    held = [IPNetwork("10.200.0.0/24"), IPNetwork("fd00::/16"), IPNetwork("fd63:6e6d:6b00::/63")]
    avoid = [IPNetwork("10.200.1.0/24"), IPNetwork("10.200.2.128/25")]
    assert str(pick_predefined(False, held, avoid)) == "10.200.3.0/24"
    assert str(pick_predefined(True, held, avoid)) == "fd63:6e6d:6b00:2::/64"


def test_pick_predefined_exhausted() -> None:
    with pytest.raises(PoolExhausted, match=r"^pool 10\.200\.0\.0/13: no predefined /24 left"):
        pick_predefined(False, [IPNetwork("10.192.0.0/10")], [])
