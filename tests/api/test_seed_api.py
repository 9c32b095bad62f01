"""The seed-compatible API (SPEC.md, first table): GET /nodes/update, /nodes/get, /nodes/remove,
/nodes/dump, in the prototype's exact JSON shapes."""

from __future__ import annotations

from shareddb.node import PAGE
from shareddb.record import is_version, version_node
from tests.api.conftest import JSON, Api, enc

# Characters a query string could misread, and some that are not ASCII.
AWKWARD = ["a b", "a+b", "a&b", "a=b", "a#b", "a%b", "a/b", "a?b", "100%", "+&=#%", "😀", "ключ", "\t"]


async def test_update_answers_the_exact_seed_shape_with_a_version(api: Api) -> None:
    reply = await api.get("/nodes/update?name=k&value=v")
    assert reply.status == 200
    assert reply.content_type == JSON
    body = reply.json()
    version = body["version"]
    assert body == {
        "success": True,
        "name": "k",
        "value": "v",
        "version": version,
        "msg": "k key was updated",
    }
    assert is_version(version)
    assert version_node(version) == "n1"


async def test_get_answers_the_value_and_the_version_of_the_last_update(api: Api) -> None:
    first = (await api.get("/nodes/update?name=k&value=one")).json()["version"]
    second = (await api.get("/nodes/update?name=k&value=two")).json()["version"]
    assert second > first
    reply = await api.get("/nodes/get?name=k")
    assert reply.status == 200
    assert reply.content_type == JSON
    assert reply.json() == {"success": True, "name": "k", "value": "two", "version": second}


async def test_get_of_a_missing_key_is_404_in_the_seed_shape(api: Api) -> None:
    reply = await api.get("/nodes/get?name=nothing")
    assert reply.status == 404
    assert reply.content_type == JSON
    assert reply.json() == {"success": False, "msg": "can not get nothing key"}


async def test_empty_value_is_a_value(api: Api) -> None:
    reply = await api.get("/nodes/update?name=k&value=")
    assert reply.status == 200
    assert reply.json()["value"] == ""
    got = await api.get("/nodes/get?name=k")
    assert got.status == 200
    assert got.json()["value"] == ""
    assert await api.dump() == {"k": ""}


async def test_remove_answers_the_seed_shape_and_the_key_is_gone(api: Api) -> None:
    written = (await api.get("/nodes/update?name=k&value=v")).json()["version"]
    reply = await api.get("/nodes/remove?name=k")
    assert reply.status == 200
    assert reply.content_type == JSON
    body = reply.json()
    assert body == {
        "success": True,
        "name": "k",
        "version": body["version"],
        "msg": "k key was removed",
    }
    assert is_version(body["version"])
    assert body["version"] > written
    assert (await api.get("/nodes/get?name=k")).status == 404


async def test_remove_of_a_missing_key_is_404_and_writes_nothing(api: Api) -> None:
    before = await api.state()
    reply = await api.get("/nodes/remove?name=nothing")
    assert reply.status == 404
    assert reply.content_type == JSON
    assert reply.json() == {"success": False, "msg": "nothing key was not removed"}
    assert await api.state() == before


async def test_remove_of_a_removed_key_is_404(api: Api) -> None:
    """Invariant 4: a deleted key stays deleted; the second remove writes nothing."""
    await api.get("/nodes/update?name=k&value=v")
    await api.get("/nodes/remove?name=k")
    before = await api.state()
    reply = await api.get("/nodes/remove?name=k")
    assert reply.status == 404
    assert reply.json() == {"success": False, "msg": "k key was not removed"}
    assert await api.state() == before


async def test_update_after_remove_brings_the_key_back_with_a_greater_version(api: Api) -> None:
    await api.get("/nodes/update?name=k&value=v1")
    removed = (await api.get("/nodes/remove?name=k")).json()["version"]
    again = (await api.get("/nodes/update?name=k&value=v2")).json()["version"]
    assert again > removed
    assert (await api.get("/nodes/get?name=k")).json()["value"] == "v2"


async def test_dump_of_an_empty_node_is_an_empty_object(api: Api) -> None:
    reply = await api.get("/nodes/dump")
    assert reply.status == 200
    assert reply.content_type == JSON
    assert reply.json() == {"success": True, "data": {}}


async def test_dump_lists_every_live_key_and_none_that_was_removed(api: Api) -> None:
    for name, value in [("a", "1"), ("b", ""), ("c", "3")]:
        await api.get(f"/nodes/update?name={name}&value={value}")
    await api.get("/nodes/remove?name=c")
    reply = await api.get("/nodes/dump")
    assert reply.json() == {"success": True, "data": {"a": "1", "b": ""}}


async def test_dump_after_every_key_was_removed_is_an_empty_object(api: Api) -> None:
    for name in ("a", "b"):
        await api.get(f"/nodes/update?name={name}&value=v")
        await api.get(f"/nodes/remove?name={name}")
    reply = await api.get("/nodes/dump")
    assert reply.status == 200
    assert reply.json() == {"success": True, "data": {}}


async def test_dump_streams_every_key_across_page_boundaries(api: Api) -> None:
    items: dict[str, str] = {}
    for size in (PAGE, PAGE + 1, 2 * PAGE + 7):
        more = {f"key-{i:05}": f"value {i} 😀" for i in range(len(items), size)}
        await api.load(more)
        items.update(more)
        assert await api.dump() == items, f"with {size} keys"


async def test_percent_encoded_names_and_values_round_trip_exactly(api: Api) -> None:
    expected: dict[str, str] = {}
    for text in AWKWARD:
        name, value = f"key {text}", f"value {text} {text}"
        reply = await api.seed_update(name, value)
        assert reply.status == 200, reply.body
        assert (reply.json()["name"], reply.json()["value"]) == (name, value)
        got = (await api.seed_get(name)).json()
        assert (got["name"], got["value"]) == (name, value)
        expected[name] = value
    assert await api.dump() == expected
    for name in expected:
        removed = await api.get(f"/nodes/remove?name={enc(name)}")
        assert removed.json()["name"] == name
    assert await api.dump() == {}


async def test_unencoded_plus_in_the_query_is_a_space(api: Api) -> None:
    reply = await api.get("/nodes/update?name=a+b&value=c+d")
    assert reply.json()["name"] == "a b"
    assert reply.json()["value"] == "c d"
    assert await api.dump() == {"a b": "c d"}


async def test_repeated_parameter_keeps_its_first_value(api: Api) -> None:
    reply = await api.get("/nodes/update?name=first&value=one&name=second&value=two")
    assert (reply.json()["name"], reply.json()["value"]) == ("first", "one")
    assert await api.dump() == {"first": "one"}


async def test_replicate_parameter_is_accepted_and_ignored(api: Api) -> None:
    for replicate in ["false", "0", "true", "no", ""]:
        reply = await api.get(f"/nodes/update?name=k&value=v&replicate={replicate}")
        assert reply.status == 200
        assert set(reply.json()) == {"success", "name", "value", "version", "msg"}
        got = await api.get(f"/nodes/get?name=k&replicate={replicate}")
        assert got.json()["value"] == "v"
        removed = await api.get(f"/nodes/remove?name=k&replicate={replicate}")
        assert removed.status == 200
        assert await api.dump() == {}


async def test_w_1_is_accepted_on_a_single_node(api: Api) -> None:
    reply = await api.get("/nodes/update?name=k&value=v&w=1")
    assert reply.status == 200
    assert (await api.get("/nodes/remove?name=k&w=1&timeout=0.5")).status == 200


async def test_request_target_of_exactly_64_kib_is_accepted(api: Api) -> None:
    """SPEC: request lines up to 64 KiB are accepted."""
    head = "/nodes/update?name=big&value="
    target = head + "x" * (64 * 1024 - len(head))
    assert len(target) == 64 * 1024
    reply = await api.get(target)
    assert reply.status == 200
    assert (await api.get("/nodes/get?name=big")).json()["value"] == "x" * (64 * 1024 - len(head))


async def test_seed_write_is_readable_through_the_v1_api(api: Api) -> None:
    version = (await api.seed_update("a/b c", "😀 value")).json()["version"]
    reply = await api.kv_get("a/b c")
    assert reply.status == 200
    assert reply.text == "😀 value"
    assert reply.headers["ETag"] == f'"{version}"'
