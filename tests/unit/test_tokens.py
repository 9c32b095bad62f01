"""The tokens file, `--token`, and which addresses `--peer-allow` lets use the peer endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from shareddb.tokens import (
    Role,
    TokenError,
    address_allowed,
    client_tokens,
    parse_networks,
    parse_tokens,
)


def test_a_tokens_file_gives_each_token_its_role() -> None:
    text = "# who may do what\n\nread  r1\n  write\tw1  # the app\nadmin a#1 #ops\n#read old\nread r2\n"
    assert parse_tokens(text, "f") == {
        "r1": Role.READ,
        "w1": Role.WRITE,
        "a#1": Role.ADMIN,
        "r2": Role.READ,
    }
    assert parse_tokens("", "f") == {}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("reader r1\n", "line 1: unknown role 'reader'"),
        ("read\n", "line 1: expected `ROLE TOKEN`"),
        ("\nread r1 extra\n", "line 2: expected `ROLE TOKEN`"),
        ("read r1\nwrite r1\n", "line 2: the same token is already on line 1"),
        ("read r\u00e9\n", "visible ASCII"),
        ("READ r1\n", "unknown role"),
    ],
)
def test_a_bad_tokens_file_is_refused_naming_the_line_not_the_token(text: str, says: str) -> None:
    with pytest.raises(TokenError) as refused:
        parse_tokens(text, "tokens file t")
    assert says in str(refused.value)
    assert str(refused.value).startswith("tokens file t, line ")
    assert "r1" not in str(refused.value)  # a token is never shown


def test_token_is_an_admin_token_beside_the_file(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("read r1\nread a1\n")
    assert client_tokens(None, None, None) is None  # no client tokens: the client API is open
    assert client_tokens(None, "a1", None) == {"a1": Role.ADMIN}
    assert client_tokens(file, "a1", "p1") == {"r1": Role.READ, "a1": Role.ADMIN}
    file.write_text("")
    assert client_tokens(file, None, None) == {}  # a file with no tokens locks the client API


def test_the_peer_token_must_not_be_a_client_token(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("write shared\n")
    with pytest.raises(TokenError, match="peer token must differ"):
        client_tokens(file, None, "shared")
    with pytest.raises(TokenError, match="peer token must differ"):
        client_tokens(None, "shared", "shared")


def test_an_unreadable_tokens_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match=r"cannot read tokens file .*missing"):
        client_tokens(tmp_path / "missing", None, None)
    (tmp_path / "binary").write_bytes(b"read \xff\xfe\n")
    with pytest.raises(TokenError, match="not UTF-8"):
        client_tokens(tmp_path / "binary", None, None)


def test_peer_allow_parses_networks_and_addresses() -> None:
    assert [str(n) for n in parse_networks("10.0.0.0/8, 192.168.1.7,fd00::/8,")] == [
        "10.0.0.0/8",
        "192.168.1.7/32",
        "fd00::/8",
    ]
    assert parse_networks("") == ()
    with pytest.raises(TokenError, match="host bits set"):
        parse_networks("10.0.0.5/8")
    with pytest.raises(TokenError, match="does not appear to be"):
        parse_networks("not-a-network")


def test_peer_requests_without_a_peer_token_come_from_loopback_or_allowed_networks() -> None:
    allowed = parse_networks("10.1.0.0/16,172.28.0.11,fd00:1::/32")
    inside = ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "10.1.200.3",
              "::ffff:10.1.0.1", "172.28.0.11", "fd00:1:2::3", "fd00:1::1%eth0"]  # fmt: skip
    outside = ["10.2.0.1", "172.28.0.12", "172.28.0.1", "192.168.0.1", "8.8.8.8",
               "fd00:2::1", "::ffff:10.2.0.1", "", None, "garbage", "0.0.0.0"]  # fmt: skip
    for address in inside:
        assert address_allowed(address, allowed), address
    for maybe in outside:
        assert not address_allowed(maybe, allowed), maybe
    # With no --peer-allow, only loopback.
    assert address_allowed("127.0.0.1", ())
    assert not address_allowed("10.1.0.1", ())
