"""The components of the OpenAPI document (api/openapi.py): schemas, parameters and answers, and
the helpers the paths are written with."""

from __future__ import annotations

from typing import Any

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


def ref(kind: str, name: str) -> Doc:
    return {"$ref": f"#/components/{kind}/{name}"}


def json_body(schema_name: str, description: str, *, headers: Doc | None = None) -> Doc:
    response: Doc = {
        "description": description,
        "content": {"application/json": {"schema": ref("schemas", schema_name)}},
    }
    if headers:
        response["headers"] = headers
    return response


def params(*names: str) -> list[Doc]:
    return [ref("parameters", name) for name in names]


ETAG = {"ETag": ref("headers", "ETag")}

# Failures every guarded endpoint can give, in each API's error shape.
SEED_FAILURES: Doc = {
    "401": ref("responses", "SeedUnauthorized"),
    "403": ref("responses", "SeedForbidden"),
    "414": ref("responses", "SeedTooLong"),
    "503": ref("responses", "SeedUnavailable"),
}
V1_FAILURES: Doc = {
    "401": ref("responses", "Unauthorized"),
    "403": ref("responses", "Forbidden"),
    "503": ref("responses", "Unavailable"),
}

SCHEMAS: Doc = {
    "Key": {
        "type": "string",
        "minLength": 1,
        "pattern": "^[^\\u0000]+$",
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
        "minLength": 1,
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
            "name": ref("schemas", "Key"),
            "value": ref("schemas", "Value"),
            "version": ref("schemas", "Version"),
            "msg": {"type": "string", "example": "greeting key was updated"},
        },
    },
    "SeedValue": {
        "type": "object",
        "required": ["success", "name", "value", "version"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "name": ref("schemas", "Key"),
            "value": ref("schemas", "Value"),
            "version": ref("schemas", "Version"),
        },
    },
    "SeedRemoved": {
        "type": "object",
        "required": ["success", "name", "version", "msg"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "name": ref("schemas", "Key"),
            "version": ref("schemas", "Version"),
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
                "additionalProperties": ref("schemas", "Value"),
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
            "version": ref("schemas", "Version"),
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
            "key": ref("schemas", "Key"),
            "version": ref("schemas", "Version"),
        },
    },
    "Item": {
        "type": "object",
        "required": ["key", "value", "version"],
        "properties": {
            "key": ref("schemas", "Key"),
            "value": ref("schemas", "Value"),
            "version": ref("schemas", "Version"),
        },
    },
    "Listing": {
        "type": "object",
        "required": ["items", "next", "seq"],
        "properties": {
            "items": {
                "type": "array",
                "items": ref("schemas", "Item"),
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
            "state": ref("schemas", "MemberState"),
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
            "state": ref("schemas", "MemberState"),
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
    "Bus": {
        "type": "object",
        "description": "The change bus (--bus), only when the node has one.",
        "required": ["url", "stream", "connected", "position", "stream_last", "lag"],
        "properties": {
            "url": {"type": "string", "example": "nats://127.0.0.1:4222"},
            "stream": {"type": "string", "example": "SHAREDDB_shareddb"},
            "connected": {"type": "boolean"},
            "position": {
                "type": "integer",
                "minimum": 0,
                "description": "The stream sequence this node has applied up to.",
            },
            "stream_last": {"type": "integer", "minimum": 0},
            "lag": {
                "type": "integer",
                "minimum": 0,
                "description": "Messages on the stream this node has not applied yet.",
            },
            "published": {
                "type": "integer",
                "minimum": 0,
                "description": "This node's feed position published up to.",
            },
            "unpublished": {"type": "integer", "minimum": 0},
            "copying": {
                "type": "string",
                "nullable": True,
                "description": "The peer a fallback copy reads from, while one runs.",
            },
            "error": {"type": "string", "nullable": True},
        },
    },
    "Cluster": {
        "type": "object",
        "required": ["node", "members"],
        "properties": {
            "bus": ref("schemas", "Bus"),
            "node": ref("schemas", "ThisNode"),
            "members": {
                "type": "array",
                "items": ref("schemas", "Member"),
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
                "additionalProperties": ref("schemas", "Version"),
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
        "schema": ref("schemas", "Key"),
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
        "schema": ref("schemas", "Value"),
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
        "description": "1 or true: add the hash of every digest bucket (0 or false: do not).",
        "schema": {"type": "string", "enum": ["1", "true", "0", "false"]},
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
        "schema": ref("schemas", "Key"),
    },
    "member": {
        "name": "member",
        "in": "path",
        "required": True,
        "description": "The id of a member of the cluster.",
        "schema": {"type": "string"},
    },
    "file": {
        "name": "file",
        "in": "path",
        "required": True,
        "description": "A file of the dashboard, as the page names it (dashboard.js, dashboard.css).",
        "schema": {"type": "string", "example": "dashboard.js"},
    },
}

RESPONSES: Doc = {
    "SeedBadRequest": json_body("SeedError", "A parameter is missing or invalid."),
    "SeedNotFound": json_body("SeedError", "The key has no value."),
    "SeedUnauthorized": json_body(
        "SeedError", "The node has tokens and the request carries none, or one it does not know."
    ),
    "SeedForbidden": json_body("SeedError", "The token's role does not allow this request."),
    "SeedTooLarge": json_body("SeedError", "The value is larger than --max-value-bytes."),
    "SeedTooLong": json_body(
        "SeedError", "The request target is longer than 64 KiB: use PUT /v1/kv/{key}."
    ),
    "SeedUnavailable": json_body("SeedError", "The store cannot be used right now; nothing changed."),
    "SeedFull": json_body(
        "SeedError",
        "The disk is full or read-only; nothing changed. Reads go on; writes work again once "
        "there is space.",
    ),
    "SeedTimeout": json_body("SeedTimeout", "Fewer than w nodes held the write in time; it is kept."),
    "BadRequest": json_body("Error", "A parameter, the key or the body is invalid (bad_request)."),
    "NotFound": json_body("Error", "The key has no value (not_found)."),
    "Unauthorized": json_body(
        "Error", "The node has tokens, the request has none or an unknown one (unauthorized)."
    ),
    "Forbidden": json_body("Error", "The token's role does not allow this request (forbidden)."),
    "TooLarge": json_body("Error", "The value is larger than --max-value-bytes (too_large)."),
    "Unavailable": json_body("Error", "The store cannot be used right now (unavailable)."),
    "Full": json_body(
        "Error",
        "The disk is full or read-only; nothing changed (insufficient_storage). Reads go on; "
        "writes work again once there is space.",
    ),
    "Timeout": json_body("Error", "Fewer than w nodes held the write in time; it is kept (timeout)."),
}
