"""The client's exceptions: one class per answer an application handles differently.

Every one is a `ClientError` with the HTTP `status` (0 when no node answered) and the node's
one-line `message`. The mapping from a node's answer to a class is here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Failed:
    """A condition that did not hold: `key` and its current version on the node (None: absent)."""

    key: str
    version: str | None


class ClientError(Exception):
    """A request failed; `status` is the HTTP status, or 0 when no node could be reached (or one
    answered something that is not shareddb); `url` is the node that answered, when one did."""

    def __init__(self, status: int, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.url = url


class BadRequest(ClientError):
    """400: the node refused the request as malformed (bad key, bad parameter, bad body)."""


class Unauthorized(ClientError):
    """401: no token, or one the node does not know."""


class Forbidden(ClientError):
    """403: the token is known but its role does not allow this."""


class NotFound(ClientError):
    """404: the key does not exist (a `delete` of a missing key)."""


class Gone(ClientError):
    """410: a watch asked to resume from a position the node cannot replay exactly."""


class PreconditionFailed(ClientError):
    """412: a condition did not hold and nothing was written. `failed` lists every condition
    that failed with the key's current version; `version` is the first one's (for `put` and
    `delete`, the key's current version, None when it is absent)."""

    def __init__(self, message: str, failed: list[Failed], url: str | None = None) -> None:
        super().__init__(412, message, url)
        self.failed = failed
        self.version = failed[0].version if failed else None


class TooLarge(ClientError):
    """413/414: the value (or the request) is over the node's limit."""


class Timeout(ClientError):
    """504: a `w=N` write was not held by N nodes in time. The write is kept (it has `version`)
    and replication goes on."""

    def __init__(self, message: str, version: str | None, url: str | None = None) -> None:
        super().__init__(504, message, url)
        self.version = version


class Unavailable(ClientError):
    """No node could be reached (status 0), or the one asked is unavailable (503)."""


class InvalidAnswer(ClientError):
    """A node answered something that is not a shareddb answer (status 0)."""


BY_STATUS: dict[int, type[ClientError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    410: Gone,
    413: TooLarge,
    414: TooLarge,
    503: Unavailable,
}


def error_from_answer(status: int, body: bytes, url: str, key: str | None = None) -> ClientError:
    """The exception for a node's 4xx/5xx answer; `key` names the key of a `put`/`delete`, so a
    412 carries it."""
    payload: Any
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        payload = {}
    message = payload.get("message") or payload.get("msg")
    if not isinstance(message, str):
        message = f"{url} answered HTTP {status}"
    if status == 412:
        return PreconditionFailed(message, _failed(payload, key), url)
    if status == 504:
        version = payload.get("version")
        return Timeout(message, version if isinstance(version, str) else None, url)
    return BY_STATUS.get(status, ClientError)(status, message, url)


def _failed(payload: dict[str, Any], key: str | None) -> list[Failed]:
    """The failed conditions of a 412: the `failed` list of a transaction, or the one key of a
    conditional `put`/`delete` with the `version` the node answered."""
    listed = payload.get("failed")
    if isinstance(listed, list):
        return [
            Failed(str(item.get("key")), _version(item.get("version")))
            for item in listed
            if isinstance(item, dict)
        ]
    return [Failed(key or "", _version(payload.get("version")))]


def _version(value: Any) -> str | None:
    return value if isinstance(value, str) else None
