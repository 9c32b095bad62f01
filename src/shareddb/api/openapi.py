"""The OpenAPI 3.0 document of the node's client APIs, served at GET /v1/openapi.json.

It describes the seed-compatible API (/nodes/...), the REST API (/v1/...) and /health as SPEC.md
defines them. The replication endpoints under /v1/peer/ are internal to a cluster and left out.
tests/api/test_openapi.py checks that every client route of the router is described here.
"""

from __future__ import annotations

from typing import Any

from shareddb.api.openapi_apps import extend

Doc = dict[str, Any]

ERROR_CODES = [
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
]


def _ref(kind: str, name: str) -> Doc:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema_name: str, description: str, *, headers: Doc | None = None) -> Doc:
    response: Doc = {
        "description": description,
        "content": {"application/json": {"schema": _ref("schemas", schema_name)}},
    }
    if headers:
        response["headers"] = headers
    return response


def _params(*names: str) -> list[Doc]:
    return [_ref("parameters", name) for name in names]


ETAG = {"ETag": _ref("headers", "ETag")}

# Failures every guarded endpoint can give, in each API's error shape.
SEED_FAILURES: Doc = {
    "401": _ref("responses", "SeedUnauthorized"),
    "403": _ref("responses", "SeedForbidden"),
    "414": _ref("responses", "SeedTooLong"),
    "503": _ref("responses", "SeedUnavailable"),
}
V1_FAILURES: Doc = {
    "401": _ref("responses", "Unauthorized"),
    "403": _ref("responses", "Forbidden"),
    "503": _ref("responses", "Unavailable"),
}

SCHEMAS: Doc = {
    "Key": {
        "type": "string",
        "minLength": 1,
        "description": "A non-empty UTF-8 string of at most 1024 bytes, without NUL (U+0000).",
        "example": "colors/sky",
    },
    "Value": {
        "type": "string",
        "description": "UTF-8 text, empty allowed, at most --max-value-bytes (default 1 MiB).",
        "example": "blue",
    },
    "Version": {
        "type": "string",
        "description": (
            "Opaque name of one write (hybrid-logical-clock time and node id). Two versions "
            "compare, as plain strings, in last-writer-wins order: the greater one wins."
        ),
        "example": "01a21645261f0000-node1",
    },
    "SeedUpdated": {
        "type": "object",
        "required": ["success", "name", "value", "version", "msg"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "name": _ref("schemas", "Key"),
            "value": _ref("schemas", "Value"),
            "version": _ref("schemas", "Version"),
            "msg": {"type": "string", "example": "greeting key was updated"},
        },
    },
    "SeedValue": {
        "type": "object",
        "required": ["success", "name", "value", "version"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "name": _ref("schemas", "Key"),
            "value": _ref("schemas", "Value"),
            "version": _ref("schemas", "Version"),
        },
    },
    "SeedRemoved": {
        "type": "object",
        "required": ["success", "name", "version", "msg"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "name": _ref("schemas", "Key"),
            "version": _ref("schemas", "Version"),
            "msg": {"type": "string", "example": "greeting key was removed"},
        },
    },
    "SeedDump": {
        "type": "object",
        "required": ["success", "data"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "data": {
                "type": "object",
                "description": "Every live key and its value; {} when there is none.",
                "additionalProperties": _ref("schemas", "Value"),
            },
        },
    },
    "SeedError": {
        "type": "object",
        "required": ["success", "msg"],
        "properties": {
            "success": {"type": "boolean", "enum": [False]},
            "msg": {"type": "string", "example": "can not get greeting key"},
        },
    },
    "SeedTimeout": {
        "type": "object",
        "required": ["success", "msg", "version"],
        "description": "The write was kept; fewer than w nodes held it when the timeout passed.",
        "properties": {
            "success": {"type": "boolean", "enum": [False]},
            "msg": {"type": "string"},
            "version": _ref("schemas", "Version"),
        },
    },
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "enum": ERROR_CODES},
            "message": {"type": "string", "example": "key 'colors/sky' not found"},
        },
    },
    "Written": {
        "type": "object",
        "required": ["key", "version"],
        "properties": {
            "key": _ref("schemas", "Key"),
            "version": _ref("schemas", "Version"),
        },
    },
    "Item": {
        "type": "object",
        "required": ["key", "value", "version"],
        "properties": {
            "key": _ref("schemas", "Key"),
            "value": _ref("schemas", "Value"),
            "version": _ref("schemas", "Version"),
        },
    },
    "Listing": {
        "type": "object",
        "required": ["items", "next", "seq"],
        "properties": {
            "items": {
                "type": "array",
                "items": _ref("schemas", "Item"),
                "description": "Live keys under the prefix, sorted by key.",
            },
            "next": {
                "type": "string",
                "nullable": True,
                "description": "The `after` of the next page; null on the last page.",
            },
            "seq": {
                "type": "integer",
                "minimum": 0,
                "description": (
                    "This node's position in its changes feed when the page was read: watch "
                    "from the first page's seq (GET /v1/watch?since=SEQ) to miss no change."
                ),
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "node"],
        "properties": {
            "status": {"type": "string", "enum": ["ok"]},
            "node": {"type": "string", "description": "This node's id.", "example": "node1"},
        },
    },
    "MemberState": {
        "type": "string",
        "enum": ["up", "down", "left"],
        "description": (
            "up: exchanged with this node in the last few seconds; down: not reachable now; "
            "left: left the cluster."
        ),
    },
    "ThisNode": {
        "type": "object",
        "required": ["id", "url"],
        "properties": {
            "id": {"type": "string", "example": "node1"},
            "url": {"type": "string", "example": "http://127.0.0.1:8080"},
            "state": _ref("schemas", "MemberState"),
        },
    },
    "Member": {
        "type": "object",
        "required": ["id", "url", "state", "lag"],
        "properties": {
            "id": {
                "type": "string",
                "nullable": True,
                "description": "null for a configured peer that has not answered yet.",
            },
            "url": {"type": "string"},
            "state": _ref("schemas", "MemberState"),
            "lag": {
                "type": "integer",
                "minimum": 0,
                "description": "How many of this node's changes the member had not applied at "
                "its last pull.",
            },
            "last_contact": {
                "type": "number",
                "nullable": True,
                "description": "Seconds since this node last heard from the member.",
            },
        },
    },
    "Cluster": {
        "type": "object",
        "required": ["node", "members"],
        "properties": {
            "node": _ref("schemas", "ThisNode"),
            "members": {
                "type": "array",
                "items": _ref("schemas", "Member"),
                "description": "Every other member this node knows; [] for a node on its own.",
            },
        },
    },
    "MemberLeft": {
        "type": "object",
        "required": ["node", "state"],
        "properties": {
            "node": {"type": "string", "example": "node2"},
            "state": {"type": "string", "enum": ["left"]},
        },
    },
    "Digest": {
        "type": "object",
        "required": ["count", "digest"],
        "properties": {
            "count": {"type": "integer", "minimum": 0, "description": "Live keys."},
            "digest": {
                "type": "string",
                "pattern": "^[0-9a-f]+$",
                "description": (
                    "Equal on two nodes exactly when they hold the same keys at the same "
                    "versions, deletions included."
                ),
            },
            "buckets": {
                "type": "array",
                "items": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "minItems": 256,
                "maxItems": 256,
                "description": "With ?buckets=1: the hash of each of the 256 digest buckets.",
            },
        },
    },
    "DigestBucket": {
        "type": "object",
        "required": ["bucket", "versions"],
        "properties": {
            "bucket": {"type": "integer", "minimum": 0, "maximum": 255},
            "versions": {
                "type": "object",
                "additionalProperties": _ref("schemas", "Version"),
                "description": "Every key of the bucket and its version, deleted keys included.",
            },
        },
    },
}

PARAMETERS: Doc = {
    "name": {
        "name": "name",
        "in": "query",
        "required": True,
        "description": "The key, percent-encoded ('+' is a space).",
        "schema": _ref("schemas", "Key"),
    },
    "value": {
        "name": "value",
        "in": "query",
        "required": True,
        "allowEmptyValue": True,
        "description": (
            "The value, percent-encoded ('+' is a space); `value=` stores an empty value. "
            "The whole request target may be at most 64 KiB."
        ),
        "schema": _ref("schemas", "Value"),
    },
    "replicate": {
        "name": "replicate",
        "in": "query",
        "required": False,
        "description": "Accepted and ignored: replication is internal and cannot be switched off.",
        "schema": {"type": "string"},
    },
    "w": {
        "name": "w",
        "in": "query",
        "required": False,
        "description": (
            "Answer only when this many nodes, this one included, hold the write. More than "
            "the known members + 1 is a 400."
        ),
        "schema": {"type": "integer", "minimum": 1, "default": 1},
    },
    "timeout": {
        "name": "timeout",
        "in": "query",
        "required": False,
        "description": (
            "Seconds to wait for w copies; then 504, and the write is kept. Must be a positive number."
        ),
        "schema": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "default": 5},
    },
    "prefix": {
        "name": "prefix",
        "in": "query",
        "required": False,
        "description": "List only keys that start with this string.",
        "schema": {"type": "string", "default": ""},
    },
    "limit": {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "Items per page.",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
    "after": {
        "name": "after",
        "in": "query",
        "required": False,
        "description": "List only keys greater than this one: the `next` of the previous page.",
        "schema": {"type": "string"},
    },
    "buckets": {
        "name": "buckets",
        "in": "query",
        "required": False,
        "description": "1 or true: add the hash of every digest bucket.",
        "schema": {"type": "string", "enum": ["1", "true"]},
    },
    "bucket": {
        "name": "bucket",
        "in": "query",
        "required": False,
        "description": "Answer the keys and versions of this one digest bucket instead.",
        "schema": {"type": "integer", "minimum": 0, "maximum": 255},
    },
    "key": {
        "name": "key",
        "in": "path",
        "required": True,
        "description": "The key, percent-decoded; it may contain '/' ('+' is a plus sign here).",
        "schema": _ref("schemas", "Key"),
    },
    "member": {
        "name": "member",
        "in": "path",
        "required": True,
        "description": "The id of a member of the cluster.",
        "schema": {"type": "string"},
    },
}

RESPONSES: Doc = {
    "SeedBadRequest": _json("SeedError", "A parameter is missing or invalid."),
    "SeedNotFound": _json("SeedError", "The key has no value."),
    "SeedUnauthorized": _json("SeedError", "The node has a token and the request carries none."),
    "SeedForbidden": _json("SeedError", "The bearer token is wrong."),
    "SeedTooLarge": _json("SeedError", "The value is larger than --max-value-bytes."),
    "SeedTooLong": _json("SeedError", "The request target is longer than 64 KiB: use PUT /v1/kv/{key}."),
    "SeedUnavailable": _json("SeedError", "The store cannot be used right now; nothing changed."),
    "SeedFull": _json(
        "SeedError",
        "The disk is full or read-only; nothing changed. Reads go on; writes work again once "
        "there is space.",
    ),
    "SeedTimeout": _json("SeedTimeout", "Fewer than w nodes held the write in time; it is kept."),
    "BadRequest": _json("Error", "A parameter, the key or the body is invalid (bad_request)."),
    "NotFound": _json("Error", "The key has no value (not_found)."),
    "Unauthorized": _json("Error", "The node has a token, the request has none (unauthorized)."),
    "Forbidden": _json("Error", "The bearer token is wrong (forbidden)."),
    "TooLarge": _json("Error", "The value is larger than --max-value-bytes (too_large)."),
    "Unavailable": _json("Error", "The store cannot be used right now (unavailable)."),
    "Full": _json(
        "Error",
        "The disk is full or read-only; nothing changed (insufficient_storage). Reads go on; "
        "writes work again once there is space.",
    ),
    "Timeout": _json("Error", "Fewer than w nodes held the write in time; it is kept (timeout)."),
}

PATHS: Doc = {
    "/nodes/update": {
        "get": {
            "tags": ["seed"],
            "operationId": "seedUpdate",
            "summary": "Set a key to a value",
            "parameters": _params("name", "value", "replicate", "w", "timeout"),
            "responses": {
                "200": _json("SeedUpdated", "The value is stored."),
                "400": _ref("responses", "SeedBadRequest"),
                "413": _ref("responses", "SeedTooLarge"),
                "504": _ref("responses", "SeedTimeout"),
                "507": _ref("responses", "SeedFull"),
                **SEED_FAILURES,
            },
        }
    },
    "/nodes/get": {
        "get": {
            "tags": ["seed"],
            "operationId": "seedGet",
            "summary": "Read a key",
            "parameters": _params("name"),
            "responses": {
                "200": _json("SeedValue", "The key's value (an empty value is a value)."),
                "400": _ref("responses", "SeedBadRequest"),
                "404": _ref("responses", "SeedNotFound"),
                **SEED_FAILURES,
            },
        }
    },
    "/nodes/remove": {
        "get": {
            "tags": ["seed"],
            "operationId": "seedRemove",
            "summary": "Delete a key",
            "parameters": _params("name", "replicate", "w", "timeout"),
            "responses": {
                "200": _json("SeedRemoved", "The key is deleted."),
                "400": _ref("responses", "SeedBadRequest"),
                "404": _json("SeedError", "The key had no value: nothing was removed."),
                "504": _ref("responses", "SeedTimeout"),
                "507": _ref("responses", "SeedFull"),
                **SEED_FAILURES,
            },
        }
    },
    "/nodes/dump": {
        "get": {
            "tags": ["seed"],
            "operationId": "seedDump",
            "summary": "Every live key and value",
            "responses": {
                "200": _json("SeedDump", "Every live key; {} when there is none."),
                **SEED_FAILURES,
            },
        }
    },
    "/v1/kv": {
        "get": {
            "tags": ["kv"],
            "operationId": "listKeys",
            "summary": "List keys by prefix, a page at a time",
            "parameters": _params("prefix", "limit", "after"),
            "responses": {
                "200": _json("Listing", "One page of live keys, sorted by key."),
                "400": _ref("responses", "BadRequest"),
                **V1_FAILURES,
            },
        }
    },
    "/v1/kv/{key}": {
        "parameters": _params("key"),
        "get": {
            "tags": ["kv"],
            "operationId": "getKey",
            "summary": "Read a key's value",
            "responses": {
                "200": {
                    "description": "The value as the body.",
                    "headers": ETAG,
                    "content": {"text/plain; charset=utf-8": {"schema": _ref("schemas", "Value")}},
                },
                "400": _ref("responses", "BadRequest"),
                "404": _ref("responses", "NotFound"),
                **V1_FAILURES,
            },
        },
        "put": {
            "tags": ["kv"],
            "operationId": "putKey",
            "summary": "Set a key to the request body",
            "parameters": _params("w", "timeout"),
            "requestBody": {
                "required": True,
                "description": "The value: UTF-8 text, at most --max-value-bytes; may be empty.",
                "content": {"text/plain": {"schema": _ref("schemas", "Value")}},
            },
            "responses": {
                "201": _json(
                    "Written", "Created: the key had no value (absent or deleted).", headers=ETAG
                ),
                "200": _json("Written", "Updated: the key had a value.", headers=ETAG),
                "400": _ref("responses", "BadRequest"),
                "413": _ref("responses", "TooLarge"),
                "504": _ref("responses", "Timeout"),
                "507": _ref("responses", "Full"),
                **V1_FAILURES,
            },
        },
        "delete": {
            "tags": ["kv"],
            "operationId": "deleteKey",
            "summary": "Delete a key",
            "parameters": _params("w", "timeout"),
            "responses": {
                "204": {"description": "Deleted; ETag names the delete.", "headers": ETAG},
                "400": _ref("responses", "BadRequest"),
                "404": _ref("responses", "NotFound"),
                "504": _ref("responses", "Timeout"),
                "507": _ref("responses", "Full"),
                **V1_FAILURES,
            },
        },
    },
    "/health": {
        "get": {
            "tags": ["operations"],
            "operationId": "health",
            "summary": "Liveness; never needs a token",
            "security": [],
            "responses": {"200": _json("Health", "The node is up.")},
        }
    },
    "/v1/cluster": {
        "get": {
            "tags": ["cluster"],
            "operationId": "cluster",
            "summary": "This node and every other member it knows",
            "responses": {"200": _json("Cluster", "The cluster as this node sees it."), **V1_FAILURES},
        }
    },
    "/v1/cluster/leave": {
        "post": {
            "tags": ["cluster"],
            "operationId": "leave",
            "summary": "This node leaves the cluster",
            "description": "Its peers stop pulling from it and it stops pulling from them.",
            "responses": {"200": _json("MemberLeft", "This node has left."), **V1_FAILURES},
        }
    },
    "/v1/cluster/members/{member}": {
        "parameters": _params("member"),
        "delete": {
            "tags": ["cluster"],
            "operationId": "removeMember",
            "summary": "Mark another member as having left",
            "responses": {
                "200": _json("MemberLeft", "The member is marked as left."),
                "404": _ref("responses", "NotFound"),
                **V1_FAILURES,
            },
        },
    },
    "/v1/digest": {
        "get": {
            "tags": ["operations"],
            "operationId": "digest",
            "summary": "Live key count and a digest of every key and version",
            "parameters": _params("buckets", "bucket"),
            "responses": {
                "200": {
                    "description": "The digest of this node's data, or one bucket of it.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    _ref("schemas", "Digest"),
                                    _ref("schemas", "DigestBucket"),
                                ]
                            }
                        }
                    },
                },
                "400": _ref("responses", "BadRequest"),
                **V1_FAILURES,
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": ["operations"],
            "operationId": "metrics",
            "summary": "Counters in the Prometheus text format",
            "responses": {
                "200": {
                    "description": "Live keys, sequence, clock-skew events, member state and lag.",
                    "content": {
                        "text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "string"}}
                    },
                },
                **V1_FAILURES,
            },
        }
    },
    "/v1/openapi.json": {
        "get": {
            "tags": ["operations"],
            "operationId": "openapi",
            "summary": "This document",
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.0 document of the node's APIs.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **V1_FAILURES,
            },
        }
    },
}

OPENAPI: Doc = {
    "openapi": "3.0.3",
    "info": {
        "title": "shareddb",
        "version": "1",
        "description": (
            "A replicated key-value database for text. Every node holds all data and takes reads "
            "and writes. The seed-compatible API (/nodes/...) answers errors as "
            '{"success": false, "msg": ...}; every other endpoint answers '
            '{"error": CODE, "message": ...}. A method an endpoint does not list gets 405 with '
            "an Allow header; HEAD is accepted wherever GET is. With --token, every endpoint "
            "except /health needs `Authorization: Bearer <token>`."
        ),
    },
    "tags": [
        {"name": "seed", "description": "Seed-compatible API: GET with query parameters."},
        {"name": "kv", "description": "REST API of keys."},
        {"name": "cluster", "description": "The cluster as this node sees it."},
        {"name": "operations", "description": "Health, digest, metrics, this document."},
    ],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "parameters": PARAMETERS,
        "responses": RESPONSES,
        "headers": {
            "ETag": {
                "description": 'The version of the write, quoted: "VERSION".',
                "schema": {"type": "string", "example": '"01a21645261f0000-node1"'},
            }
        },
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "Needed only when the node runs with --token.",
            }
        },
    },
    "security": [{"bearerAuth": []}, {}],
}

extend(OPENAPI)  # conditional writes, TTL, transactions: api/openapi_apps.py
