"""etcdgw.mvcc.keys: KeyRange.of (contract K02-K06) and prefix_end (K05)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etcdgw.mvcc.keys import KeyRange, prefix_end

# Small alphabet with the edge bytes, so that prefixes and bounds collide often.
keys = st.binary(min_size=1, max_size=4).map(lambda b: bytes(x % 4 * 0x55 for x in b)) | st.binary(
    min_size=1, max_size=3
)


def test_single_key() -> None:
    kr = KeyRange.of(b"a", b"")
    assert kr.single and not kr.empty
    assert b"a" in kr
    for other in (b"", b"\x00", b"a\x00", b"b", b"A"):
        assert other not in kr


def test_from_key() -> None:
    kr = KeyRange.of(b"b", b"\x00")
    assert not kr.single and not kr.empty and kr.end is None
    assert b"b" in kr and b"b\x00" in kr and b"\xff\xff" in kr and b"zz" in kr
    assert b"a" not in kr and b"a\xff" not in kr


def test_whole_keyspace() -> None:
    kr = KeyRange.of(b"\x00", b"\x00")
    assert not kr.empty
    for k in (b"\x00", b"\x00\x00", b"a", b"\xff", b"\xff\xff\xff"):
        assert k in kr


def test_half_open_interval() -> None:
    kr = KeyRange.of(b"a", b"c")
    assert not kr.single and not kr.empty
    for k in (b"a", b"a\x00", b"b", b"b\xff\xff", b"bz"):
        assert k in kr
    for k in (b"\x00", b"`", b"c", b"c\x00", b"d"):
        assert k not in kr


def test_unsigned_byte_order() -> None:
    # 0x80.. sorts above 0x7f (unsigned), as in Go's bytes.Compare.
    kr = KeyRange.of(b"\x7f", b"\x81")
    assert b"\x80" in kr and b"\x7f\xff" in kr
    assert b"\x81" not in kr and b"\x7e" not in kr


@pytest.mark.parametrize(
    ("key", "end"),
    [(b"b", b"a"), (b"a", b"a"), (b"\xff", b"\x01"), (b"a\x00", b"a")],
)
def test_empty_when_start_not_below_end(key: bytes, end: bytes) -> None:
    kr = KeyRange.of(key, end)
    assert kr.empty
    for k in (key, end, b"a", b"\x00", b"\xff"):
        assert k not in kr


def test_not_empty_single_or_from_key_even_for_high_keys() -> None:
    assert not KeyRange.of(b"\xff", b"").empty
    assert not KeyRange.of(b"\xff", b"\x00").empty  # "\x00" is from-key, not an upper bound


def test_contains_rejects_non_bytes() -> None:
    assert "a" not in KeyRange.of(b"a", b"")


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"a", b"b"),
        (b"a\xff", b"b"),
        (b"a\xff\xff", b"b"),
        (b"ab", b"ac"),
        (b"/registry/pods/", b"/registry/pods0"),
        (b"\x00", b"\x01"),
        (b"a\xfe", b"a\xff"),
        (b"\xff", b"\x00"),
        (b"\xff\xff\xff", b"\x00"),
        (b"", b"\x00"),
    ],
)
def test_prefix_end(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


@given(prefix=keys, key=keys)
def test_prefix_range_holds_exactly_the_prefixed_keys(prefix: bytes, key: bytes) -> None:
    kr = KeyRange.of(prefix, prefix_end(prefix))
    assert (key in kr) == key.startswith(prefix)


@given(key=keys, end=keys, probe=keys)
def test_interval_membership(key: bytes, end: bytes, probe: bytes) -> None:
    kr = KeyRange.of(key, end)
    if end == b"\x00":
        expected = probe >= key
    else:
        expected = key <= probe < end
    assert (probe in kr) == expected
    assert kr.empty == (end != b"\x00" and key >= end)
