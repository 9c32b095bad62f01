"""Reading request bodies: whole or refused, never cut short.

aiohttp inflates a body sent with `Content-Encoding: gzip` or `deflate` while it is read, so its
`Content-Length` counts the encoded bytes, not the value's: a body is read to its end, and its size
is counted after inflating (a small bomb that inflates past the limit is refused as it inflates).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from shareddb.api.errors import ApiError, bad_request

READ_CHUNK = 64 * 1024
# What aiohttp's parser inflates, and no encoding at all. Not "x-gzip": the parser leaves such a
# body as it came, so it would reach the handler still compressed.
ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})


def unsupported_encoding(encoding: str, *, close: bool = False) -> ApiError:
    message = f"Content-Encoding {encoding!r} is not supported; use gzip or deflate"
    return ApiError(415, message, close=close)


def body_encoding(request: web.BaseRequest) -> str:
    """The body's Content-Encoding, lower case ("" for none); 415 for one the node does not read."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ENCODINGS:
        raise unsupported_encoding(encoding)
    return encoding


async def read_body(request: web.BaseRequest, limit: int, what: str = "body") -> bytes:
    """The body, inflated; 413 as soon as it passes `limit` bytes, 400 when it does not inflate,
    415 for an encoding the node does not read. `what` names the body in messages."""
    encoding = body_encoding(request)
    length = request.content_length
    plain = encoding in ("", "identity")
    if plain and length is not None:
        if length > limit:
            raise ApiError(413, f"{what} is {length} bytes, the limit is {limit}")
        if length == 0:
            return b""
        try:
            return await request.content.readexactly(length)
        except asyncio.IncompleteReadError:
            raise bad_request("body ended before its Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.read(READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"{what} is over the {limit}-byte limit")
            chunks.append(chunk)
    except web.RequestPayloadError:
        # The rest of the body is unreadable: the node stops reading it (no lingering read that
        # would fail again) and closes the connection once the error is sent.
        request.content.feed_eof()
        raise ApiError(400, f"body cannot be decoded as {encoding}", close=True) from None
    return b"".join(chunks)


async def read_text(request: web.BaseRequest, limit: int) -> str:
    """The body as UTF-8 text: a value (see `read_body`)."""
    body = await read_body(request, limit, "value")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("body is not valid UTF-8") from None
