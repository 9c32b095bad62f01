"""API errors and JSON responses, in the two shapes of the contract.

The seed API (`/nodes/...`) answers `{"success": false, "msg": ...}`; everything else answers
`{"error": CODE, "message": ...}`. A handler raises `ApiError` and the middleware of `app.py` renders
it in the shape of the path it was raised under, so no handler builds an error body by hand.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

JSON = "application/json; charset=utf-8"

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    410: "gone",
    413: "too_large",
    414: "too_large",
    503: "unavailable",
    504: "timeout",
    507: "insufficient_storage",
}


class ApiError(Exception):
    """A failure the client can act on: a status, one readable line, maybe extra seed fields."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra

    def response(self, *, seed: bool) -> web.Response:
        if seed:
            return json_response({"success": False, "msg": self.message, **self.extra}, self.status)
        code = CODES.get(self.status, "unavailable")
        return json_response({"error": code, "message": self.message}, self.status)


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    all_headers = {"Content-Type": JSON}
    if headers:
        all_headers.update(headers)
    return web.Response(body=orjson.dumps(payload), status=status, headers=all_headers)
