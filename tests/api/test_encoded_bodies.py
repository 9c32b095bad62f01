"""Bodies sent with Content-Encoding: stored whole or refused, never truncated (invariant 6).

aiohttp inflates a gzip or deflate body as it reads it, so its Content-Length counts the encoded
bytes, not the value's. A node that read "Content-Length bytes" of the inflated stream stored the
first 66 bytes of a 10,000-byte value and answered success.
"""

from __future__ import annotations

import gzip
import logging
import zlib

import pytest

from tests.api.conftest import Api


async def test_gzip_body_with_content_length_is_stored_whole(api: Api) -> None:
    value = "".join(f"line {i} of a long value\n" for i in range(400))
    body = gzip.compress(value.encode("utf-8"))
    assert len(body) < len(value) // 4
    reply = await api.put(
        "/v1/kv/zipped", body, headers={"Content-Encoding": "gzip", "Content-Length": str(len(body))}
    )
    assert reply.status == 201, reply.body
    stored = await api.kv_get("zipped")
    assert stored.status == 200
    assert stored.text == value


async def test_deflate_body_is_stored_whole(api: Api) -> None:
    value = "deflated " * 2000
    reply = await api.put(
        "/v1/kv/deflated", zlib.compress(value.encode()), headers={"Content-Encoding": "deflate"}
    )
    assert reply.status == 201, reply.body
    assert (await api.kv_get("deflated")).text == value


async def test_body_that_does_not_gunzip_is_400_json_and_stores_nothing(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    before = await api.state()
    reply = await api.put(
        "/v1/kv/broken", b"\x1f\x8b\x08\x00this is not gzip", headers={"Content-Encoding": "gzip"}
    )
    assert reply.status == 400, reply.body
    assert reply.json()["error"] == "bad_request"
    assert "gzip" in reply.json()["message"]
    assert await api.state() == before
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_zip_bomb_is_413_and_stores_nothing(small_api: Api) -> None:
    api = small_api
    before = await api.state()
    bomb = gzip.compress(b"a" * (4 * 1024 * 1024))  # 4 MiB inflated, a few KiB sent
    assert len(bomb) < 8192
    reply = await api.put("/v1/kv/bomb", bomb, headers={"Content-Encoding": "gzip"})
    assert reply.status == 413, reply.body
    assert reply.json()["error"] == "too_large"
    assert await api.state() == before


async def test_unknown_content_encoding_is_415_and_stores_nothing(api: Api) -> None:
    before = await api.state()
    reply = await api.put("/v1/kv/odd", b"plain", headers={"Content-Encoding": "compress"})
    assert reply.status == 415, reply.body
    assert reply.json()["error"] == "unsupported_media_type"
    assert await api.state() == before


@pytest.mark.parametrize("target", ["/v1/kv/legacy", "/v1/snapshot"])
async def test_x_gzip_is_415_as_the_parser_would_leave_it_compressed(api: Api, target: str) -> None:
    """aiohttp inflates "gzip" only: an "x-gzip" body reached the handler compressed and was
    refused as "not valid UTF-8" (a value) or "not a shareddb snapshot"."""
    before = await api.state()
    body = gzip.compress(b"hello")
    method = "PUT" if target.startswith("/v1/kv/") else "POST"
    reply = await api.request(method, target, data=body, headers={"Content-Encoding": "x-gzip"})
    assert reply.status == 415, reply.body
    assert "'x-gzip' is not supported; use gzip or deflate" in reply.json()["message"]
    assert await api.state() == before
