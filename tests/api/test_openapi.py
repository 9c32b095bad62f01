"""The OpenAPI document describes every client route of a node, as SPEC.md defines it, and is served."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestClient

import shareddb.api
from shareddb.api.app import create_router
from shareddb.api.openapi import OPENAPI
from shareddb.api.routing import Route
from shareddb.config import Settings
from shareddb.node import Node
from shareddb.tokens import Role

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
PATHS: dict[str, Any] = OPENAPI["paths"]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    node = await Node.open(Settings(data=tmp_path / "n", node_id="n1"))
    yield node
    await node.close()


def route_modules() -> dict[str, ModuleType]:
    """Every module of shareddb.api that contributes routes to the router (see api/app.py)."""
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(shareddb.api.__path__):
        module = importlib.import_module(f"shareddb.api.{info.name}")
        if callable(getattr(module, "routes", None)):
            found[info.name] = module
    return found


def client_routes(node: Node) -> list[tuple[str, str]]:
    """(method, path) of every client route; the peer routes of replication are internal."""
    modules = route_modules()
    assert {"ops", "nodes", "kv", "cluster"} <= set(modules)
    routes: list[Route] = [r for module in modules.values() for r in module.routes(node)]
    return [(route.method, route.path) for route in routes if route.role is not Role.PEER]


def documented_path(route_path: str) -> str:
    """The OpenAPI path of a router path: a prefix route `/v1/kv/*` is `/v1/kv/{key}`."""
    if not route_path.endswith("/*"):
        return route_path
    prefix = route_path[:-1]
    matches = [
        path
        for path in PATHS
        if path.startswith(prefix) and re.fullmatch(r"\{\w+\}", path[len(prefix) :])
    ]
    assert len(matches) == 1, f"{route_path} should be documented as one {prefix}{{param}} path"
    return matches[0]


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in PATHS.items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` ("#/components/kind/name") to what it names."""
    while "$ref" in node:
        ref: str = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = OPENAPI
        for part in ref[2:].split("/"):
            assert part in target, f"{ref} does not resolve"
            target = target[part]
        node = target
    return node


def parameters(path: str, method: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The operation's parameters, path-level ones included, by (in, name)."""
    declared = [*PATHS[path].get("parameters", []), *PATHS[path][method].get("parameters", [])]
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for param in map(resolve, declared):
        where = (param["in"], param["name"])
        assert where not in found, f"{method.upper()} {path} declares {where} twice"
        found[where] = param
    return found


def schema_name(response: dict[str, Any]) -> str | None:
    """The component schema name of a JSON response, or None when it has no JSON body."""
    content = resolve(response).get("content", {})
    if "application/json" not in content:
        return None
    ref: str = content["application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[1]


def test_document_is_openapi_3_0_with_bearer_auth() -> None:
    assert re.fullmatch(r"3\.0\.\d+", OPENAPI["openapi"])
    assert OPENAPI["info"]["title"] == "shareddb"
    assert OPENAPI["info"]["version"]
    scheme = OPENAPI["components"]["securitySchemes"]["bearerAuth"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    assert {"bearerAuth": []} in OPENAPI["security"]
    assert PATHS["/health"]["get"]["security"] == [], "/health never needs a token"


async def test_every_client_route_is_documented(node: Node) -> None:
    for method, path in client_routes(node):
        documented = documented_path(path)
        assert documented in PATHS, f"{method} {path} is routed but not documented"
        assert method.lower() in PATHS[documented], f"{method} {path} is routed but not documented"


async def test_every_documented_operation_is_routed(node: Node) -> None:
    routed = {(method.lower(), documented_path(path)) for method, path in client_routes(node)}
    for path, method, _ in operations():
        assert (method, path) in routed, f"{method.upper()} {path} is documented but not routed"


def test_every_reference_resolves() -> None:
    def walk(value: Any) -> Iterator[dict[str, Any]]:
        if isinstance(value, dict):
            if "$ref" in value:
                yield value
            for child in value.values():
                yield from walk(child)
        elif isinstance(value, list):
            for child in value:
                yield from walk(child)

    refs = list(walk(OPENAPI))
    assert refs
    for ref in refs:
        resolve(ref)


def test_every_operation_has_an_id_and_described_responses() -> None:
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids)), "operationId must be unique"
    for path, method, op in operations():
        assert op["responses"], f"{method.upper()} {path} has no responses"
        for status, response in op["responses"].items():
            assert re.fullmatch(r"[1-5]\d\d", status), f"{method.upper()} {path}: status {status}"
            assert resolve(response)["description"], f"{method.upper()} {path} {status}"


def test_path_templates_match_their_path_parameters() -> None:
    for path, method, _ in operations():
        in_template = set(re.findall(r"\{(\w+)\}", path))
        declared = parameters(path, method)
        in_path = {name for where, name in declared if where == "path"}
        assert in_path == in_template, f"{method.upper()} {path}"
        for name in in_path:
            assert declared[("path", name)]["required"] is True


@pytest.mark.parametrize(
    ("method", "path", "names"),
    [
        ("get", "/nodes/update", {"name", "value", "replicate", "w", "timeout", "ttl"}),
        ("get", "/nodes/get", {"name"}),
        ("get", "/nodes/remove", {"name", "replicate", "w", "timeout"}),
        ("get", "/v1/kv", {"prefix", "limit", "after"}),
        ("put", "/v1/kv/{key}", {"w", "timeout", "ttl"}),
        ("delete", "/v1/kv/{key}", {"w", "timeout"}),
        ("get", "/v1/watch", {"prefix", "key", "since"}),
        ("post", "/v1/txn", {"w", "timeout"}),
    ],
)
def test_query_parameters_of_the_contract_are_described(method: str, path: str, names: set[str]) -> None:
    query = {name for where, name in parameters(path, method) if where == "query"}
    assert query == names


def test_limit_and_empty_value_follow_the_contract() -> None:
    limit = resolve(PATHS["/v1/kv"]["get"]["parameters"][1])
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
    value = parameters("/nodes/update", "get")[("query", "value")]
    assert value["allowEmptyValue"] is True, "value= stores an empty value"


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("get", "/nodes/update", {"200", "400", "401", "403", "413", "414", "503", "504", "507"}),
        ("get", "/nodes/get", {"200", "400", "401", "403", "404", "414", "503"}),
        ("get", "/nodes/remove", {"200", "400", "401", "403", "404", "414", "503", "504", "507"}),
        ("get", "/nodes/dump", {"200", "401", "403", "414", "503"}),
        ("get", "/v1/kv", {"200", "400", "401", "403", "503"}),
        ("get", "/v1/kv/{key}", {"200", "400", "401", "403", "404", "503"}),
        (
            "put",
            "/v1/kv/{key}",
            {"200", "201", "400", "401", "403", "412", "413", "415", "503", "504", "507"},
        ),
        ("delete", "/v1/kv/{key}", {"204", "400", "401", "403", "404", "412", "503", "504", "507"}),
        ("post", "/v1/txn", {"200", "400", "401", "403", "412", "413", "415", "503", "504", "507"}),
        ("get", "/health", {"200"}),
        ("get", "/v1/cluster", {"200", "401", "403", "503"}),
        ("get", "/v1/digest", {"200", "400", "401", "403", "503"}),
        ("get", "/v1/watch", {"200", "400", "401", "403", "410", "503"}),
    ],
)
def test_statuses_of_the_contract_are_documented(method: str, path: str, statuses: set[str]) -> None:
    assert set(PATHS[path][method]["responses"]) == statuses


@pytest.mark.parametrize(
    ("method", "path", "status", "schema"),
    [
        ("get", "/nodes/update", "200", "SeedUpdated"),
        ("get", "/nodes/get", "200", "SeedValue"),
        ("get", "/nodes/remove", "200", "SeedRemoved"),
        ("get", "/nodes/dump", "200", "SeedDump"),
        ("get", "/v1/kv", "200", "Listing"),
        ("put", "/v1/kv/{key}", "200", "Written"),
        ("put", "/v1/kv/{key}", "201", "Written"),
        ("get", "/health", "200", "Health"),
        ("get", "/v1/cluster", "200", "Cluster"),
    ],
)
def test_success_bodies_have_their_schema(method: str, path: str, status: str, schema: str) -> None:
    assert schema_name(PATHS[path][method]["responses"][status]) == schema


def test_digest_answers_count_and_digest_or_one_bucket() -> None:
    content = PATHS["/v1/digest"]["get"]["responses"]["200"]["content"]["application/json"]
    schemas = [resolve(choice) for choice in content["schema"]["oneOf"]]
    assert [s["required"] for s in schemas] == [["count", "digest"], ["bucket", "versions"]]


def test_errors_have_the_shape_of_their_api() -> None:
    for path, method, op in operations():
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            name = schema_name(response)
            if path.startswith("/nodes/"):
                expected = {"SeedTimeout"} if status == "504" else {"SeedError"}
            elif status == "412":  # the Error shape with the current version(s)
                expected = {"PreconditionFailed", "TxnConflict"}
            else:
                expected = {"Error"}
            assert name in expected, f"{method.upper()} {path} {status} answers {name}"
    codes = OPENAPI["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
    assert set(codes) == {
        "bad_request",
        "not_found",
        "method_not_allowed",
        "too_large",
        "unauthorized",
        "forbidden",
        "timeout",
        "unavailable",
        "precondition_failed",
        "gone",
        "unsupported_media_type",
        "insufficient_storage",
    }


def test_writes_and_reads_carry_the_etag_header() -> None:
    kv_item = PATHS["/v1/kv/{key}"]
    for method, status in (("get", "200"), ("put", "200"), ("put", "201"), ("delete", "204")):
        assert "ETag" in resolve(kv_item[method]["responses"][status])["headers"]
    text = kv_item["get"]["responses"]["200"]["content"]
    assert list(text) == ["text/plain; charset=utf-8"]


def test_document_passes_the_openapi_validator() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(orjson.loads(orjson.dumps(OPENAPI)))


async def test_document_is_served_at_v1_openapi_json(node: Node) -> None:
    client: TestClient[web.BaseRequest, None] = TestClient(RawTestServer(create_router(node)))
    async with client:
        response = await client.get("/v1/openapi.json")
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert orjson.loads(await response.read()) == orjson.loads(orjson.dumps(OPENAPI))


def test_listing_answers_its_seq_and_watch_resumes_from_last_event_id() -> None:
    listing = resolve(OPENAPI["components"]["schemas"]["Listing"])
    assert listing["properties"]["seq"]["type"] == "integer"
    assert ("header", "Last-Event-ID") in parameters("/v1/watch", "get")
    stream = PATHS["/v1/watch"]["get"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]
