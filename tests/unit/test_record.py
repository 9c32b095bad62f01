"""Records, versions and the last-writer-wins rule, and the limits on keys, values and node ids."""

from __future__ import annotations

import itertools

import pytest

from shareddb.record import (
    MAX_KEY_BYTES,
    Record,
    is_version,
    key_error,
    make_version,
    node_id_error,
    supersedes,
    value_error,
    version_hlc,
    version_node,
)

# --- versions ---------------------------------------------------------------------------------


def test_version_is_fixed_width_hex_hlc_dash_node_id() -> None:
    assert make_version(0x1A2B, "n1") == "0000000000001a2b-n1"
    assert make_version(0, "n") == "0000000000000000-n"
    assert make_version((1 << 64) - 1, "n") == "ffffffffffffffff-n"


@pytest.mark.parametrize(
    ("hlc", "node"),
    [(0, "n"), (1, "node-1"), (0x0123456789ABCDEF, "a.b_c-D9"), ((1 << 64) - 1, "x" * 64)],
)
def test_version_parts_round_trip(hlc: int, node: str) -> None:
    version = make_version(hlc, node)
    assert version_hlc(version) == hlc
    assert version_node(version) == node
    assert is_version(version)


def test_node_id_containing_dashes_round_trips() -> None:
    version = make_version(7, "a-b-c")
    assert version_node(version) == "a-b-c"
    assert version_hlc(version) == 7


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0000000000000001",  # no node id
        "0000000000000001-",  # empty node id
        "000000000000001-n1",  # 15 hex digits
        "00000000000000001-n1",  # 17 hex digits
        "000000000000000A-n1",  # upper-case hex
        "000000000000000g-n1",
        "0000000000000001_n1",  # wrong separator
        "0000000000000001-n 1",
        "0000000000000001-n/1",
        "0000000000000001-" + "x" * 65,
        " 0000000000000001-n1",
        "0000000000000001-n1\n",
    ],
)
def test_is_version_rejects_malformed_text(text: str) -> None:
    assert not is_version(text)


NODE_IDS = ["a", "ab", "a-", "a-b", "a.", "a_", "aa", "b", "A", "Z9", "n1", "n10", "n1-x", "n-1", "9"]
HLCS = [0, 1, 0xFF, 0x100, 0xFFFF, 0x10000, (1 << 48) - 1, 1 << 48, (1 << 64) - 1]


def test_string_order_of_versions_is_hlc_then_node_id_order() -> None:
    """Invariant 3: the greatest version wins, so string order must equal (hlc, node id) order.

    The node ids include ones that are prefixes of each other ("a", "ab", "a-", "a-b") and ones
    whose characters sort around the dash separator.
    """
    pairs = list(itertools.product(HLCS, NODE_IDS))
    by_string = sorted(pairs, key=lambda p: make_version(*p))
    assert by_string == sorted(pairs)


@pytest.mark.parametrize(
    ("smaller", "greater"),
    [
        ((1, "z"), (2, "a")),  # the clock decides before the node id
        ((0xF, "n1"), (0x10, "n1")),  # fixed width: 0x10 > 0xF although "10" < "f" would not hold
        ((5, "a"), (5, "ab")),  # a node id that is a prefix of the other sorts first
        ((5, "n1"), (5, "n1-x")),
        ((5, "n"), (5, "n.")),
        ((5, "A"), (5, "a")),
    ],
)
def test_greater_version_compares_greater_as_a_plain_string(
    smaller: tuple[int, str], greater: tuple[int, str]
) -> None:
    assert make_version(*smaller) < make_version(*greater)


# --- the LWW rule -----------------------------------------------------------------------------


def test_any_version_supersedes_nothing() -> None:
    assert supersedes(make_version(0, "n"), None)


def test_strictly_greater_version_supersedes() -> None:
    assert supersedes(make_version(2, "a"), make_version(1, "z"))
    assert supersedes(make_version(1, "b"), make_version(1, "a"))


def test_equal_version_does_not_supersede_so_applying_twice_changes_nothing() -> None:
    """Applying the same record twice is idempotent: equal versions name the same write."""
    version = make_version(9, "n1")
    assert not supersedes(version, version)


def test_smaller_version_does_not_supersede() -> None:
    """Invariant 3: an older write never replaces a newer one."""
    assert not supersedes(make_version(1, "z"), make_version(2, "a"))
    assert not supersedes(make_version(1, "a"), make_version(1, "ab"))


def test_lww_winner_does_not_depend_on_arrival_order() -> None:
    """Invariant 2 and 3: whatever order versions arrive in, the greatest one is kept."""
    versions = [make_version(h, n) for h, n in [(3, "a"), (1, "b"), (3, "ab"), (2, "z")]]
    for order in itertools.permutations(versions):
        kept: str | None = None
        for version in order:
            if supersedes(version, kept):
                kept = version
        assert kept == make_version(3, "ab")


def test_record_without_value_is_a_tombstone() -> None:
    assert Record("k", None, make_version(1, "n")).deleted
    assert not Record("k", "", make_version(1, "n")).deleted
    assert not Record("k", "v", make_version(1, "n")).deleted


# --- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "k",
        "a/b/c",
        " ",
        "a+b&c=d#e%f",
        "😀",
        "a" * MAX_KEY_BYTES,
        "é" * 512,  # 2-byte characters: exactly 1024 bytes
        "€" * 341 + "a",  # 3-byte characters: 1023 + 1 bytes
        "😀" * 256,  # 4-byte characters: exactly 1024 bytes
    ],
)
def test_key_error_accepts_valid_keys_up_to_1024_utf8_bytes(key: str) -> None:
    assert key_error(key) is None


@pytest.mark.parametrize(
    ("key", "size"),
    [
        ("a" * 1025, 1025),
        ("é" * 512 + "a", 1025),
        ("é" * 513, 1026),
        ("€" * 342, 1026),  # only 342 characters, but 1026 bytes
        ("😀" * 256 + "a", 1025),
    ],
)
def test_key_error_refuses_keys_over_1024_utf8_bytes(key: str, size: int) -> None:
    assert key_error(key) == f"key is {size} bytes, the limit is 1024"


def test_key_error_refuses_the_empty_key() -> None:
    assert key_error("") == "key must not be empty"


@pytest.mark.parametrize("key", ["\x00", "a\x00", "\x00a", "a\x00b"])
def test_key_error_refuses_nul(key: str) -> None:
    assert key_error(key) == "key must not contain NUL"


def test_key_error_refuses_a_lone_surrogate() -> None:
    assert key_error("a\ud800") == "key must be valid UTF-8"


# --- values -----------------------------------------------------------------------------------


def test_empty_value_is_a_value() -> None:
    assert value_error("", 0) is None
    assert value_error("", 16) is None


@pytest.mark.parametrize(
    ("value", "limit"),
    [("a" * 16, 16), ("é" * 8, 16), ("😀" * 4, 16), ("€" * 5 + "a", 16), ("\x00", 1)],
)
def test_value_error_accepts_values_up_to_the_limit_in_utf8_bytes(value: str, limit: int) -> None:
    assert value_error(value, limit) is None


@pytest.mark.parametrize(
    ("value", "limit", "size"),
    [
        ("a" * 17, 16, 17),
        ("é" * 8 + "a", 16, 17),  # 9 characters, 17 bytes
        ("😀" * 4 + "a", 16, 17),  # 5 characters, 17 bytes
        ("é", 1, 2),
    ],
)
def test_value_error_counts_utf8_bytes_not_characters(value: str, limit: int, size: int) -> None:
    assert value_error(value, limit) == f"value is {size} bytes, the limit is {limit}"


def test_value_error_refuses_a_lone_surrogate() -> None:
    assert value_error("\udce9", 16) == "value must be valid UTF-8"


# --- node ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("node_id", ["n", "n1", "node-1", "a.b_c-D9", "x" * 64, "-", "."])
def test_node_id_error_accepts_1_to_64_safe_characters(node_id: str) -> None:
    assert node_id_error(node_id) is None


@pytest.mark.parametrize(
    "node_id", ["", "x" * 65, "n 1", "n/1", "n:1", "nö", "n1\n", "\nn1", "n\x001", "n+1"]
)
def test_node_id_error_refuses_other_ids(node_id: str) -> None:
    assert node_id_error(node_id) == (
        "node id must be 1-64 characters of A-Z, a-z, 0-9, '_', '.' and '-'"
    )
