"""Who may call which route: the one place that turns a request's credentials into 401, 403 or a pass.

Client routes need a client token whose role is at least the route's (read < write < admin) when the
node has client tokens (`--token`, `--tokens`); without any, they are open. A request without a
known client token gets 401 on every path but the public ones, whether the path exists or not, so a
client without a token cannot map the routes. Peer routes take no client token at all: they accept
the peer token (`--peer-token`), or a verified certificate under mutual TLS, and a node with neither
serves them only to loopback and `--peer-allow` networks. The public routes are /health and the
dashboard's static files (/ui, /ui/*); see "Access" in docs/design.md.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

from aiohttp import web

from shareddb.api.errors import ApiError
from shareddb.config import Settings
from shareddb.tls import peer_certified
from shareddb.tokens import Network, Role, TokenError, address_allowed, client_tokens

log = logging.getLogger("shareddb.access")

NEEDS_TOKEN = "this node needs a token: send Authorization: Bearer <token>"
UNKNOWN_TOKEN = "this node does not know that token"
PEER_ONLY = "a peer endpoint: it takes the peer token, not a client token"
NOT_A_PEER = "a peer endpoint: this node serves it only to its peers (peer token, or an allowed network)"


def bearer(request: web.BaseRequest) -> bytes | None:
    """The token of an `Authorization: Bearer` header, as bytes; None when there is none."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return None
    return given.encode("utf-8", "surrogateescape")


class Access:
    """The node's credentials and the rule that checks them. `reload()` re-reads the tokens file
    (SIGHUP); a request in flight sees either the old tokens or the new ones, never a mix."""

    def __init__(
        self,
        tokens: dict[str, Role] | None = None,
        *,
        peer_token: str | None = None,
        peer_networks: tuple[Network, ...] = (),
        mutual_tls: bool = False,
        tokens_file: Path | None = None,
        admin_token: str | None = None,
    ) -> None:
        self._tokens = _encoded(tokens)
        self._peer_token = peer_token.encode("utf-8") if peer_token else None
        self._peer_networks = peer_networks
        # Under mutual TLS a verified certificate opens peer routes; with a peer token the token
        # does. Only with neither does the network a request comes from decide.
        self._mutual_tls = mutual_tls
        self._tokens_file = tokens_file
        self._admin_token = admin_token
        self._peer_token_text = peer_token

    @classmethod
    def from_settings(cls, settings: Settings, *, mutual_tls: bool = False) -> Access:
        """Raises TokenError with one line for the operator."""
        tokens = client_tokens(settings.tokens, settings.token, settings.peer_token)
        if settings.peer_allow and (settings.peer_token or mutual_tls):
            log.warning(
                "--peer-allow is not used: with a peer token or mutual TLS, peers must present it"
            )
        return cls(
            tokens,
            peer_token=settings.peer_token,
            peer_networks=settings.peer_allow,
            mutual_tls=mutual_tls,
            tokens_file=settings.tokens,
            admin_token=settings.token,
        )

    def reload(self) -> None:
        """Re-read the tokens file; a file that cannot be used keeps the tokens in use. Logs one
        line either way."""
        if self._tokens_file is None:
            log.info("SIGHUP: no --tokens file to re-read")
            return
        try:
            tokens = client_tokens(self._tokens_file, self._admin_token, self._peer_token_text)
        except TokenError as exc:
            kept = len(self._tokens or ())
            log.error("tokens not reloaded, the %d in use are kept: %s", kept, exc)
            return
        assert tokens is not None  # a tokens file is set
        self._tokens = _encoded(tokens)
        counts = {role.label: sum(1 for r in tokens.values() if r is role) for role in Role}
        log.info(
            "tokens reloaded from %s: %d read, %d write, %d admin",
            self._tokens_file,
            counts["read"],
            counts["write"],
            counts["admin"],
        )

    def check(self, request: web.BaseRequest, role: Role | None) -> None:
        """Raises ApiError (401/403) unless the request may call a route of `role`; `role` None:
        no route matched the path or method (it will be 404/405 for a caller that may know)."""
        if role is Role.PEER:
            self._check_peer(request)
            return
        tokens = self._tokens
        if tokens is None:
            return  # no client tokens: the client routes are open
        given = bearer(request)
        if given is None:
            raise ApiError(401, NEEDS_TOKEN)
        granted = Role.PUBLIC
        for token, token_role in tokens:  # every one compared, in constant time, no early exit
            if hmac.compare_digest(given, token):
                granted = token_role
        if granted is Role.PUBLIC:
            if self._peer_token is not None and hmac.compare_digest(given, self._peer_token):
                if role is None:
                    return  # a peer may learn that a path does not exist
                raise ApiError(403, "the peer token opens only the peer endpoints")
            raise ApiError(401, UNKNOWN_TOKEN)
        if role is not None and granted < role:
            article = "an" if role is Role.ADMIN else "a"
            raise ApiError(
                403, f"this needs {article} {role.label} token; the token given is {granted.label}"
            )

    def _check_peer(self, request: web.BaseRequest) -> None:
        if self._mutual_tls and peer_certified(request):
            return
        if self._peer_token is not None:
            given = bearer(request)
            if given is not None and hmac.compare_digest(given, self._peer_token):
                return
            if given is not None and self._is_client_token(given):
                raise ApiError(403, PEER_ONLY)
            raise ApiError(401, NOT_A_PEER)
        if self._mutual_tls:
            raise ApiError(401, NOT_A_PEER)
        if address_allowed(request.remote, self._peer_networks):
            return
        given = bearer(request)
        if given is not None and self._is_client_token(given):
            raise ApiError(403, PEER_ONLY)
        raise ApiError(401, NOT_A_PEER)

    def _is_client_token(self, given: bytes) -> bool:
        found = False
        for token, _ in self._tokens or ():
            found |= hmac.compare_digest(given, token)
        return found


def _encoded(tokens: dict[str, Role] | None) -> tuple[tuple[bytes, Role], ...] | None:
    if tokens is None:
        return None
    return tuple((token.encode("utf-8"), role) for token, role in tokens.items())
