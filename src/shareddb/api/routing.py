"""Request routing: exact paths and path prefixes matched on the raw request target.

aiohttp's Application router, middlewares and sub-apps cost about a third of a request's time on the
hot paths (measured with `make bench`), so the node serves through aiohttp's low-level `web.Server`
with this table instead. Each API surface (seed, kv, cluster, ops) contributes its own routes, as
sub-apps would; errors of every surface are rendered here, in the shape of the path they came from.
Every route declares the role that may call it; access.py decides, before the path's 404 or 405.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from shareddb.api.access import Access
from shareddb.api.errors import ApiError
from shareddb.store.base import StoreFull, StoreUnavailable
from shareddb.tokens import Role

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
    role: Role  # who may call it: PUBLIC, READ, WRITE, ADMIN (client tokens) or PEER
    safe: bool = True  # a GET that changes nothing, so HEAD may run it too


class Router:
    """Finds the handler of a request and turns every failure into the contract's JSON."""

    def __init__(
        self, routes: Iterable[Route], access: Access | None = None, observe: Observer | None = None
    ) -> None:
        self.routes = tuple(routes)  # as declared (the docs' table of roles is checked against it)
        self._observe = observe
        self._exact: dict[str, dict[str, Route]] = {}
        self._prefixes: list[tuple[str, dict[str, Route]]] = []
        for route in self.routes:
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
        self.access = access or Access()

    def _match(self, path: str) -> tuple[str, dict[str, Route] | None]:
        """The routes serving `path`, and their path as declared (never the path itself: it labels
        the request in /metrics), UNMATCHED when there are none."""
        table = self._exact.get(path)
        if table is not None:
            return path, table
        for prefix, candidate in self._prefixes:
            if path.startswith(prefix):
                return prefix + "*", candidate
        return UNMATCHED, None

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        pattern, table = self._match(path)
        if self._observe is None:
            return await self._serve(request, path, table)
        started = time.perf_counter()
        try:
            response = await self._serve(request, path, table)
        except Exception:  # aiohttp answers it with a 500
            self._observe(request.method, pattern, 500, time.perf_counter() - started)
            raise
        self._observe(request.method, pattern, response.status, time.perf_counter() - started)
        return response

    async def _serve(
        self, request: web.BaseRequest, path: str, table: dict[str, Route] | None
    ) -> web.StreamResponse:
        try:
            route = None if table is None else table.get(request.method)
            if route is None:
                self.access.check(request, None)  # 401 before 404/405: paths are not for anyone
                if table is None:
                    raise ApiError(404, f"no such endpoint: {request.method} {path}")
                allowed = ", ".join(sorted(table))
                error = ApiError(405, f"{request.method} is not allowed on {path}; use {allowed}")
                response = error.response(seed=path.startswith("/nodes/"))
                response.headers["Allow"] = allowed
                return response
            if route.role is not Role.PUBLIC:
                self.access.check(request, route.role)
            return await route.handler(request)
        except ApiError as exc:
            response = exc.response(seed=path.startswith("/nodes/"))
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="shareddb"'  # RFC 6750
            return response
        except StoreFull as exc:  # the store logs when this starts and ends, not each request
            error = ApiError(507, f"{exc}; reads still work, and writes resume once it can")
            return error.response(seed=path.startswith("/nodes/"))
        except StoreUnavailable as exc:
            log.warning("store unavailable: %s", exc)
            error = ApiError(503, f"store unavailable: {exc}")
            return error.response(seed=path.startswith("/nodes/"))
