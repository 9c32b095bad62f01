"""Redis URLs as the command line takes them (`--store`, `--registry`): checked, and shown without
their password."""

from __future__ import annotations

import urllib.parse


def check_redis_url(url: str) -> None:
    """Raise ValueError with a one-line reason unless `url` is redis://[:PASSWORD@]HOST[:PORT][/DB]."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{exc}; expected redis://HOST:PORT/DB") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("expected redis://HOST:PORT/DB")
    if not parts.hostname:
        raise ValueError("no host in the URL; expected redis://HOST:PORT/DB")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} is not in 1..65535")
    db = parts.path.removeprefix("/")
    if db and not db.isdigit():
        raise ValueError(f"database {db!r} is not a number; expected redis://HOST:PORT/DB")


def redact_url(url: str) -> str:
    """`url` without its password, for messages and logs (never raises)."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{host}{slash}{path}"
