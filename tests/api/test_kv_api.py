"""The REST API v1 (SPEC.md, second table): /v1/kv, /health, /v1/cluster, /v1/digest."""

from __future__ import annotations

import pytest

from shareddb.record import is_version, version_node
from shareddb.store.base import bucket_of
from tests.api.conftest import JSON, TEXT, Api, enc
from tests.api.test_seed_api import AWKWARD


def etag(version: str) -> str:
    return f'"{version}"'


# --- PUT ------------------------------------------------------------------------------------------


async def test_put_of_a_new_key_is_201_with_key_version_and_etag(api: Api) -> None:
    reply = await api.put("/v1/kv/k", "v")
    assert reply.status == 201
    assert reply.content_type == JSON
    body = reply.json()
    assert body == {"key": "k", "version": body["version"]}
    assert is_version(body["version"])
    assert version_node(body["version"]) == "n1"
    assert reply.headers["ETag"] == etag(body["version"])


async def test_put_over_a_live_value_is_200_with_a_greater_version(api: Api) -> None:
    first = (await api.put("/v1/kv/k", "one")).json()["version"]
    reply = await api.put("/v1/kv/k", "two")
    assert reply.status == 200
    assert reply.content_type == JSON
    assert reply.json() == {"key": "k", "version": reply.json()["version"]}
    assert reply.json()["version"] > first
    assert reply.headers["ETag"] == etag(reply.json()["version"])
    assert (await api.get("/v1/kv/k")).text == "two"


async def test_put_over_a_deleted_key_is_201(api: Api) -> None:
    await api.put("/v1/kv/k", "one")
    assert (await api.delete("/v1/kv/k")).status == 204
    reply = await api.put("/v1/kv/k", "again")
    assert reply.status == 201
    assert (await api.get("/v1/kv/k")).text == "again"


async def test_put_with_w_1_is_accepted_on_a_single_node(api: Api) -> None:
    assert (await api.put("/v1/kv/k?w=1", "v")).status == 201
    assert (await api.put("/v1/kv/k?w=1&timeout=0.5", "w")).status == 200
    assert (await api.delete("/v1/kv/k?w=1")).status == 204


# --- GET ------------------------------------------------------------------------------------------


async def test_get_is_the_value_as_plain_text_with_the_etag_of_the_write(api: Api) -> None:
    version = (await api.put("/v1/kv/k", "héllo 😀\nline two")).json()["version"]
    reply = await api.get("/v1/kv/k")
    assert reply.status == 200
    assert reply.content_type == TEXT
    assert reply.body == "héllo 😀\nline two".encode()
    assert reply.headers["ETag"] == etag(version)


async def test_get_of_an_empty_value_is_200_with_an_empty_body(api: Api) -> None:
    assert (await api.put("/v1/kv/k", "")).status == 201
    reply = await api.get("/v1/kv/k")
    assert reply.status == 200
    assert reply.content_type == TEXT
    assert reply.body == b""
    assert (await api.get("/nodes/get?name=k")).json()["value"] == ""


async def test_get_of_a_missing_key_is_404_in_the_v1_error_shape(api: Api) -> None:
    reply = await api.get("/v1/kv/nothing")
    assert reply.status == 404
    assert reply.content_type == JSON
    body = reply.json()
    assert body == {"error": "not_found", "message": body["message"]}
    assert "nothing" in body["message"]


async def test_get_of_a_deleted_key_is_404(api: Api) -> None:
    """Invariant 4: a deleted key does not come back."""
    await api.put("/v1/kv/k", "v")
    await api.delete("/v1/kv/k")
    reply = await api.get("/v1/kv/k")
    assert reply.status == 404
    assert reply.json()["error"] == "not_found"


# --- DELETE ---------------------------------------------------------------------------------------


async def test_delete_of_a_live_key_is_204_with_no_body(api: Api) -> None:
    await api.put("/v1/kv/k", "v")
    reply = await api.delete("/v1/kv/k")
    assert reply.status == 204
    assert reply.body == b""
    assert await api.dump() == {}


async def test_delete_of_a_missing_key_is_404_and_writes_nothing(api: Api) -> None:
    await api.put("/v1/kv/other", "v")
    before = await api.state()
    reply = await api.delete("/v1/kv/nothing")
    assert reply.status == 404
    assert reply.content_type == JSON
    assert reply.json() == {"error": "not_found", "message": reply.json()["message"]}
    assert await api.state() == before


async def test_delete_of_a_deleted_key_is_404_and_writes_nothing(api: Api) -> None:
    """Invariant 4: the second delete writes nothing."""
    await api.put("/v1/kv/k", "v")
    await api.delete("/v1/kv/k")
    before = await api.state()
    assert (await api.delete("/v1/kv/k")).status == 404
    assert await api.state() == before


# --- keys: slashes and escapes --------------------------------------------------------------------


async def test_key_may_contain_slashes_raw_or_encoded_as_the_same_key(api: Api) -> None:
    assert (await api.put("/v1/kv/a/b/c", "v")).json()["key"] == "a/b/c"
    reply = await api.get("/v1/kv/a%2Fb%2Fc")
    assert reply.status == 200
    assert reply.text == "v"
    assert (await api.put("/v1/kv/a%2Fb/c", "w")).status == 200  # the same key, updated
    assert await api.dump() == {"a/b/c": "w"}


async def test_plus_in_a_key_path_is_a_plus_not_a_space(api: Api) -> None:
    assert (await api.put("/v1/kv/a+b", "v")).json()["key"] == "a+b"
    assert (await api.get("/nodes/get?name=a%2Bb")).json()["value"] == "v"
    assert (await api.get("/nodes/get?name=a+b")).status == 404  # that one is "a b"


async def test_percent_encoded_keys_round_trip_through_both_apis(api: Api) -> None:
    for text in AWKWARD:
        key, value = f"key {text}", f"value {text}"
        put = await api.kv_put(key, value)
        assert put.status == 201, put.body
        assert put.json()["key"] == key
        assert (await api.seed_get(key)).json()["value"] == value
        assert (await api.kv_get(key)).text == value
        listed = (await api.get(f"/v1/kv?prefix={enc(key)}&limit=1")).json()["items"]
        assert [(item["key"], item["value"]) for item in listed] == [(key, value)]
        # and the other way round: written through the seed API, read through v1
        other = f"seed {text}"
        assert (await api.seed_update(other, value)).status == 200
        assert (await api.kv_get(other)).text == value
        assert (await api.delete(f"/v1/kv/{enc(other)}")).status == 204
    assert await api.dump() == {f"key {text}": f"value {text}" for text in AWKWARD}


async def test_key_of_exactly_1024_utf8_bytes_is_accepted(api: Api) -> None:
    key = "é" * 512
    reply = await api.kv_put(key, "v")
    assert reply.status == 201
    assert (await api.kv_get(key)).text == "v"


# --- listing --------------------------------------------------------------------------------------


async def test_listing_of_an_empty_node_has_no_items_and_no_next(api: Api) -> None:
    reply = await api.get("/v1/kv")
    assert reply.status == 200
    assert reply.content_type == JSON
    assert reply.json() == {"items": [], "next": None, "seq": 0}


async def test_listing_items_carry_key_value_and_version_sorted_by_key(api: Api) -> None:
    versions = {}
    for key in ["b", "a", "😀", "é", "B"]:
        versions[key] = (await api.kv_put(key, f"value of {key}")).json()["version"]
    await api.kv_put("gone", "x")
    await api.delete("/v1/kv/gone")
    reply = await api.get("/v1/kv")
    assert reply.json() == {
        "items": [
            {"key": key, "value": f"value of {key}", "version": versions[key], "expires": None}
            for key in ["B", "a", "b", "é", "😀"]
        ],
        "next": None,
        "seq": 7,  # seven writes: the node's latest seq
    }


async def test_listing_pages_with_next_until_null(api: Api) -> None:
    keys = [f"k{i:02}" for i in range(11)]
    await api.load({key: "v" for key in keys})
    seen: list[str] = []
    target = "/v1/kv?limit=4"
    pages = 0
    while True:
        body = (await api.get(target)).json()
        pages += 1
        seen.extend(item["key"] for item in body["items"])
        if body["next"] is None:
            break
        assert body["next"] == body["items"][-1]["key"]
        target = f"/v1/kv?limit=4&after={enc(body['next'])}"
    assert seen == keys
    assert pages == 3


async def test_listing_next_is_null_when_the_page_ends_exactly_at_the_last_key(api: Api) -> None:
    await api.load({f"k{i}": "v" for i in range(4)})
    body = (await api.get("/v1/kv?limit=4")).json()
    assert len(body["items"]) == 4
    assert body["next"] is None
    body = (await api.get("/v1/kv?limit=2&after=k1")).json()
    assert [item["key"] for item in body["items"]] == ["k2", "k3"]
    assert body["next"] is None


async def test_listing_limit_defaults_to_100(api: Api) -> None:
    await api.load({f"k{i:03}": "v" for i in range(150)})
    body = (await api.get("/v1/kv")).json()
    assert len(body["items"]) == 100
    assert body["next"] == "k099"


async def test_listing_limit_bounds_1_and_1000_are_accepted(api: Api) -> None:
    await api.load({f"k{i:04}": "v" for i in range(1001)})
    for limit in (1, 1000):
        body = (await api.get(f"/v1/kv?limit={limit}")).json()
        assert len(body["items"]) == limit
        assert body["next"] == f"k{limit - 1:04}"


async def test_listing_by_prefix_returns_only_keys_under_it(api: Api) -> None:
    await api.load({k: "v" for k in ["a", "a/1", "a/2", "ab", "b/1", "😀/x", "😀/y", "😀"]})
    body = (await api.get("/v1/kv?prefix=a%2F")).json()
    assert [item["key"] for item in body["items"]] == ["a/1", "a/2"]
    body = (await api.get(f"/v1/kv?prefix={enc('😀/')}")).json()
    assert [item["key"] for item in body["items"]] == ["😀/x", "😀/y"]
    body = (await api.get("/v1/kv?prefix=a/&limit=1")).json()
    assert [item["key"] for item in body["items"]] == ["a/1"]
    assert body["next"] == "a/1"
    body = (await api.get("/v1/kv?prefix=a/&limit=1&after=a/1")).json()
    assert [item["key"] for item in body["items"]] == ["a/2"]
    assert body["next"] is None
    assert (await api.get("/v1/kv?prefix=zzz")).json() == {"items": [], "next": None, "seq": 8}


async def test_listing_prefix_with_plus_and_spaces(api: Api) -> None:
    await api.load({"a b": "1", "a+b": "2", "a": "3"})
    assert [i["key"] for i in (await api.get("/v1/kv?prefix=a+")).json()["items"]] == ["a b"]
    assert [i["key"] for i in (await api.get("/v1/kv?prefix=a%2B")).json()["items"]] == ["a+b"]


# --- /health, /v1/cluster, /v1/digest -------------------------------------------------------------


async def test_health_names_the_node(api: Api) -> None:
    reply = await api.get("/health")
    assert reply.status == 200
    assert reply.content_type == JSON
    assert reply.json() == {"status": "ok", "node": "n1"}


async def test_cluster_of_a_lone_node_names_it_and_has_no_members(api: Api) -> None:
    reply = await api.get("/v1/cluster")
    assert reply.status == 200
    assert reply.content_type == JSON
    body = reply.json()
    assert body["members"] == []
    assert body["node"]["id"] == "n1"
    assert body["node"]["url"] == api.node.url
    assert body["node"]["url"].startswith("http://")


async def test_digest_counts_live_keys_and_changes_with_every_write(api: Api) -> None:
    empty = await api.get("/v1/digest")
    assert empty.status == 200
    assert empty.content_type == JSON
    assert set(empty.json()) == {"count", "digest"}
    assert empty.json()["count"] == 0
    int(empty.json()["digest"], 16)
    digests = [empty.json()["digest"]]
    await api.put("/v1/kv/a", "1")
    await api.put("/v1/kv/b", "2")
    one = (await api.get("/v1/digest")).json()
    assert one["count"] == 2
    digests.append(one["digest"])
    await api.put("/v1/kv/a", "1")  # same value, new version: the digest changes
    digests.append((await api.get("/v1/digest")).json()["digest"])
    await api.delete("/v1/kv/b")
    after_delete = (await api.get("/v1/digest")).json()
    assert after_delete["count"] == 1
    digests.append(after_delete["digest"])
    assert len(set(digests)) == len(digests)


@pytest.mark.parametrize("flag", ["1", "true"])
async def test_digest_with_buckets_adds_every_bucket_hash(api: Api, flag: str) -> None:
    reply = await api.get(f"/v1/digest?buckets={flag}")
    assert reply.status == 200
    assert len(reply.json()["buckets"]) == 256


@pytest.mark.parametrize("flag", ["0", "false"])
async def test_digest_with_buckets_off_leaves_them_out(api: Api, flag: str) -> None:
    reply = await api.get(f"/v1/digest?buckets={flag}")
    assert reply.status == 200
    assert set(reply.json()) == {"count", "digest"}


async def test_digest_of_one_bucket_lists_the_versions_of_exactly_its_keys(api: Api) -> None:
    """Tombstones too, at their delete's version: `shareddb verify` compares them between nodes."""
    versions = {}
    for i in range(300):
        versions[f"k{i}"] = (await api.put(f"/v1/kv/k{i}", "v")).json()["version"]
    deleted = {f"k{i}" for i in range(0, 300, 3)}
    for key in sorted(deleted):
        assert (await api.delete(f"/v1/kv/{key}")).status == 204
    listed: dict[str, str] = {}
    for bucket in range(256):
        reply = await api.get(f"/v1/digest?bucket={bucket}")
        assert reply.status == 200
        assert reply.json()["bucket"] == bucket
        found = reply.json()["versions"]
        assert {bucket_of(key) for key in found} <= {bucket}, f"bucket {bucket} lists others' keys"
        listed |= found
    assert set(listed) == set(versions)
    assert {k: ver for k, ver in listed.items() if k not in deleted} == {
        k: ver for k, ver in versions.items() if k not in deleted
    }
    assert all(listed[key] > versions[key] for key in deleted), "a tombstone at its put's version"


@pytest.mark.parametrize("bucket", ["256", "-1", "x", "", "٣"])
async def test_digest_refuses_a_bucket_out_of_range(api: Api, bucket: str) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    reply = await api.get(f"/v1/digest?bucket={enc(bucket)}")
    assert reply.status == 400, reply.body
    assert "bucket must be an integer from 0 to 255" in reply.json()["message"]


@pytest.mark.parametrize("target", ["/v1/digest?buckets=yes", "/v1/digest?buckets=&bucket=3"])
async def test_digest_refuses_a_buckets_flag_it_does_not_know(api: Api, target: str) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    reply = await api.get(target)
    assert reply.status == 400, reply.body
    assert reply.json()["error"] == "bad_request"
    assert "buckets" in reply.json()["message"]
