"""POST /v1/txn: all of `then` in one atomic commit when every condition holds, else nothing
(invariant 9: a transaction is never seen by halves; invariant 6: refusals change nothing)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.api.conftest import Api


async def txn(api: Api, body: Any, query: str = "") -> Any:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return await api.request("POST", f"/v1/txn{query}", data=data)


def put(key: str, value: str, **extra: Any) -> dict[str, Any]:
    return {"op": "put", "key": key, "value": value, **extra}


async def test_a_transaction_writes_everything_and_answers_versions_in_order(api: Api) -> None:
    await api.kv_put("gone", "x")
    reply = await txn(
        api,
        {
            "then": [
                put("a", "1"),
                {"op": "delete", "key": "gone"},
                put("b", "2"),
                {"op": "delete", "key": "never"},
            ]
        },
    )
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["ok"] is True
    assert [r["key"] for r in body["results"]] == ["a", "gone", "b", "never"]
    versions = [r["version"] for r in body["results"]]
    assert versions[3] is None  # deleting an absent key changes nothing
    assert len(set(versions[:3])) == 3
    assert await api.dump() == {"a": "1", "b": "2"}
    assert (await api.kv_get("a")).headers["ETag"] == f'"{versions[0]}"'


async def test_the_changes_of_a_transaction_are_one_unit_of_the_feed(api: Api) -> None:
    reply = await txn(api, {"then": [put(f"k{i}", "v") for i in range(5)]})
    assert reply.status == 200
    await api.kv_put("k0", "again")  # the feed moves k0 on; the transaction stays whole
    page = await api.node.store.changes_since(0, 1)  # a page of one unit: the whole transaction
    assert [c.record.key for c in page.changes] == [f"k{i}" for i in range(5)]
    assert len({c.txn for c in page.changes}) == 1
    assert page.changes[0].txn
    assert [c.current for c in page.changes] == [False, True, True, True, True]
    assert page.changes[0].record.value == "again"  # the current row, never the older value
    rest = await api.node.store.changes_since(page.until, 10)
    assert [(c.record.key, c.record.value) for c in rest.changes] == [("k0", "again")]


async def test_conditions_all_hold_or_nothing_is_written_and_every_failure_is_listed(
    api: Api,
) -> None:
    version = (await api.kv_put("a", "1")).json()["version"]
    await api.kv_put("b", "2")
    b_now = (await api.kv_get("b")).headers["ETag"].strip('"')
    before = await api.state()
    reply = await txn(
        api,
        {
            "if": [
                {"key": "a", "version": version},  # holds
                {"key": "b", "absent": True},  # fails: b is there
                {"key": "c", "version": version},  # fails: c is absent
            ],
            "then": [put("a", "new"), put("c", "new")],
        },
    )
    assert reply.status == 412, reply.body
    assert reply.json()["error"] == "precondition_failed"
    assert reply.json()["failed"] == [{"key": "b", "version": b_now}, {"key": "c", "version": None}]
    assert await api.state() == before
    ok = await txn(
        api,
        {
            "if": [{"key": "a", "version": version}, {"key": "c", "absent": True}],
            "then": [put("c", "1")],
        },
    )
    assert ok.status == 200, ok.body


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        {},
        {"then": []},
        {"then": "put"},
        {"then": [put("a", "1")], "else": []},
        {"then": [{"op": "get", "key": "a"}]},
        {"then": [{"op": "put", "key": "a"}]},
        {"then": [{"op": "put", "key": "a", "value": 1}]},
        {"then": [put("a", "1", extra=True)]},
        {"then": [put("a", "1"), {"op": "delete", "key": "a"}]},
        {"then": [put("", "1")]},
        {"then": [put("a\u0000b", "1")]},
        {"then": [put("a", "1", ttl=0)]},
        {"then": [put("a", "1", ttl=1.5)]},
        {"then": [put("a", "1", ttl=True)]},
        {"then": [put("a", "1", ttl=None)]},
        {"then": [{"op": "delete", "key": "a", "value": "x"}]},
        {"if": [{"key": "a"}], "then": [put("a", "1")]},
        {"if": [{"key": "a", "absent": False}], "then": [put("a", "1")]},
        {"if": [{"key": "a", "absent": True, "version": "v"}], "then": [put("a", "1")]},
        {"if": {"key": "a"}, "then": [put("a", "1")]},
        {"then": [put(f"k{i}", "v") for i in range(1001)]},
    ],
)
async def test_malformed_bodies_are_400_and_change_nothing(api: Api, body: Any) -> None:
    before = await api.state()
    reply = await txn(api, body)
    assert reply.status == 400, reply.body
    assert reply.json()["error"] == "bad_request"
    assert await api.state() == before


async def test_a_value_over_the_limit_is_413(small_api: Api) -> None:
    before = await small_api.state()
    reply = await txn(small_api, {"then": [put("a", "x" * 17)]})
    assert reply.status == 413, reply.body
    assert await small_api.state() == before


async def test_a_body_far_over_one_mib_is_taken(api: Api) -> None:
    big = "v" * (600 * 1024)
    reply = await txn(api, {"then": [put(f"big{i}", big) for i in range(4)]})
    assert reply.status == 200, reply.body
    assert len((await api.kv_get("big3")).body) == len(big)


async def test_w_larger_than_the_cluster_is_400_before_anything_is_written(api: Api) -> None:
    before = await api.state()
    assert (await txn(api, {"then": [put("a", "1")]}, "?w=2")).status == 400
    assert await api.state() == before
