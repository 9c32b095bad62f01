"""Schemathesis hooks for fuzzing a node: the rules of the API that its OpenAPI document cannot
state (OpenAPI 3.0 has no way to say that two parameters exclude each other, or that a bound
depends on the cluster), applied to the requests generated as valid, so that a valid request is
one the node must accept. Requests generated as invalid are sent as generated.

- `w` is at most the number of nodes this node knows, itself included: the fuzzed node runs on
  its own, so a valid `w` larger than that becomes 1.
- A watch takes `prefix` or `key`: with both, `prefix` goes; with neither, `prefix=` (every key)
  is added.
- A write takes `If-Match` or `If-None-Match`, not both: with both, `If-None-Match` goes.
- A transaction names each key at most once in `then`: later operations on a key go.
- A snapshot (`POST /v1/snapshot`, newline-delimited JSON with a checksum) generated as valid is
  a whole snapshot of no records, since a schema cannot state a checksum; one generated as invalid
  is sent as generated text.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from schemathesis import Case, GenerationMode

from shareddb.snapshot import MEDIA_TYPE, Header, Writer

NODES = 1  # the fuzzed node runs on its own


def empty_snapshot() -> bytes:
    writer = Writer(Header(node="fuzz", seq=0, count=0, taken=0))
    return writer.header() + writer.trailer()


@schemathesis.serializer(MEDIA_TYPE)
def ndjson(context: Any, value: Any) -> bytes:
    """A snapshot body: text as generated, anything else as one JSON line."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return json.dumps(value).encode("utf-8") + b"\n"  # integers of any size, unlike orjson


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: Case[Any]) -> Case[Any]:
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return case
    query = case.query
    if query:
        w = query.get("w")
        if isinstance(w, int | str) and not isinstance(w, bool) and str(w).isdigit() and int(w) > NODES:
            query["w"] = NODES
        if case.operation.path == "/v1/watch" and "key" in query:
            query.pop("prefix", None)
    if case.operation.path == "/v1/watch" and not (query and "key" in query):
        case.query = {**(query or {}), "prefix": (query or {}).get("prefix", "")}
    body = case.body
    if case.operation.path == "/v1/snapshot" and case.method.upper() == "POST":
        case.body = empty_snapshot().decode("utf-8")
    if case.operation.path == "/v1/txn" and isinstance(body, dict):
        then = body.get("then")
        if isinstance(then, list):
            seen: set[object] = set()
            unique = []
            for op in then:
                key = op.get("key") if isinstance(op, dict) else None
                if key not in seen:
                    seen.add(key)
                    unique.append(op)
            body["then"] = unique
    headers = case.headers
    if headers and "If-Match" in headers:
        headers.pop("If-None-Match", None)
    return case
