"""Strict decoding of request targets: what aiohttp would silently repair, we refuse with a 400.

Malformed percent-escapes and bytes that are not UTF-8 are errors, never guessed at, so a key or
value is stored exactly as the client encoded it or not at all.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from shareddb.api.errors import bad_request
from shareddb.times import MAX_TTL

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?|\.[0-9]+([eE][-+]?[0-9]+)?")


def decode(text: str, *, plus_is_space: bool) -> str:
    """Percent-decode one component of a URL strictly; '+' is a space in query strings only."""
    if plus_is_space and "+" in text:
        text = text.replace("+", " ")
    if "%" not in text:
        if text.isascii():
            return text
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request("request target is not valid UTF-8") from None
        return text
    if _BAD_ESCAPE.search(text):
        raise bad_request("malformed percent-encoding in the request target")
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeError:
        raise bad_request("percent-encoded bytes are not valid UTF-8") from None


def split_target(raw_target: str) -> tuple[str, str]:
    """The raw (still encoded) path and query string of a request target."""
    path, _, query = raw_target.partition("?")
    return path, query


def parse_query(raw_query: str) -> dict[str, str]:
    """Query parameters, strictly decoded. A repeated name keeps its first value."""
    params: dict[str, str] = {}
    if not raw_query:
        return params
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = decode(name, plus_is_space=True)
        if name not in params:
            params[name] = decode(value, plus_is_space=True)
    return params


def positive_number(params: dict[str, str], name: str, default: float) -> float:
    raw = params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and _NUMBER.fullmatch(raw)):
        raise bad_request(f"{name} must be a positive number, not {raw!r}")
    number = float(raw)
    if not number > 0 or number == float("inf"):
        raise bad_request(f"{name} must be a positive number, not {raw!r}")
    return number


def positive_int(params: dict[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or int(raw) < 1:
        raise bad_request(f"{name} must be a positive integer, not {raw!r}")
    return int(raw)


def ttl_seconds(params: dict[str, str]) -> int | None:
    """`ttl=S`: an integer number of seconds from 1 to MAX_TTL, or None when not given."""
    raw = params.get("ttl")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not 1 <= int(raw) <= MAX_TTL:
        raise bad_request(f"ttl must be an integer number of seconds from 1 to {MAX_TTL}, not {raw!r}")
    return int(raw)
