"""Request routing: exact paths and path prefixes matched on the raw request target.

aiohttp's Application router, middlewares and sub-apps cost about a third of a request's time on the
hot paths (measured with `make bench`), so the node serves through aiohttp's low-level `web.Server`
with this table instead. Each API surface (seed, kv, cluster, ops) contributes its own routes, as
sub-apps would; errors of every surface are rendered here, in the shape of the path they came from.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from shareddb.api.errors import ApiError
from shareddb.store.base import StoreFull, StoreUnavailable

log = logging.getLogger("shareddb.api")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# Told of every answered request: method, the route's path pattern ("unmatched" for no route), status
# and seconds taken (api/metrics.py).
Observer = Callable[[str, str, int, float], None]
UNMATCHED = "unmatched"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # exact, or a prefix when it ends with "/*"
    handler: Handler
    public: bool = False  # served without --token (health checks)
    peer: bool = False  # replication: needs --peer-token (or --token when there is none)
    safe: bool = True  # a GET that changes nothing, so HEAD may run it too


class Router:
    """Finds the handler of a request and turns every failure into the contract's JSON."""

    def __init__(
        self,
        routes: Iterable[Route],
        *,
        token: str | None = None,
        peer_token: str | None = None,
        observe: Observer | None = None,
    ) -> None:
        self._observe = observe
        self._exact: dict[str, dict[str, Route]] = {}
        self._prefixes: list[tuple[str, dict[str, Route]]] = []
        for route in routes:
            if route.path.endswith("/*"):
                prefix = route.path[:-1]
                table = next((t for p, t in self._prefixes if p == prefix), None)
                if table is None:
                    table = {}
                    self._prefixes.append((prefix, table))
            else:
                table = self._exact.setdefault(route.path, {})
            table[route.method] = route
            if route.method == "GET" and route.safe:
                table.setdefault("HEAD", route)
        self._token = token.encode("utf-8") if token else None
        self._peer_token = peer_token.encode("utf-8") if peer_token else self._token

    def _match(self, path: str) -> dict[str, Route] | None:
        table = self._exact.get(path)
        if table is None:
            for prefix, candidate in self._prefixes:
                if path.startswith(prefix):
                    return candidate
        return table

    def _pattern(self, path: str) -> str:
        """The path of the route serving `path`, as declared (never the path itself)."""
        if path in self._exact:
            return path
        for prefix, _ in self._prefixes:
            if path.startswith(prefix):
                return prefix + "*"
        return UNMATCHED

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        if self._observe is None:
            return await self._serve(request)
        started = time.perf_counter()
        pattern = self._pattern(request.raw_path.partition("?")[0])
        try:
            response = await self._serve(request)
        except Exception:  # aiohttp answers it with a 500
            self._observe(request.method, pattern, 500, time.perf_counter() - started)
            raise
        self._observe(request.method, pattern, response.status, time.perf_counter() - started)
        return response

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        try:
            table = self._match(path)
            if table is None:
                raise ApiError(404, f"no such endpoint: {request.method} {path}")
            route = table.get(request.method)
            if route is None:
                allowed = ", ".join(sorted(table))
                error = ApiError(405, f"{request.method} is not allowed on {path}; use {allowed}")
                response = error.response(seed=path.startswith("/nodes/"))
                response.headers["Allow"] = allowed
                return response
            if route.peer:
                if self._peer_token is not None:
                    _check_token(request, self._peer_token, "peer token")
            elif self._token is not None and not route.public:
                _check_token(request, self._token, "token")
            return await route.handler(request)
        except ApiError as exc:
            return exc.response(seed=path.startswith("/nodes/"))
        except StoreFull as exc:  # the store logs when this starts and ends, not each request
            error = ApiError(507, f"{exc}; reads still work, and writes resume once it can")
            return error.response(seed=path.startswith("/nodes/"))
        except StoreUnavailable as exc:
            log.warning("store unavailable: %s", exc)
            error = ApiError(503, f"store unavailable: {exc}")
            return error.response(seed=path.startswith("/nodes/"))


def _check_token(request: web.BaseRequest, expected: bytes, what: str) -> None:
    """A bearer token, compared in constant time."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, f"this node needs a {what}: send Authorization: Bearer <{what}>")
    if not hmac.compare_digest(given.strip().encode("utf-8"), expected):
        raise ApiError(403, f"the {what} is not valid for this node")
