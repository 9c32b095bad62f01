"""Client tokens and their roles: the `--tokens` file, `--token`, and the networks of `--peer-allow`.

Reading only: what a role may do is decided in api/access.py. A token is never written to a log or
an error message, only the line it is on.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from pathlib import Path

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Role(enum.IntEnum):
    """Who may call a route. READ < WRITE < ADMIN: each client role includes the ones below it.
    PUBLIC needs no token; PEER is not a client role at all (no client token opens it)."""

    PUBLIC = 0
    READ = 1
    WRITE = 2
    ADMIN = 3
    PEER = 4

    @property
    def label(self) -> str:
        return self.name.lower()


CLIENT_ROLES = {role.label: role for role in (Role.READ, Role.WRITE, Role.ADMIN)}
# Visible ASCII: what fits in `Authorization: Bearer <token>` and in a whitespace-separated line.
TOKEN_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))


class TokenError(Exception):
    """A tokens file or token that cannot be used; the message is one line for the operator."""


def token_problem(token: str) -> str | None:
    if not token:
        return "is empty"
    if not set(token) <= TOKEN_CHARS:
        return "has characters other than visible ASCII (no spaces)"
    if token.startswith("#"):
        return "starts with #, which starts a comment"
    return None


def parse_tokens(text: str, source: str) -> dict[str, Role]:
    """Lines `ROLE TOKEN`; a word that starts with `#` starts a comment, to the end of the line;
    blank lines are skipped."""
    tokens: dict[str, Role] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        comment = next((i for i, word in enumerate(fields) if word.startswith("#")), len(fields))
        fields = fields[:comment]
        if not fields:
            continue
        where = f"{source}, line {number}"
        if len(fields) != 2:
            raise TokenError(f"{where}: expected `ROLE TOKEN` (two words), got {len(fields)} words")
        label, token = fields
        role = CLIENT_ROLES.get(label)
        if role is None:
            raise TokenError(f"{where}: unknown role {label[:20]!r}; use read, write or admin")
        problem = token_problem(token)
        if problem:
            raise TokenError(f"{where}: the token {problem}")
        if token in tokens:
            raise TokenError(f"{where}: the same token is already on line {lines[token]}")
        tokens[token] = role
        lines[token] = number
    return tokens


def read_tokens(path: Path) -> dict[str, Role]:
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError:
        raise TokenError(f"tokens file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise TokenError(f"cannot read tokens file {path}: {exc.strerror or exc}") from None
    return parse_tokens(text, f"tokens file {path}")


def client_tokens(path: Path | None, admin: str | None, peer: str | None) -> dict[str, Role] | None:
    """Every client token and its role: the file's, and `--token` as admin. None when the node
    has no client token at all (its client endpoints are open)."""
    if path is None and admin is None:
        return None
    tokens = read_tokens(path) if path is not None else {}
    if admin is not None:
        problem = token_problem(admin)
        if problem:
            raise TokenError(f"--token {problem}")
        tokens[admin] = Role.ADMIN  # the stronger of the two, should the file also list it
    if peer is not None and peer in tokens:
        raise TokenError("the peer token must differ from every client token")
    return tokens


def parse_networks(text: str) -> tuple[Network, ...]:
    """`--peer-allow`: comma-separated networks (`10.0.0.0/8`) or single addresses."""
    networks: list[Network] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part))
        except ValueError as exc:
            raise TokenError(
                f"--peer-allow: {part!r} is not a network (CIDR) or address: {exc}"
            ) from None
    return tuple(networks)


def address_allowed(address: str | None, networks: Iterable[Network]) -> bool:
    """Whether a peer request from `address` may be served without a peer token: loopback, or
    inside one of `networks`. IPv4 addresses seen through an IPv6 socket count as IPv4."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or any(ip in network for network in networks)
