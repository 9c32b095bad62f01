"""Every failure of both APIs: the status, the error shape of its API, and that nothing was stored.

Invariant 6 throughout: bad input gets a clear 4xx and changes nothing; no request crashes a node.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from shareddb.api import cluster, kv, metrics, nodes, ops, peer, ui, watch
from shareddb.tokens import Role
from tests.api.conftest import JSON, SMALL_MAX_VALUE, TOKEN, Api, Reply, enc

MIB = 1024 * 1024
MAX_TARGET = 64 * 1024


def assert_seed_error(reply: Reply, status: int) -> str:
    """The seed API's failure shape `{"success": false, "msg": ...}`; returns the message."""
    assert reply.status == status, reply.body
    assert reply.content_type == JSON
    body = reply.json()
    assert body == {"success": False, "msg": body.get("msg")}
    assert isinstance(body["msg"], str)
    assert body["msg"]
    return str(body["msg"])


def assert_v1_error(reply: Reply, status: int, code: str) -> str:
    """The v1 API's failure shape `{"error": CODE, "message": ...}`; returns the message."""
    assert reply.status == status, reply.body
    assert reply.content_type == JSON
    body = reply.json()
    assert body == {"error": code, "message": body.get("message")}
    assert isinstance(body["message"], str)
    assert body["message"]
    return str(body["message"])


State = tuple[Any, dict[str, str], int]


async def stored(api: Api) -> State:
    """A node holding one key, and its state: what every refused request must leave alone."""
    assert (await api.put("/v1/kv/existing", "value")).status == 201
    return await api.state()


async def assert_unchanged(api: Api, before: State) -> None:
    assert await api.state() == before
    assert (await api.get("/v1/kv/existing")).text == "value"
    health = await api.get("/health")
    assert health.status == 200
    assert health.json() == {"status": "ok", "node": "n1"}


# --- the bad-input list -------------------------------------------------------------------------


async def test_missing_name_is_400_and_stores_nothing(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    for endpoint in ["update", "get", "remove"]:
        reply = await api.get(f"/nodes/{endpoint}?value=v")
        assert "name is required" in assert_seed_error(reply, 400), endpoint
    await assert_unchanged(api, before)


async def test_empty_name_is_400_and_stores_nothing(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    for endpoint in ["update", "get", "remove"]:
        reply = await api.get(f"/nodes/{endpoint}?name=&value=v")
        assert "empty" in assert_seed_error(reply, 400), endpoint
    await assert_unchanged(api, before)


async def test_missing_value_is_400_and_stores_nothing(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    reply = await api.get("/nodes/update?name=existing")
    assert "value is required" in assert_seed_error(reply, 400)
    await assert_unchanged(api, before)


async def test_key_over_1024_bytes_is_400_in_both_apis_and_stores_nothing(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    key = "é" * 512 + "a"  # 1025 bytes in 513 characters
    assert "1025 bytes" in assert_seed_error(await api.seed_update(key, "v"), 400)
    assert "1025 bytes" in assert_v1_error(await api.kv_put(key, "v"), 400, "bad_request")
    assert_v1_error(await api.kv_get(key), 400, "bad_request")
    assert_v1_error(await api.delete(f"/v1/kv/{enc(key)}"), 400, "bad_request")
    await assert_unchanged(api, before)


async def test_nul_in_a_key_is_400_in_both_apis_and_stores_nothing(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    assert "NUL" in assert_seed_error(await api.get("/nodes/update?name=a%00b&value=v"), 400)
    assert "NUL" in assert_v1_error(await api.put("/v1/kv/a%00b", "v"), 400, "bad_request")
    assert_v1_error(await api.put("/v1/kv/%00", "v"), 400, "bad_request")
    await assert_unchanged(api, before)


async def test_empty_key_path_is_400_and_stores_nothing(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    assert_v1_error(await api.put("/v1/kv/", "v"), 400, "bad_request")
    await assert_unchanged(api, before)


async def test_malformed_percent_encoding_is_400_in_both_apis_and_stores_nothing(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    for target in [
        "/nodes/update?name=a%G1&value=v",
        "/nodes/update?name=k&value=50%",
        "/nodes/get?name=%",
    ]:
        assert "percent" in assert_seed_error(await api.get(target), 400), target
    for method, target in [("PUT", "/v1/kv/a%zz"), ("PUT", "/v1/kv/a%2"), ("GET", "/v1/kv?prefix=%G1")]:
        reply = await api.request(method, target, data=b"v")
        assert "percent" in assert_v1_error(reply, 400, "bad_request"), target
    await assert_unchanged(api, before)


async def test_percent_encoded_bytes_that_are_not_utf8_are_400_and_store_nothing(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    for target in ["/nodes/update?name=k&value=caf%E9", "/nodes/update?name=%C3&value=v"]:
        assert "UTF-8" in assert_seed_error(await api.get(target), 400), target
    assert "UTF-8" in assert_v1_error(await api.put("/v1/kv/caf%E9", "v"), 400, "bad_request")
    await assert_unchanged(api, before)


async def test_body_that_is_not_utf8_is_400_and_stores_nothing(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    for body in [b"caf\xe9", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"]:
        reply = await api.put("/v1/kv/k", body)
        assert "UTF-8" in assert_v1_error(reply, 400, "bad_request"), body
        assert_v1_error(await api.put("/v1/kv/existing", body), 400, "bad_request")
    await assert_unchanged(api, before)


async def test_value_of_exactly_max_value_bytes_is_accepted(small_api: Api) -> None:
    value = "é" * (SMALL_MAX_VALUE // 2)  # 16 bytes in 8 characters
    assert (await small_api.kv_put("v1", value)).status == 201
    assert (await small_api.seed_update("seed", value)).status == 200
    assert await small_api.dump() == {"v1": value, "seed": value}


async def test_value_over_max_value_bytes_is_413_in_both_apis_and_stores_nothing(small_api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    api = small_api
    before = await stored(api)
    value = "é" * (SMALL_MAX_VALUE // 2) + "a"  # 17 bytes in 9 characters
    assert_v1_error(await api.kv_put("k", value), 413, "too_large")
    assert_v1_error(await api.kv_put("existing", value), 413, "too_large")
    assert "17 bytes" in assert_seed_error(await api.seed_update("k", value), 413)
    assert_seed_error(await api.seed_update("existing", value), 413)
    await assert_unchanged(api, before)


async def test_chunked_body_over_max_value_bytes_is_413_and_stores_nothing(small_api: Api) -> None:
    """Invariant 6. No Content-Length: the node counts bytes as they arrive and stops at the limit."""
    api = small_api
    before = await stored(api)
    chunk = b"0123456789"
    request = (
        b"PUT /v1/kv/big HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"a\r\n"
        + chunk
        + b"\r\n"
        + b"a\r\n"
        + chunk
        + b"\r\n"
    )  # 20 bytes sent, the end of the body never is
    reply = await api.raw(request)
    assert_v1_error(reply, 413, "too_large")
    complete = request + b"0\r\n\r\n"
    assert_v1_error(await api.raw(complete), 413, "too_large")
    await assert_unchanged(api, before)


async def test_content_length_over_max_value_bytes_is_413_before_the_body_is_sent(
    small_api: Api,
) -> None:
    """Invariant 6. Only the headers are sent: an answer proves the node did not wait for the body."""
    api = small_api
    before = await stored(api)
    headers = b"PUT /v1/kv/big HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000\r\n\r\n"
    message = assert_v1_error(await api.raw(headers), 413, "too_large")
    assert "1000000" in message
    await assert_unchanged(api, before)


async def test_connection_goes_on_after_a_413_whose_body_was_sent(small_api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    api = small_api
    before = await stored(api)
    request = b"PUT /v1/kv/big HTTP/1.1\r\nHost: t\r\nContent-Length: 40\r\n\r\n" + b"x" * 40
    health = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
    too_large, then = await api.raw_exchange(request + health, responses=2)
    assert_v1_error(too_large, 413, "too_large")
    assert then.status == 200
    assert then.json() == {"status": "ok", "node": "n1"}
    await assert_unchanged(api, before)


async def test_default_max_value_is_1_mib(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    headers = f"PUT /v1/kv/big HTTP/1.1\r\nHost: test\r\nContent-Length: {MIB + 1}\r\n\r\n"
    assert_v1_error(await api.raw(headers.encode()), 413, "too_large")
    await assert_unchanged(api, before)
    assert (await api.put("/v1/kv/big", "x" * MIB)).status == 201
    assert (await api.get("/v1/kv/big")).body == b"x" * MIB


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "5000"])
async def test_listing_limit_outside_1_to_1000_is_400_and_changes_nothing(api: Api, limit: str) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    reply = await api.get(f"/v1/kv?limit={limit}")
    assert "limit" in assert_v1_error(reply, 400, "bad_request")
    await assert_unchanged(api, before)


async def test_listing_limit_that_is_not_a_plain_integer_is_400_and_changes_nothing(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    for limit in ["", "1001", "1.5", "1e2", "%201", "+1", "0x10"]:
        reply = await api.get(f"/v1/kv?limit={limit}")
        assert "limit" in assert_v1_error(reply, 400, "bad_request"), limit
    await assert_unchanged(api, before)


async def test_seed_request_target_over_64_kib_is_414_pointing_to_put_and_stores_nothing(
    api: Api,
) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    for endpoint, size in [("update", MAX_TARGET + 1), ("update", MIB), ("get", MAX_TARGET + 1)]:
        head = f"/nodes/{endpoint}?name=big&value="
        reply = await api.get(head + "x" * (size - len(head)))
        assert "PUT /v1/kv/" in assert_seed_error(reply, 414), (endpoint, size)
    await assert_unchanged(api, before)


async def test_request_line_past_what_the_node_parses_is_a_4xx_and_the_node_goes_on(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    line = b"GET /nodes/update?name=big&value=" + b"x" * (5 * MIB) + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    reply = await api.raw(line)
    assert 400 <= reply.status < 500
    await assert_unchanged(api, before)


# --- w and timeout --------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["w=2", "w=0", "w=abc", "timeout=0", "timeout=-1"])
async def test_bad_w_or_timeout_is_400_before_anything_is_written(api: Api, query: str) -> None:
    """Invariant 6. A lone node knows no other member, so w=2 can never be met: refused, not written."""
    before = await stored(api)
    assert_v1_error(await api.put(f"/v1/kv/new?{query}", "v"), 400, "bad_request")
    assert_v1_error(await api.put(f"/v1/kv/existing?{query}", "changed"), 400, "bad_request")
    assert_v1_error(await api.delete(f"/v1/kv/existing?{query}"), 400, "bad_request")
    assert_seed_error(await api.get(f"/nodes/update?name=new&value=v&{query}"), 400)
    assert_seed_error(await api.get(f"/nodes/remove?name=existing&{query}"), 400)
    await assert_unchanged(api, before)


async def test_timeout_written_with_a_digit_separator_is_400(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    assert_v1_error(await api.put("/v1/kv/new?timeout=1_0", "v"), 400, "bad_request")
    assert_seed_error(await api.get("/nodes/update?name=new&value=v&timeout=%D9%A1"), 400)
    await assert_unchanged(api, before)


# --- routing: unknown paths and methods -----------------------------------------------------------


async def test_unknown_path_is_404_json_in_the_shape_of_its_api(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    for target in ["/nope", "/v1", "/v1/kvx", "/v2/kv/k", "/", "/healthz"]:
        assert_v1_error(await api.get(target), 404, "not_found")
    for target in ["/nodes/nope", "/nodes/", "/nodes/update/extra?name=k&value=v"]:
        assert_seed_error(await api.get(target), 404)
    await assert_unchanged(api, before)


def allowed(reply: Reply) -> set[str]:
    """The Allow header as RFC 9110 writes it: methods separated by ", ", each listed once."""
    header = reply.headers["Allow"]
    methods = header.split(", ")
    assert all(re.fullmatch(r"[A-Z]+", m) for m in methods), header
    assert len(methods) == len(set(methods)), header
    return set(methods)


async def test_wrong_method_is_405_json_with_allow(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    for method, target, allow in [
        ("POST", "/v1/kv/existing", {"GET", "HEAD", "PUT", "DELETE"}),
        ("PATCH", "/v1/kv/existing", {"GET", "HEAD", "PUT", "DELETE"}),
        ("PUT", "/v1/kv", {"GET", "HEAD"}),
        ("DELETE", "/v1/digest", {"GET", "HEAD"}),
        ("PUT", "/health", {"GET", "HEAD"}),
    ]:
        reply = await api.request(method, target, data=b"changed")
        assert "not allowed" in assert_v1_error(reply, 405, "method_not_allowed"), target
        assert allowed(reply) == allow
    await assert_unchanged(api, before)


async def test_wrong_method_on_the_seed_api_is_405_in_the_seed_shape(api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    before = await stored(api)
    for endpoint, allow in [
        ("update", {"GET"}),
        ("remove", {"GET"}),
        ("get", {"GET", "HEAD"}),
        ("dump", {"GET", "HEAD"}),
    ]:
        reply = await api.request("POST", f"/nodes/{endpoint}?name=existing&value=x", data=b"")
        assert_seed_error(reply, 405)
        assert allowed(reply) == allow, endpoint
    await assert_unchanged(api, before)


async def test_head_never_runs_a_seed_write(api: Api) -> None:
    """Invariant 6. HEAD is a safe method: a HEAD of /nodes/update or /nodes/remove must not write."""
    before = await stored(api)
    for target in ["/nodes/update?name=existing&value=changed", "/nodes/remove?name=existing"]:
        reply = await api.request("HEAD", target)
        assert reply.status == 405, target
        assert allowed(reply) == {"GET"}
    await assert_unchanged(api, before)


# --- the token ------------------------------------------------------------------------------------

# Every client endpoint except /health, with a request that would change or reveal something. The
# peer endpoints take no client token (tests/api/test_access.py).
GUARDED = [
    ("GET", "/nodes/update?name=k&value=v"),
    ("GET", "/nodes/get?name=existing"),
    ("GET", "/nodes/remove?name=existing"),
    ("GET", "/nodes/dump"),
    ("PUT", "/v1/kv/k"),
    ("GET", "/v1/kv/existing"),
    ("DELETE", "/v1/kv/existing"),
    ("GET", "/v1/kv"),
    ("GET", "/v1/watch?prefix=&since=0"),
    ("GET", "/v1/cluster"),
    ("POST", "/v1/cluster/leave"),
    ("DELETE", "/v1/cluster/members/n2"),
    ("GET", "/v1/digest"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/metrics"),
]


def route_pattern(target: str) -> str:
    path = target.partition("?")[0]
    for prefix in ("/v1/kv/", "/v1/cluster/members/"):
        if path.startswith(prefix):
            return prefix + "*"
    return path


async def test_guarded_list_covers_every_route_but_health_and_the_dashboard(api: Api) -> None:
    routes = [
        *ops.routes(api.node),
        *nodes.routes(api.node),
        *kv.routes(api.node),
        *watch.routes(api.node),
        *cluster.routes(api.node),
        *peer.routes(api.node),
        *metrics.routes(metrics.NodeMetrics(api.node)),
        *ui.routes(api.node),
    ]
    client = {Role.READ, Role.WRITE, Role.ADMIN}
    every = {(route.method, route.path) for route in routes if route.role in client}
    assert every == {(method, route_pattern(target)) for method, target in GUARDED}
    assert [route.path for route in routes if route.role is Role.PUBLIC] == ["/health", "/ui", "/ui/*"]


async def test_health_answers_without_the_token(secured_api: Api) -> None:
    for headers in [{}, {"Authorization": "Bearer wrong"}]:
        reply = await secured_api.get("/health", auth=False, headers=headers)
        assert reply.status == 200
        assert reply.json() == {"status": "ok", "node": "n1"}


def assert_auth_error(reply: Reply, target: str, status: int) -> None:
    if target.startswith("/nodes/"):
        assert_seed_error(reply, status)
    else:
        assert_v1_error(reply, status, {401: "unauthorized", 403: "forbidden"}[status])


async def test_every_other_endpoint_is_401_without_a_token(secured_api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    api = secured_api
    before = await stored(api)
    for method, target in GUARDED:
        for headers in [{}, {"Authorization": "Bearer "}, {"Authorization": f"Basic {TOKEN}"}]:
            reply = await api.request(method, target, data=b"{}", headers=headers, auth=False)
            assert_auth_error(reply, target, 401)
    await assert_unchanged(api, before)
    assert (await api.get("/v1/cluster")).json()["node"].get("state", "up") == "up"


async def test_every_other_endpoint_is_401_with_an_unknown_token(secured_api: Api) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing."""
    api = secured_api
    before = await stored(api)
    for method, target in GUARDED:
        for token in ["wrong", TOKEN + "x", TOKEN[:-1], TOKEN.upper()]:
            headers = {"Authorization": f"Bearer {token}"}
            reply = await api.request(method, target, data=b"{}", headers=headers)
            assert_auth_error(reply, target, 401)
    await assert_unchanged(api, before)
    assert (await api.get("/v1/cluster")).json()["node"].get("state", "up") == "up"


async def test_the_right_token_is_accepted_on_both_apis(secured_api: Api) -> None:
    api = secured_api
    assert (await api.get("/nodes/update?name=k&value=v")).status == 200
    assert (await api.get("/v1/kv/k")).text == "v"
    lower = {"Authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive
    assert (await api.put("/v1/kv/k", "w", headers=lower)).status == 200
    assert await api.dump() == {"k": "w"}


# --- after all of it ------------------------------------------------------------------------------


async def test_node_still_answers_after_every_kind_of_bad_input(small_api: Api) -> None:
    """Invariant 6: no request crashes a node; after every kind of bad input the data is as it was."""
    api = small_api
    before = await stored(api)
    requests: list[tuple[str, str, bytes]] = [
        ("GET", "/nodes/update?value=v", b""),
        ("GET", "/nodes/update?name=&value=v", b""),
        ("GET", "/nodes/update?name=k", b""),
        ("GET", f"/nodes/update?name={'a' * 1025}&value=v", b""),
        ("GET", "/nodes/update?name=a%00&value=v", b""),
        ("GET", "/nodes/update?name=a%G1&value=v", b""),
        ("GET", "/nodes/update?name=k&value=%e9", b""),
        ("GET", f"/nodes/update?name=k&value={'x' * 17}", b""),
        ("GET", "/nodes/update?name=k&value=" + "x" * MAX_TARGET, b""),
        ("GET", "/nodes/update?name=k&value=v&w=2", b""),
        ("PUT", f"/v1/kv/{'a' * 1025}", b"v"),
        ("PUT", "/v1/kv/a%00", b"v"),
        ("PUT", "/v1/kv/a%", b"v"),
        ("PUT", "/v1/kv/k", b"\xff"),
        ("PUT", "/v1/kv/k", b"x" * 17),
        ("PUT", "/v1/kv/k?w=0", b"v"),
        ("PUT", "/v1/kv/k?timeout=-1", b"v"),
        ("DELETE", "/v1/kv/missing", b""),
        ("GET", "/v1/kv?limit=0", b""),
        ("GET", "/v1/kv?limit=5000", b""),
        ("GET", "/nope", b""),
        ("POST", "/v1/kv/k", b"v"),
    ]
    for method, target, body in requests:
        reply = await api.request(method, target, data=body)
        assert 400 <= reply.status < 500, (method, target[:80], reply.status)
    raw = b"PUT /v1/kv/k HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n"
    assert (await api.raw(raw)).status == 413
    await assert_unchanged(api, before)
