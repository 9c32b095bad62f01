"""Every request of the API as data, and the reading of every answer: written once, sent by both
the synchronous and the asyncio client (which do only the I/O).

Also the failover rule both follow: which failure moves a request on to the next node.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import orjson

from shareddb.client.errors import BadRequest, ClientError, InvalidAnswer, Unavailable, error_from_answer
from shareddb.client.model import Entry, Page, TxnResult, Written
from shareddb.tls import StrPath, TlsError, client_context

T = TypeVar("T")

SERVER_WAIT_MARGIN = 5.0  # seconds the HTTP timeout allows beyond a `?timeout=` the node waits
DEFAULT_W_TIMEOUT = 5.0  # the node's own default for `?timeout=`


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request, and how to read its answer. `ok` are the statuses `parse` reads (any other
    is raised as its ClientError); `idempotent` calls may be sent again to another node after a
    failure that may have reached the first one; `wait` is how long the node itself may wait."""

    method: str
    path: str
    parse: Callable[[httpx.Response, str], T]
    ok: frozenset[int] = frozenset({200})
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    idempotent: bool = True
    key: str | None = None
    wait: float = 0.0

    def timeout(self, default: float) -> float:
        return max(default, self.wait + SERVER_WAIT_MARGIN) if self.wait else default

    def read(self, response: httpx.Response, url: str) -> T:
        """The answer, or the ClientError the node's answer stands for."""
        if response.status_code not in self.ok:
            if response.status_code < 400:
                raise not_shareddb(url)
            raise error_from_answer(response.status_code, response.content, url, self.key)
        return self.parse(response, url)


# -- node URLs and failover -----------------------------------------------------------------------


def node_urls(urls: str | Sequence[str]) -> list[str]:
    """Node URLs from one string (comma-separated) or several; each must be http(s)://HOST[:PORT]."""
    given = [urls] if isinstance(urls, str) else list(urls)
    found = [u.strip().rstrip("/") for text in given for u in text.split(",") if u.strip()]
    if not found:
        raise BadRequest(0, "no node URL given")
    for url in found:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise BadRequest(0, f"{url!r} is not a node URL such as http://127.0.0.1:8080")
    return found


def tls_verify(
    verify: ssl.SSLContext | bool, ca: StrPath | None, cert: StrPath | None, key: StrPath | None
) -> ssl.SSLContext | bool:
    """What httpx verifies nodes with: `verify` as given, or, with `ca`/`cert`, a context that
    trusts the CA file `ca` alone and presents the client certificate `cert` (its key in `key` or
    in the same file)."""
    if ca is None and cert is None and key is None:
        return verify
    if verify is not True:
        raise BadRequest(0, "give either verify= or ca=/cert=/key=, not both")
    try:
        return client_context(ca, cert, key, flags=("CA file", "certificate", "key"))
    except TlsError as exc:
        raise BadRequest(0, str(exc)) from None


class Nodes:
    """The node URLs in failover order: a request starts at the node that answered last."""

    def __init__(self, urls: str | Sequence[str]) -> None:
        self.urls = node_urls(urls)
        self.current = 0

    def order(self) -> list[str]:
        return self.urls[self.current :] + self.urls[: self.current]

    def after(self, url: str) -> str:
        """The node to try once `url` cannot be reached."""
        return self.urls[(self.urls.index(url) + 1) % len(self.urls)]

    def answered(self, url: str) -> None:
        self.current = self.urls.index(url)


def describe(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    cause: BaseException | None = exc
    while cause is not None:  # httpx's error wraps httpcore's, which wraps the ssl module's
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"its TLS certificate does not verify ({cause.verify_message}); give the CA file "
                "of the cluster (--ca, SHAREDDB_CA, or ca= in Python)"
            )
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


def not_sent(exc: httpx.TransportError) -> bool:
    """The request surely never reached the node: any node may be asked instead."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def transport_failure(call: Call[Any], url: str, exc: httpx.TransportError) -> ClientError | None:
    """None when `call` goes on to the next node; else the error to raise at once (a write that
    may have reached the node is never sent twice: the application decides)."""
    if call.idempotent or not_sent(exc):
        return None
    return Unavailable(
        0, f"{url} did not answer ({describe(exc)}): the write may or may not have been applied", url
    )


def retry_elsewhere(call: Call[Any], response: httpx.Response) -> bool:
    """A node that answers 503 to a read is passed over for the next one."""
    return response.status_code == 503 and call.idempotent


def nobody_answered(urls: Sequence[str], failures: Sequence[str]) -> Unavailable:
    """Every URL failed; `failures` says how, one `URL: why` each."""
    return Unavailable(0, f"cannot reach {'; '.join(failures)}" if failures else "no node to ask")


# -- reading answers ------------------------------------------------------------------------------


def not_shareddb(url: str) -> InvalidAnswer:
    return InvalidAnswer(0, f"{url} did not answer like a shareddb node", url)


def json_of(response: httpx.Response, url: str) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise not_shareddb(url) from None


def json_object(response: httpx.Response, url: str) -> dict[str, Any]:
    answer = json_of(response, url)
    if not isinstance(answer, dict):
        raise not_shareddb(url)
    return answer


def etag(response: httpx.Response) -> str | None:
    tag = response.headers.get("ETag")
    return tag.strip('"') if tag else None


def iso_time(text: Any, url: str) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        raise not_shareddb(url) from None


def http_date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None


def entry_of(item: Any, url: str) -> Entry:
    try:
        key, value, version = item["key"], item["value"], item["version"]
    except (KeyError, TypeError):
        raise not_shareddb(url) from None
    if not (isinstance(key, str) and isinstance(value, str) and isinstance(version, str)):
        raise not_shareddb(url)
    return Entry(key, value, version, iso_time(item.get("expires"), url))


def seq_of(value: Any, url: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise not_shareddb(url)


# -- the calls ------------------------------------------------------------------------------------


def key_path(key: str) -> str:
    try:
        return "/v1/kv/" + quote(key, safe="")
    except UnicodeEncodeError:
        raise BadRequest(0, "the key is not valid UTF-8") from None


def _copies(params: dict[str, str], w: int | None, timeout: float | None) -> float:
    """Add `w` and `timeout` to `params`; how long the node may wait for the copies."""
    if w is not None:
        params["w"] = str(w)
    if timeout is not None:
        params["timeout"] = f"{timeout:g}"
    return (timeout if timeout is not None else DEFAULT_W_TIMEOUT) if w and w > 1 else 0.0


def get(key: str) -> Call[Entry | None]:
    def parse(response: httpx.Response, url: str) -> Entry | None:
        if response.status_code == 404:
            return None
        version = etag(response)
        if version is None:
            raise not_shareddb(url)
        expires = http_date(response.headers.get("Expires"))
        return Entry(key, response.content.decode("utf-8", "replace"), version, expires)

    return Call("GET", key_path(key), parse, ok=frozenset({200, 404}))


def put(
    key: str,
    value: str,
    *,
    if_version: str | None,
    if_absent: bool,
    ttl: int | None,
    w: int | None,
    timeout: float | None,
) -> Call[Written]:
    if if_version is not None and if_absent:
        raise ValueError("if_version and if_absent exclude each other")
    params: dict[str, str] = {}
    wait = _copies(params, w, timeout)
    if ttl is not None:
        params["ttl"] = str(ttl)
    headers = {}
    if if_version is not None:
        headers["If-Match"] = f'"{if_version}"'
    if if_absent:
        headers["If-None-Match"] = "*"

    def parse(response: httpx.Response, url: str) -> Written:
        answer = json_object(response, url)
        version = answer.get("version")
        if not isinstance(version, str):
            raise not_shareddb(url)
        return Written(key, version, created=response.status_code == 201)

    body = value.encode("utf-8", "surrogatepass")
    return Call(
        "PUT", key_path(key), parse, frozenset({200, 201}), params, headers, body, False, key, wait
    )


def delete(
    key: str, *, if_version: str | None, w: int | None, timeout: float | None
) -> Call[str | None]:
    params: dict[str, str] = {}
    wait = _copies(params, w, timeout)
    headers = {"If-Match": f'"{if_version}"'} if if_version is not None else {}

    def parse(response: httpx.Response, url: str) -> str | None:
        return etag(response)

    return Call(
        "DELETE", key_path(key), parse, frozenset({200, 204}), params, headers, None, False, key, wait
    )


def listing(prefix: str, after: str | None, limit: int | None) -> Call[Page]:
    params = {"prefix": prefix}
    if after is not None:
        params["after"] = after
    if limit is not None:
        params["limit"] = str(limit)

    def parse(response: httpx.Response, url: str) -> Page:
        answer = json_object(response, url)
        items, following = answer.get("items"), answer.get("next")
        if not isinstance(items, list) or not (following is None or isinstance(following, str)):
            raise not_shareddb(url)
        return Page([entry_of(i, url) for i in items], following, seq_of(answer.get("seq"), url))

    return Call("GET", "/v1/kv", parse, params=params)


def txn(document: Mapping[str, Any], *, w: int | None, timeout: float | None) -> Call[list[TxnResult]]:
    def parse(response: httpx.Response, url: str) -> list[TxnResult]:
        results = json_object(response, url).get("results")
        if not isinstance(results, list):
            raise not_shareddb(url)
        try:
            return [TxnResult(str(r["key"]), r["version"]) for r in results]
        except (KeyError, TypeError):
            raise not_shareddb(url) from None

    params: dict[str, str] = {}
    wait = _copies(params, w, timeout)
    body = orjson.dumps(document)
    headers = {"Content-Type": "application/json"}
    return Call("POST", "/v1/txn", parse, frozenset({200}), params, headers, body, False, None, wait)


def document(path: str, params: dict[str, str] | None = None) -> Call[dict[str, Any]]:
    """A GET whose answer is a JSON object: /health, /v1/cluster, /v1/digest."""
    return Call("GET", path, json_object, params=params or {})


def bucket_versions(bucket: int) -> Call[dict[str, str]]:
    def parse(response: httpx.Response, url: str) -> dict[str, str]:
        versions = json_object(response, url).get("versions")
        if not isinstance(versions, dict):
            raise not_shareddb(url)
        return versions

    return Call("GET", "/v1/digest", parse, params={"bucket": str(bucket)})


def leave(node_id: str | None) -> Call[None]:
    def parse(response: httpx.Response, url: str) -> None:
        return None

    if node_id is None:
        return Call("POST", "/v1/cluster/leave", parse, frozenset(range(200, 300)), idempotent=False)
    path = "/v1/cluster/members/" + quote(node_id, safe="")
    return Call("DELETE", path, parse, frozenset(range(200, 300)), idempotent=False)
