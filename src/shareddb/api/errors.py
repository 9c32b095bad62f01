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
    412: "precondition_failed",
    413: "too_large",
    414: "too_large",
    415: "unsupported_media_type",
    503: "unavailable",
    504: "timeout",
    507: "insufficient_storage",
}


class ApiError(Exception):
    """A failure the client can act on: a status, one readable line, maybe extra fields (the
    version a 504 kept, the current version of a 412)."""

    def __init__(self, status: int, message: str, *, close: bool = False, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra
        self.close = close  # the connection cannot go on (a body it cannot read to its end)

    def response(self, *, seed: bool) -> web.Response:
        if seed:
            response = json_response({"success": False, "msg": self.message, **self.extra}, self.status)
        else:
            code = CODES.get(self.status, "unavailable")
            response = json_response({"error": code, "message": self.message, **self.extra}, self.status)
        if self.close:
            response.force_close()
        return response


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    all_headers = {"Content-Type": JSON}
    if headers:
        all_headers.update(headers)
    return web.Response(body=orjson.dumps(payload), status=status, headers=all_headers)
