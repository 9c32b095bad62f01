"""POST /v1/txn: conditions and up to 1000 puts and deletes, applied in one atomic commit.

The body is checked whole before anything is written: an unknown field or op, a key given twice, a
bad key, ttl or condition is a 400; a value over --max-value-bytes a 413. The body may be as large
as MAX_OPS values of --max-value-bytes (far over aiohttp's default limit: it is read by
api/bodies.py, which counts the bytes itself).
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Any

import orjson
from aiohttp import web

from shareddb.api.bodies import read_body
from shareddb.api.errors import ApiError, bad_request, json_response
from shareddb.api.query import parse_query, split_target
from shareddb.api.routing import Route
from shareddb.api.writes import await_copies, copy_policy
from shareddb.node import Node, PreconditionFailed, TxnOp
from shareddb.record import MAX_KEY_BYTES, key_error, value_error
from shareddb.store.ops import Condition
from shareddb.times import MAX_TTL
from shareddb.tokens import Role

MAX_OPS = 1000
MAX_CONDITIONS = 1000
# Per operation beyond its value: the JSON around it, a key of MAX_KEY_BYTES escaped at worst.
OP_OVERHEAD = 6 * MAX_KEY_BYTES + 128


def _fields(item: Any, what: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise bad_request(f"{what} must be a JSON object")
    unknown = set(item) - required - optional
    if unknown:
        raise bad_request(f"{what} has unknown field(s): {', '.join(sorted(unknown))}")
    missing = required - set(item)
    if missing:
        raise bad_request(f"{what} needs field(s): {', '.join(sorted(missing))}")
    return item


def _key(item: dict[str, Any], what: str) -> str:
    key = item["key"]
    if not isinstance(key, str):
        raise bad_request(f"{what}: key must be a string")
    if error := key_error(key):
        raise bad_request(f"{what}: invalid key: {error}")
    return key


def _condition(index: int, item: Any) -> Condition:
    what = f"if[{index}]"
    fields = _fields(item, what, {"key"}, {"version", "absent"})
    key = _key(fields, what)
    if ("version" in fields) == ("absent" in fields):
        raise bad_request(f'{what} needs either "version" or "absent": true')
    if "absent" in fields:
        if fields["absent"] is not True:
            raise bad_request(f'{what}: "absent" must be true')
        return Condition(key, None)
    version = fields["version"]
    if not isinstance(version, str) or not version:
        raise bad_request(f"{what}: version must be a non-empty string")
    return Condition(key, version)


def _operation(index: int, item: Any, max_value_bytes: int) -> TxnOp:
    what = f"then[{index}]"
    if not isinstance(item, dict):
        raise bad_request(f"{what} must be a JSON object")
    op = item.get("op")
    if op == "put":
        fields = _fields(item, what, {"op", "key", "value"}, {"ttl"})
        value = fields["value"]
        if not isinstance(value, str):
            raise bad_request(f"{what}: value must be a string")
        if error := value_error(value, max_value_bytes):
            too_large = value_error(value, sys.maxsize) is None  # valid text, just too long
            raise ApiError(413 if too_large else 400, f"{what}: {error}")
        ttl = fields.get("ttl")
        if "ttl" in fields and (type(ttl) is not int or not 1 <= ttl <= MAX_TTL):
            raise bad_request(f"{what}: ttl must be an integer from 1 to {MAX_TTL}")
        return TxnOp(_key(fields, what), value, ttl)
    if op == "delete":
        fields = _fields(item, what, {"op", "key"}, set())
        return TxnOp(_key(fields, what), None)
    raise bad_request(f'{what}: op must be "put" or "delete", not {op!r}')


def parse(body: bytes, max_value_bytes: int) -> tuple[list[Condition], list[TxnOp]]:
    """The conditions and operations of a transaction body, all checked."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"body is not valid JSON: {exc}") from None
    fields = _fields(data, "the body", {"then"}, {"if"})
    conditions, ops = fields.get("if", []), fields["then"]
    if not isinstance(conditions, list) or len(conditions) > MAX_CONDITIONS:
        raise bad_request(f'"if" must be a list of at most {MAX_CONDITIONS} conditions')
    if not isinstance(ops, list) or not 1 <= len(ops) <= MAX_OPS:
        raise bad_request(f'"then" must be a list of 1 to {MAX_OPS} operations')
    parsed = [_operation(i, op, max_value_bytes) for i, op in enumerate(ops)]
    seen: set[str] = set()
    for op in parsed:
        if op.key in seen:
            raise bad_request(f"key {op.key!r} is in more than one operation")
        seen.add(op.key)
    return [_condition(i, c) for i, c in enumerate(conditions)], parsed


async def transact(node: Node, request: web.BaseRequest) -> web.Response:
    params = parse_query(split_target(request.raw_path)[1])
    policy = copy_policy(params, node)
    limit = MAX_OPS * (node.settings.max_value_bytes + OP_OVERHEAD)
    conditions, ops = parse(await read_body(request, limit), node.settings.max_value_bytes)
    try:
        results = await node.transact(conditions, ops)
    except PreconditionFailed as exc:
        failed = [{"key": c.key, "version": c.version} for c in exc.failed]
        raise ApiError(
            412, f"{len(failed)} condition(s) did not hold; nothing was written", failed=failed
        ) from None
    written = [version for _, version in results if version is not None]
    if written:
        await await_copies(node, written[-1], policy)
    return json_response(
        {"ok": True, "results": [{"key": key, "version": version} for key, version in results]}
    )


def routes(node: Node) -> list[Route]:
    return [Route("POST", "/v1/txn", partial(transact, node), Role.WRITE, safe=False)]
