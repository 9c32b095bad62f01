"""?ttl=S: Expires on GET, "expires" in listings, absent everywhere once the node's clock passes it,
and turned into a tombstone of its own version (invariant 9: never over a later write)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from shareddb.node import TxnOp
from tests.api.conftest import Api, running_api

START = 1_800_000_000_000  # 2027-01-15T08:00:00Z, in milliseconds
WAIT = 10.0


class HeldClock:
    """The node's wall clock, in milliseconds: it stands still until a test moves it."""

    def __init__(self, millis: int) -> None:
        self.millis = millis

    def __call__(self) -> int:
        return self.millis

    def advance(self, seconds: float) -> None:
        self.millis += int(seconds * 1000)


@pytest.fixture
def clock() -> HeldClock:
    return HeldClock(START)


@pytest.fixture
async def timed_api(tmp_path: Path, clock: HeldClock) -> AsyncIterator[Api]:
    async with running_api(tmp_path / "node", now=clock) as running:
        yield running


async def _eventually_tombstone(api: Api, key: str, version: str) -> None:
    """Wait for the reaper: the key's record becomes a tombstone of the same version."""
    async with asyncio.timeout(WAIT):
        while True:
            record = await api.node.store.get(key)
            assert record is not None
            assert record.version == version, record
            if record.value is None:
                return
            await asyncio.sleep(0.01)


async def test_get_answers_expires_and_listing_answers_it_in_iso_8601(
    timed_api: Api, clock: HeldClock
) -> None:
    api = timed_api
    assert (await api.kv_put("session", "abc", "?ttl=30")).status == 201
    reply = await api.kv_get("session")
    assert reply.status == 200
    expires = parsedate_to_datetime(reply.headers["Expires"]).timestamp()
    assert expires == (START + 30_000) / 1000
    [item] = (await api.get("/v1/kv")).json()["items"]
    assert item["expires"] == "2027-01-15T08:00:30.000Z"
    await api.kv_put("plain", "x")
    assert "Expires" not in (await api.kv_get("plain")).headers


async def test_an_expired_key_is_absent_from_every_read_and_the_digest_does_not_change(
    timed_api: Api, clock: HeldClock
) -> None:
    api = timed_api
    version = (await api.kv_put("session", "abc", "?ttl=5")).json()["version"]
    await api.kv_put("other", "stays")
    digest = (await api.get("/v1/digest")).json()
    assert digest["count"] == 2
    clock.advance(5)
    assert (await api.kv_get("session")).status == 404
    assert (await api.seed_get("session")).status == 404
    assert [i["key"] for i in (await api.get("/v1/kv")).json()["items"]] == ["other"]
    assert await api.dump() == {"other": "stays"}
    after = (await api.get("/v1/digest")).json()
    assert after == {"count": 1, "digest": digest["digest"]}
    assert (await api.delete("/v1/kv/session")).status == 404  # nothing there to delete
    await _eventually_tombstone(api, "session", version)
    assert (await api.get("/v1/digest")).json() == after


async def test_a_write_without_ttl_clears_it_and_a_later_write_outlives_the_old_expiry(
    timed_api: Api, clock: HeldClock
) -> None:
    """Invariant 9: an expiry never removes a write made after the expiring one."""
    api = timed_api
    await api.kv_put("k", "short", "?ttl=2")
    later = (await api.kv_put("k", "for ever")).json()["version"]
    assert "Expires" not in (await api.kv_get("k")).headers
    clock.advance(3600)
    reply = await api.kv_get("k")
    assert (reply.status, reply.text) == (200, "for ever")
    assert reply.headers["ETag"] == f'"{later}"'


async def test_an_expired_key_counts_as_absent_for_conditions(timed_api: Api, clock: HeldClock) -> None:
    api = timed_api
    await api.kv_put("lock", "a", "?ttl=1")
    assert (await api.put("/v1/kv/lock", "b", headers={"If-None-Match": "*"})).status == 412
    clock.advance(1)
    reply = await api.put("/v1/kv/lock", "b", headers={"If-None-Match": "*"})
    assert reply.status == 201, reply.body


async def test_the_seed_api_takes_ttl_too(timed_api: Api, clock: HeldClock) -> None:
    api = timed_api
    reply = await api.seed_update("s", "v", "&ttl=10")
    assert reply.status == 200, reply.body
    clock.advance(10)
    assert (await api.seed_get("s")).status == 404


@pytest.mark.parametrize("ttl", ["0", "-1", "1.5", "abc", "", "315360001", "1e3"])
async def test_a_ttl_that_is_not_an_integer_from_1_to_10_years_is_400(api: Api, ttl: str) -> None:
    before = await api.state()
    reply = await api.kv_put("k", "v", f"?ttl={ttl}")
    assert reply.status == 400, reply.body
    assert "ttl" in reply.json()["message"]
    assert (await api.seed_update("k", "v", f"&ttl={ttl}")).status == 400
    assert await api.state() == before


async def test_many_keys_expire_at_once_in_chunks_and_reads_go_on(
    timed_api: Api, clock: HeldClock
) -> None:
    api = timed_api
    await api.node.transact([], [TxnOp(f"k{i:05d}", "v", 1) for i in range(3000)])  # one commit
    await api.kv_put("stays", "x")
    clock.advance(2)
    assert (await api.get("/v1/digest")).json()["count"] == 1
    async with asyncio.timeout(WAIT):
        while await _any_value(api):
            assert (await api.kv_get("stays")).status == 200
            await asyncio.sleep(0.01)


async def _any_value(api: Api) -> bool:
    """Whether any of the expired keys is still stored with its value (every 100th is looked at)."""
    for i in range(0, 3000, 100):
        record = await api.node.store.get(f"k{i:05d}")
        if record is not None and record.value is not None:
            return True
    return False
