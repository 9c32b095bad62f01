"""The OpenAPI description of the API applications build on: watch, conditional writes, TTL,
transactions.

`extend` adds it to the document of api/openapi.py: new schemas, parameters and paths, and the
headers, parameters and answers these features add to the key endpoints.
"""

from __future__ import annotations

from shareddb.api.openapi_components import Doc, ref
from shareddb.api.watch import MAX_SEQ_DIGITS

MAX_SEQ = 10**MAX_SEQ_DIGITS - 1  # the largest `since` / Last-Event-ID the node reads

EXPIRES = {
    "type": "string",
    "format": "date-time",
    "nullable": True,
    "description": "When the key expires (ISO-8601 UTC, by the writing node's clock); null: never.",
    "example": "2027-01-15T10:00:05.000Z",
}

SCHEMAS: Doc = {
    "Expires": EXPIRES,
    "WatchEvent": {
        "type": "object",
        "description": "One Server-Sent Event of a watch.",
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]+$", "description": "SEQ."},
            "event": {"type": "string", "enum": ["put", "delete"]},
            "data": {
                "type": "string",
                "description": 'JSON: {"key": K, "value": V-or-null, "version": VER, "seq": SEQ, '
                '"expires": ISO-8601-or-null}.',
            },
        },
    },
    "KeyVersion": {
        "type": "object",
        "required": ["key", "version"],
        "properties": {
            "key": ref("schemas", "Key"),
            "version": {
                "allOf": [ref("schemas", "Version")],
                "nullable": True,
                "description": "null: the key is absent (or nothing was written).",
            },
        },
    },
    "PreconditionFailed": {
        "type": "object",
        "required": ["error", "message", "version"],
        "properties": {
            "error": {"type": "string", "enum": ["precondition_failed"]},
            "message": {"type": "string"},
            "version": {
                "allOf": [ref("schemas", "Version")],
                "nullable": True,
                "description": "The key's current version on this node; null when it is absent.",
            },
        },
    },
    "TxnCondition": {
        "description": 'Either {"key", "version"}: live at exactly that version, or {"key", '
        '"absent": true}: never written, deleted or expired.',
        "oneOf": [
            {
                "type": "object",
                "required": ["key", "version"],
                "additionalProperties": False,
                "properties": {"key": ref("schemas", "Key"), "version": ref("schemas", "Version")},
            },
            {
                "type": "object",
                "required": ["key", "absent"],
                "additionalProperties": False,
                "properties": {
                    "key": ref("schemas", "Key"),
                    "absent": {"type": "boolean", "enum": [True]},
                },
            },
        ],
    },
    "TxnOperation": {
        "description": 'A put ({"op": "put", "key", "value", optional "ttl"}) or a delete '
        '({"op": "delete", "key"}).',
        "oneOf": [
            {
                "type": "object",
                "required": ["op", "key", "value"],
                "additionalProperties": False,
                "properties": {
                    "op": {"type": "string", "enum": ["put"]},
                    "key": ref("schemas", "Key"),
                    "value": ref("schemas", "Value"),
                    "ttl": {"type": "integer", "minimum": 1, "maximum": 315360000},
                },
            },
            {
                "type": "object",
                "required": ["op", "key"],
                "additionalProperties": False,
                "properties": {
                    "op": {"type": "string", "enum": ["delete"]},
                    "key": ref("schemas", "Key"),
                },
            },
        ],
    },
    "TxnRequest": {
        "type": "object",
        "required": ["then"],
        "additionalProperties": False,
        "properties": {
            "if": {"type": "array", "items": ref("schemas", "TxnCondition"), "maxItems": 1000},
            "then": {
                "type": "array",
                "items": ref("schemas", "TxnOperation"),
                "minItems": 1,
                "maxItems": 1000,
                "description": "Each key at most once.",
            },
        },
    },
    "TxnResult": {
        "type": "object",
        "required": ["ok", "results"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "results": {
                "type": "array",
                "description": "In the order of `then`; version null for a delete of an absent key.",
                "items": ref("schemas", "KeyVersion"),
            },
        },
    },
    "TxnConflict": {
        "type": "object",
        "required": ["error", "message", "failed"],
        "properties": {
            "error": {"type": "string", "enum": ["precondition_failed"]},
            "message": {"type": "string"},
            "failed": {
                "type": "array",
                "description": "Every condition that did not hold, with the key's current version.",
                "items": ref("schemas", "KeyVersion"),
            },
        },
    },
}

PARAMETERS: Doc = {
    "watchPrefix": {
        "name": "prefix",
        "in": "query",
        "required": False,
        "allowEmptyValue": True,
        "description": "Watch the keys that start with this string; `prefix=` watches every key. "
        "Give this or `key`, not both.",
        "schema": {"type": "string"},
    },
    "watchKey": {
        "name": "key",
        "in": "query",
        "required": False,
        "description": "Watch this one key. Give this or `prefix`, not both.",
        "schema": ref("schemas", "Key"),
    },
    "since": {
        "name": "since",
        "in": "query",
        "required": False,
        "description": (
            "Replay the changes after this seq of this node (from a listing's `seq` or an "
            "event's id) before the live ones; without it (and without Last-Event-ID), only "
            "changes from now on."
        ),
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
    },
    "lastEventId": {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "description": "What a reconnecting SSE client sends: as `since`, and it wins over it.",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
    },
    "ttl": {
        "name": "ttl",
        "in": "query",
        "required": False,
        "description": "The key expires this many seconds after the write, by this node's clock. "
        "A write without ttl clears an earlier one.",
        "schema": {"type": "integer", "minimum": 1, "maximum": 315360000},
    },
    "If-Match": {
        "name": "If-Match",
        "in": "header",
        "required": False,
        "description": 'Write only when the key is live at exactly this version ("VERSION", as '
        "ETag gives it; * for any version), checked and written in one step on this node.",
        "schema": {"type": "string", "pattern": "^[^,]*$"},
    },
    "If-None-Match": {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "description": "*: write only when the key is absent (never written, deleted or expired).",
        "schema": {"type": "string", "enum": ["*"]},
    },
}

RESPONSES: Doc = {
    "Gone": {
        "content": {"application/json": {"schema": ref("schemas", "Error")}},
        "description": "This node cannot replay from `since` exactly: it is older than the "
        "node's feed reaches back, or beyond its latest seq (another node's seq, or a wiped node). "
        "List again and watch from the listing's seq (gone).",
    },
    "UnsupportedEncoding": {
        "description": "A Content-Encoding other than gzip or deflate (unsupported_media_type).",
        "content": {"application/json": {"schema": ref("schemas", "Error")}},
    },
    "PreconditionFailed": {
        "description": "The condition did not hold on this node; nothing was written.",
        "content": {"application/json": {"schema": ref("schemas", "PreconditionFailed")}},
    },
}

PATHS: Doc = {
    "/v1/watch": {
        "get": {
            "tags": ["kv"],
            "operationId": "watch",
            "summary": "Changes of a key or a prefix as Server-Sent Events",
            "description": (
                "Each change to a matching key committed on this node (a client write or a "
                "replicated one), in commit order, is one event: `id: SEQ`, `event: put` or "
                '`event: delete`, and `data: {"key": K, "value": V-or-null, "version": '
                'VER, "seq": SEQ, "expires": ISO-8601-or-null}`. A key changed several '
                "times while the watch was behind comes once, at its latest state. A `: ping` "
                "comment goes out at least every --watch-ping seconds (15). Open until the "
                "client leaves or the node stops."
            ),
            "parameters": [
                ref("parameters", name) for name in ("watchPrefix", "watchKey", "since", "lastEventId")
            ],
            "responses": {
                "200": {
                    "description": "The stream of events.",
                    "content": {"text/event-stream": {"schema": ref("schemas", "WatchEvent")}},
                },
                "400": ref("responses", "BadRequest"),
                "410": ref("responses", "Gone"),
            },
        }
    },
    "/v1/txn": {
        "post": {
            "tags": ["kv"],
            "operationId": "transaction",
            "summary": "Conditions, then puts and deletes in one atomic commit",
            "description": "Every operation is applied on every node together: no node ever "
            "lists some of a transaction's writes without the others.",
            "parameters": [ref("parameters", "w"), ref("parameters", "timeout")],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("schemas", "TxnRequest")}},
            },
            "responses": {
                "200": {
                    "description": "All of `then` was written in one commit.",
                    "content": {"application/json": {"schema": ref("schemas", "TxnResult")}},
                },
                "400": ref("responses", "BadRequest"),
                "412": {
                    "description": "A condition did not hold; nothing was written.",
                    "content": {"application/json": {"schema": ref("schemas", "TxnConflict")}},
                },
                "413": ref("responses", "TooLarge"),
                "415": ref("responses", "UnsupportedEncoding"),
                "504": ref("responses", "Timeout"),
                "507": ref("responses", "Full"),
            },
        }
    },
}


def extend(doc: Doc) -> None:
    """Add the application API to the document `doc` (paths, components, key endpoints)."""
    components = doc["components"]
    components["schemas"].update(SCHEMAS)
    components["parameters"].update(PARAMETERS)
    components["responses"].update(RESPONSES)
    components["headers"]["Expires"] = {
        "description": "When the key expires (an HTTP date); absent when it does not.",
        "schema": {"type": "string", "example": "Fri, 15 Jan 2027 10:00:05 GMT"},
    }
    paths = doc["paths"]
    listing = paths["/v1/kv"]["get"]["responses"]
    failures = {status: listing[status] for status in ("401", "403", "503")}
    for path, method in (("/v1/txn", "post"), ("/v1/watch", "get")):
        paths[path] = PATHS[path]
        paths[path][method]["responses"].update(failures)
    key = paths["/v1/kv/{key}"]
    key["get"]["responses"]["200"]["headers"]["Expires"] = ref("headers", "Expires")
    key["put"]["parameters"] += [ref("parameters", n) for n in ("ttl", "If-Match", "If-None-Match")]
    key["delete"]["parameters"].append(ref("parameters", "If-Match"))
    for method in ("put", "delete"):
        key[method]["responses"]["412"] = ref("responses", "PreconditionFailed")
    key["put"]["responses"]["415"] = ref("responses", "UnsupportedEncoding")
    paths["/nodes/update"]["get"]["parameters"].append(ref("parameters", "ttl"))
    components["schemas"]["Item"]["properties"]["expires"] = ref("schemas", "Expires")
    components["schemas"]["Item"]["required"].append("expires")
