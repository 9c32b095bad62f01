"""If-Match and If-None-Match on PUT and DELETE: checked and written in one step (invariant 6 for
the refusals: a 412 writes nothing)."""

from __future__ import annotations

import asyncio

from tests.api.conftest import Api


async def _version(api: Api, key: str, value: str) -> str:
    reply = await api.kv_put(key, value)
    assert reply.status in (200, 201), reply.body
    version: str = reply.json()["version"]
    return version


async def test_if_match_writes_over_exactly_that_version(api: Api) -> None:
    first = await _version(api, "k", "one")
    reply = await api.put("/v1/kv/k", "two", headers={"If-Match": f'"{first}"'})
    assert reply.status == 200, reply.body
    assert reply.headers["ETag"] == f'"{reply.json()["version"]}"'
    assert (await api.kv_get("k")).text == "two"


async def test_if_match_on_another_version_is_412_with_the_current_one_and_writes_nothing(
    api: Api,
) -> None:
    first = await _version(api, "k", "one")
    second = await _version(api, "k", "two")
    before = await api.state()
    reply = await api.put("/v1/kv/k", "three", headers={"If-Match": f'"{first}"'})
    assert reply.status == 412, reply.body
    assert reply.json()["error"] == "precondition_failed"
    assert reply.json()["version"] == second
    assert await api.state() == before


async def test_if_match_on_an_absent_or_deleted_key_is_412_with_null(api: Api) -> None:
    reply = await api.put("/v1/kv/never", "x", headers={"If-Match": '"01a2-n1"'})
    assert (reply.status, reply.json()["version"]) == (412, None)
    version = await _version(api, "gone", "x")
    assert (await api.delete("/v1/kv/gone")).status == 204
    reply = await api.put("/v1/kv/gone", "y", headers={"If-Match": f'"{version}"'})
    assert (reply.status, reply.json()["version"]) == (412, None)


async def test_if_match_star_needs_any_live_value(api: Api) -> None:
    assert (await api.put("/v1/kv/k", "x", headers={"If-Match": "*"})).status == 412
    await _version(api, "k", "one")
    assert (await api.put("/v1/kv/k", "x", headers={"If-Match": "*"})).status == 200


async def test_if_none_match_star_creates_only_an_absent_key(api: Api) -> None:
    reply = await api.put("/v1/kv/lock", "me", headers={"If-None-Match": "*"})
    assert reply.status == 201, reply.body
    holder = reply.json()["version"]
    again = await api.put("/v1/kv/lock", "you", headers={"If-None-Match": "*"})
    assert (again.status, again.json()["version"]) == (412, holder)
    assert (await api.kv_get("lock")).text == "me"
    assert (await api.delete("/v1/kv/lock")).status == 204
    assert (await api.put("/v1/kv/lock", "you", headers={"If-None-Match": "*"})).status == 201


async def test_delete_with_if_match(api: Api) -> None:
    first = await _version(api, "k", "one")
    second = await _version(api, "k", "two")
    stale = await api.delete("/v1/kv/k", headers={"If-Match": f'"{first}"'})
    assert (stale.status, stale.json()["version"]) == (412, second)
    assert (await api.kv_get("k")).text == "two"
    assert (await api.delete("/v1/kv/k", headers={"If-Match": f'"{second}"'})).status == 204
    assert (await api.kv_get("k")).status == 404


async def test_of_many_concurrent_writers_naming_one_version_exactly_one_wins(api: Api) -> None:
    base = await _version(api, "counter", "0")
    replies = await asyncio.gather(
        *(api.put("/v1/kv/counter", str(n), headers={"If-Match": f'"{base}"'}) for n in range(1, 41))
    )
    statuses = sorted(reply.status for reply in replies)
    assert statuses.count(200) == 1, statuses
    assert statuses.count(412) == 39, statuses
    [winner] = [reply for reply in replies if reply.status == 200]
    assert {r.json()["version"] for r in replies if r.status == 412} == {winner.json()["version"]}


async def test_bad_conditional_headers_are_400_and_change_nothing(api: Api) -> None:
    version = await _version(api, "k", "one")
    before = await api.state()
    cases = [
        ("PUT", {"If-None-Match": f'"{version}"'}),
        ("PUT", {"If-Match": f'"{version}"', "If-None-Match": "*"}),
        ("PUT", {"If-Match": f'"{version}", "other"'}),
        ("DELETE", {"If-None-Match": "*"}),
    ]
    for method, headers in cases:
        reply = await api.request(method, "/v1/kv/k", data="x", headers=headers)
        assert reply.status == 400, (method, headers, reply.body)
        assert reply.json()["error"] == "bad_request"
    assert await api.state() == before
