"""Strict decoding of request targets: what a client percent-encodes comes back exactly, or a 400."""

from __future__ import annotations

import pytest

from shareddb.api.errors import ApiError
from shareddb.api.query import decode, parse_query, positive_int, positive_number, split_target

# --- decode -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("plain", "plain"),
        ("", ""),
        ("a%2Fb", "a/b"),
        ("a%2fb", "a/b"),  # lower-case hex digits are escapes too
        ("%20", " "),
        ("%25", "%"),
        ("%2525", "%25"),  # decoded once, never twice
        ("%26%3D%23%2B%3F", "&=#+?"),
        ("%C3%A9", "é"),
        ("%E2%82%AC", "€"),
        ("%F0%9F%98%80", "😀"),
        ("%00", "\x00"),  # decoding keeps NUL; refusing it is the key rule's job
        ("é", "é"),  # already-decoded text is returned as it is
    ],
)
def test_decode_percent_decodes_exactly(encoded: str, decoded: str) -> None:
    assert decode(encoded, plus_is_space=False) == decoded
    assert decode(encoded, plus_is_space=True) == decoded


def test_plus_is_a_space_in_queries_only() -> None:
    assert decode("a+b", plus_is_space=True) == "a b"
    assert decode("a+b", plus_is_space=False) == "a+b"
    assert decode("++", plus_is_space=True) == "  "


def test_encoded_plus_is_a_plus_in_queries() -> None:
    assert decode("a%2Bb", plus_is_space=True) == "a+b"
    assert decode("%2B+%2B", plus_is_space=True) == "+ +"


@pytest.mark.parametrize(
    "encoded",
    [
        "%",  # nothing after the percent sign
        "a%",
        "%2",  # one hex digit
        "a%2",
        "%G1",  # not a hex digit
        "%1G",
        "%%",
        "%%41",
        "% 1",
        "%+1",
        "%-1",
    ],
)
def test_malformed_percent_escape_is_a_400(encoded: str) -> None:
    """Invariant 6: bad input gets a clear 4xx."""
    for plus_is_space in (False, True):
        with pytest.raises(ApiError, match="malformed percent-encoding") as raised:
            decode(encoded, plus_is_space=plus_is_space)
        assert raised.value.status == 400


@pytest.mark.parametrize(
    "encoded",
    [
        "%e9",  # Latin-1 é alone: not UTF-8
        "caf%E9",
        "%C3",  # truncated two-byte sequence
        "%C3%28",  # bad continuation byte
        "%F0%9F%98",  # truncated four-byte sequence
        "%C0%AF",  # overlong encoding of '/'
        "%ED%A0%80",  # an encoded surrogate
        "%FF",
        "%80",  # a lone continuation byte
    ],
)
def test_percent_encoded_bytes_that_are_not_utf8_are_a_400(encoded: str) -> None:
    """Invariant 6: bad input gets a clear 4xx."""
    with pytest.raises(ApiError, match="not valid UTF-8") as raised:
        decode(encoded, plus_is_space=False)
    assert raised.value.status == 400


def test_unencoded_text_that_is_not_utf8_is_a_400() -> None:
    """A raw byte the HTTP layer kept as a surrogate escape is refused, not stored."""
    with pytest.raises(ApiError, match="not valid UTF-8") as raised:
        decode("caf\udce9", plus_is_space=False)
    assert raised.value.status == 400


# --- split_target -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/v1/kv/a", "/v1/kv/a", ""),
        ("/v1/kv/a?", "/v1/kv/a", ""),
        ("/v1/kv/a?w=1", "/v1/kv/a", "w=1"),
        ("/v1/kv/a%3Fb?w=1?x", "/v1/kv/a%3Fb", "w=1?x"),  # only the first '?' splits
    ],
)
def test_split_target_splits_at_the_first_question_mark_and_decodes_nothing(
    target: str, path: str, query: str
) -> None:
    assert split_target(target) == (path, query)


# --- parse_query ------------------------------------------------------------------------------


def test_empty_query_has_no_parameters() -> None:
    assert parse_query("") == {}


@pytest.mark.parametrize(
    ("query", "params"),
    [
        ("name=k&value=v", {"name": "k", "value": "v"}),
        ("name=k&value=", {"name": "k", "value": ""}),
        ("name=k&value", {"name": "k", "value": ""}),
        ("value=a=b", {"value": "a=b"}),  # only the first '=' separates
        ("&&name=k&", {"name": "k"}),
        ("name=a+b", {"name": "a b"}),
        ("name=a%2Bb", {"name": "a+b"}),
        ("na%6De=k", {"name": "k"}),  # names are decoded too
        ("first+name=k", {"first name": "k"}),
        ("v=%26%3D%23%25%2B%20%F0%9F%98%80", {"v": "&=#%+ 😀"}),
    ],
)
def test_parse_query_decodes_names_and_values(query: str, params: dict[str, str]) -> None:
    assert parse_query(query) == params


def test_repeated_name_keeps_the_first_value() -> None:
    assert parse_query("name=first&name=second&name=third") == {"name": "first"}
    assert parse_query("name=&name=second") == {"name": ""}
    assert parse_query("na%6De=first&name=second") == {"name": "first"}


@pytest.mark.parametrize("query", ["name=%", "name=k&value=%G1", "value=%e9", "%zz=1", "name=%C3%28"])
def test_parse_query_refuses_bad_encoding_with_400(query: str) -> None:
    """Invariant 6: bad input gets a clear 4xx."""
    with pytest.raises(ApiError) as raised:
        parse_query(query)
    assert raised.value.status == 400


# --- positive_int -----------------------------------------------------------------------------


def test_positive_int_absent_is_the_default() -> None:
    assert positive_int({}, "w", 1) == 1
    assert positive_int({"other": "x"}, "w", 3) == 3


@pytest.mark.parametrize(("raw", "value"), [("1", 1), ("2", 2), ("007", 7), ("999999999", 999_999_999)])
def test_positive_int_accepts_plain_decimal_digits(raw: str, value: int) -> None:
    assert positive_int({"w": raw}, "w", 1) == value


@pytest.mark.parametrize(
    "raw",
    [
        "0",
        "00",
        "-1",
        "+1",
        "abc",
        "",
        " 1",
        "1 ",
        "1.0",
        "1.5",
        "1e3",
        "0x10",
        "1_0",
        "inf",
        "nan",
        "١",  # an Arabic-Indic digit: str.isdigit() but not ASCII
        "²",
        "1000000000",  # over nine digits
    ],
)
def test_positive_int_refuses_everything_else_with_400(raw: str) -> None:
    """Invariant 6: bad input gets a clear 4xx."""
    with pytest.raises(ApiError, match="w must be a positive integer") as raised:
        positive_int({"w": raw}, "w", 1)
    assert raised.value.status == 400


# --- positive_number --------------------------------------------------------------------------


def test_positive_number_absent_is_the_default() -> None:
    assert positive_number({}, "timeout", 5.0) == 5.0


@pytest.mark.parametrize(
    ("raw", "value"), [("1", 1.0), ("0.5", 0.5), ("1e3", 1000.0), ("2.5e-1", 0.25), ("30", 30.0)]
)
def test_positive_number_accepts_finite_positive_numbers(raw: str, value: float) -> None:
    assert positive_number({"timeout": raw}, "timeout", 5.0) == value


@pytest.mark.parametrize(
    "raw",
    [
        "0",
        "0.0",
        "-0",
        "-1",
        "-0.5",
        "abc",
        "",
        "inf",
        "Infinity",
        "-inf",
        "nan",
        "NaN",
        "1e400",  # overflows to infinity
        "1e-400",  # underflows to zero
        "1,5",
    ],
)
def test_positive_number_refuses_everything_else_with_400(raw: str) -> None:
    """Invariant 6: bad input gets a clear 4xx."""
    with pytest.raises(ApiError, match="timeout must be a positive number") as raised:
        positive_number({"timeout": raw}, "timeout", 5.0)
    assert raised.value.status == 400


@pytest.mark.parametrize("raw", ["1_0", " 5", "5 ", "١", "٥"])
def test_positive_number_accepts_only_plain_ascii_decimal_notation(raw: str) -> None:
    """SPEC: a timeout that is not a positive number is 400; positive_int already refuses these."""
    with pytest.raises(ApiError) as raised:
        positive_number({"timeout": raw}, "timeout", 5.0)
    assert raised.value.status == 400
