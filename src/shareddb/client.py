"""An asyncio client of the v1 API: what the command line and the tests use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson


class ClientError(Exception):
    """A request failed; `status` is the HTTP status, or 0 when the node could not be reached."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Item:
    key: str
    value: str
    version: str


def key_path(key: str) -> str:
    try:
        return "/v1/kv/" + quote(key, safe="")
    except UnicodeEncodeError:
        raise ClientError(0, "the key is not valid UTF-8") from None


class Client:
    """`async with Client(url) as c: await c.put("k", "v")`."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, bytes, str | None]:
        try:
            async with self._session.request(
                method, self.url + path, data=data, params=params
            ) as response:
                body = await response.read()
                etag = response.headers.get("ETag")
                if response.status >= 400:
                    raise ClientError(response.status, _error_message(response.status, body))
                return response.status, body, etag.strip('"') if etag else None
        except aiohttp.ClientError as exc:
            raise ClientError(0, f"cannot reach {self.url}: {exc}") from exc
        except TimeoutError as exc:
            raise ClientError(0, f"{self.url} did not answer in time") from exc

    async def _json(self, path: str, params: dict[str, str] | None = None) -> Any:
        _, body, _ = await self._request("GET", path, params=params)
        return self._decode(body)

    def _decode(self, body: bytes) -> Any:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ClientError(0, f"{self.url} did not answer like a shareddb node") from None

    async def get(self, key: str) -> tuple[str, str] | None:
        """(value, version), or None when the key does not exist."""
        try:
            _, body, etag = await self._request("GET", key_path(key))
        except ClientError as exc:
            if exc.status == 404:
                return None
            raise
        return body.decode("utf-8"), etag or ""

    async def put(self, key: str, value: str, *, w: int | None = None) -> str:
        """Store `value`; returns the new version."""
        params = {"w": str(w)} if w else None
        _, body, _ = await self._request("PUT", key_path(key), data=value.encode("utf-8"), params=params)
        answer = self._decode(body)
        if not isinstance(answer, dict) or not isinstance(answer.get("version"), str):
            raise ClientError(0, f"{self.url} did not answer like a shareddb node")
        version: str = answer["version"]
        return version

    async def delete(self, key: str) -> bool:
        """Delete `key`; False when it did not exist."""
        try:
            await self._request("DELETE", key_path(key))
        except ClientError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def items(self, prefix: str = "", *, page: int = 1000) -> AsyncIterator[Item]:
        """Every live key under `prefix`, in key order, following the listing's pages."""
        after: str | None = None
        while True:
            params = {"prefix": prefix, "limit": str(page)}
            if after is not None:
                params["after"] = after
            answer = await self._json("/v1/kv", params)
            try:
                items = [Item(i["key"], i["value"], i["version"]) for i in answer["items"]]
                after = answer["next"]
            except (KeyError, TypeError):
                raise ClientError(0, f"{self.url} did not answer like a shareddb node") from None
            for item in items:
                yield item
            if after is None:
                return

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("/health")
        return result

    async def cluster(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("/v1/cluster")
        return result

    async def digest(self, *, buckets: bool = False) -> dict[str, Any]:
        params = {"buckets": "1"} if buckets else None
        result: dict[str, Any] = await self._json("/v1/digest", params)
        return result

    async def bucket_versions(self, bucket: int) -> dict[str, str]:
        result: dict[str, str] = (await self._json("/v1/digest", {"bucket": str(bucket)}))["versions"]
        return result

    async def leave(self, node_id: str | None = None) -> None:
        """This node leaves the cluster, or (with `node_id`) marks another member as left."""
        if node_id is None:
            await self._request("POST", "/v1/cluster/leave")
        else:
            await self._request("DELETE", "/v1/cluster/members/" + quote(node_id, safe=""))


def _error_message(status: int, body: bytes) -> str:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"HTTP {status}"
    if isinstance(payload, dict):
        message = payload.get("message") or payload.get("msg")
        if isinstance(message, str):
            return message
    return f"HTTP {status}"
