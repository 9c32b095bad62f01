"""The OpenAPI 3.0 document of the node's client APIs, served at GET /v1/openapi.json.

It describes the seed-compatible API (/nodes/...), the REST API (/v1/...) and /health as SPEC.md
defines them: the paths here, their components in openapi_components.py, the application API
(watch, conditions, TTL, transactions) in openapi_apps.py, and snapshots in openapi_ops.py. The
replication endpoints under /v1/peer/ are internal to a cluster and left out.
tests/api/test_openapi.py checks that every client route of the router is described, and nothing
else.
"""

from __future__ import annotations

from shareddb.api import openapi_ops
from shareddb.api.openapi_apps import extend
from shareddb.api.openapi_components import (
    ETAG,
    PARAMETERS,
    RESPONSES,
    SCHEMAS,
    SEED_FAILURES,
    V1_FAILURES,
    Doc,
    json_body,
    params,
    ref,
)

PATHS: Doc = {
    "/nodes/update": {
        "get": {
            "tags": ["seed"],
            "operationId": "seedUpdate",
            "summary": "Set a key to a value",
            "parameters": params("name", "value", "replicate", "w", "timeout"),
            "responses": {
                "200": json_body("SeedUpdated", "The value is stored."),
                "400": ref("responses", "SeedBadRequest"),
                "413": ref("responses", "SeedTooLarge"),
                "504": ref("responses", "SeedTimeout"),
                "507": ref("responses", "SeedFull"),
                **SEED_FAILURES,
            },
        }
    },
    "/nodes/get": {
        "get": {
            "tags": ["seed"],
            "operationId": "seedGet",
            "summary": "Read a key",
            "parameters": params("name"),
            "responses": {
                "200": json_body("SeedValue", "The key's value (an empty value is a value)."),
                "400": ref("responses", "SeedBadRequest"),
                "404": ref("responses", "SeedNotFound"),
                **SEED_FAILURES,
            },
        }
    },
    "/nodes/remove": {
        "get": {
            "tags": ["seed"],
            "operationId": "seedRemove",
            "summary": "Delete a key",
            "parameters": params("name", "replicate", "w", "timeout"),
            "responses": {
                "200": json_body("SeedRemoved", "The key is deleted."),
                "400": ref("responses", "SeedBadRequest"),
                "404": json_body("SeedError", "The key had no value: nothing was removed."),
                "504": ref("responses", "SeedTimeout"),
                "507": ref("responses", "SeedFull"),
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
                "200": json_body("SeedDump", "Every live key; {} when there is none."),
                **SEED_FAILURES,
            },
        }
    },
    "/v1/kv": {
        "get": {
            "tags": ["kv"],
            "operationId": "listKeys",
            "summary": "List keys by prefix, a page at a time",
            "parameters": params("prefix", "limit", "after"),
            "responses": {
                "200": json_body("Listing", "One page of live keys, sorted by key."),
                "400": ref("responses", "BadRequest"),
                **V1_FAILURES,
            },
        }
    },
    "/v1/kv/{key}": {
        "parameters": params("key"),
        "get": {
            "tags": ["kv"],
            "operationId": "getKey",
            "summary": "Read a key's value",
            "responses": {
                "200": {
                    "description": "The value as the body.",
                    "headers": ETAG,
                    "content": {"text/plain; charset=utf-8": {"schema": ref("schemas", "Value")}},
                },
                "400": ref("responses", "BadRequest"),
                "404": ref("responses", "NotFound"),
                **V1_FAILURES,
            },
        },
        "put": {
            "tags": ["kv"],
            "operationId": "putKey",
            "summary": "Set a key to the request body",
            "parameters": params("w", "timeout"),
            "requestBody": {
                # An empty value is a value: a PUT without a body (Content-Length: 0) stores "".
                "required": False,
                "description": "The value: UTF-8 text, at most --max-value-bytes; may be empty "
                "(no body at all stores the empty value).",
                "content": {"text/plain": {"schema": ref("schemas", "Value")}},
            },
            "responses": {
                "201": json_body(
                    "Written", "Created: the key had no value (absent or deleted).", headers=ETAG
                ),
                "200": json_body("Written", "Updated: the key had a value.", headers=ETAG),
                "400": ref("responses", "BadRequest"),
                "413": ref("responses", "TooLarge"),
                "504": ref("responses", "Timeout"),
                "507": ref("responses", "Full"),
                **V1_FAILURES,
            },
        },
        "delete": {
            "tags": ["kv"],
            "operationId": "deleteKey",
            "summary": "Delete a key",
            "parameters": params("w", "timeout"),
            "responses": {
                "204": {"description": "Deleted; ETag names the delete.", "headers": ETAG},
                "400": ref("responses", "BadRequest"),
                "404": ref("responses", "NotFound"),
                "504": ref("responses", "Timeout"),
                "507": ref("responses", "Full"),
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
            "responses": {"200": json_body("Health", "The node is up.")},
        }
    },
    "/v1/cluster": {
        "get": {
            "tags": ["cluster"],
            "operationId": "cluster",
            "summary": "This node and every other member it knows",
            "responses": {
                "200": json_body("Cluster", "The cluster as this node sees it."),
                **V1_FAILURES,
            },
        }
    },
    "/v1/cluster/leave": {
        "post": {
            "tags": ["cluster"],
            "operationId": "leave",
            "summary": "This node leaves the cluster",
            "description": "Its peers stop pulling from it and it stops pulling from them.",
            "responses": {"200": json_body("MemberLeft", "This node has left."), **V1_FAILURES},
        }
    },
    "/v1/cluster/members/{member}": {
        "parameters": params("member"),
        "delete": {
            "tags": ["cluster"],
            "operationId": "removeMember",
            "summary": "Mark another member as having left",
            "responses": {
                "200": json_body("MemberLeft", "The member is marked as left."),
                "404": ref("responses", "NotFound"),
                **V1_FAILURES,
            },
        },
    },
    "/v1/digest": {
        "get": {
            "tags": ["operations"],
            "operationId": "digest",
            "summary": "Live key count and a digest of every key and version",
            "parameters": params("buckets", "bucket"),
            "responses": {
                "200": {
                    "description": "The digest of this node's data, or one bucket of it.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    ref("schemas", "Digest"),
                                    ref("schemas", "DigestBucket"),
                                ]
                            }
                        }
                    },
                },
                "400": ref("responses", "BadRequest"),
                **V1_FAILURES,
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": ["operations"],
            "operationId": "metrics",
            "summary": "Metrics in the Prometheus text format",
            "responses": {
                "200": {
                    "description": "Request and commit latency, connections, keys, sequence, "
                    "clock-skew events, members' state, lag and last contact, watchers "
                    "(docs/operations.md, Metrics).",
                    "content": {
                        "text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "string"}}
                    },
                },
                **V1_FAILURES,
            },
        }
    },
    "/ui": {
        "get": {
            "tags": ["dashboard"],
            "operationId": "dashboard",
            "summary": "The dashboard: members, a key browser and a live tail of changes",
            "description": (
                "A page for a browser, served by the node with no outside resources. Its files "
                "are public; the page asks for a token when the API answers 401 and keeps it for "
                "the browser tab only."
            ),
            "security": [],
            "responses": {
                "200": {
                    "description": "The dashboard's page.",
                    "headers": {"ETag": {"schema": {"type": "string"}}},
                    "content": {"text/html; charset=utf-8": {"schema": {"type": "string"}}},
                },
                "304": {"description": "Not modified: the If-None-Match header names this page."},
            },
        }
    },
    "/ui/{file}": {
        "parameters": params("file"),
        "get": {
            "tags": ["dashboard"],
            "operationId": "dashboardFile",
            "summary": "A file of the dashboard (script, style sheet, icon)",
            "security": [],
            "responses": {
                "200": {
                    "description": "The file.",
                    "headers": {"ETag": {"schema": {"type": "string"}}},
                    "content": {
                        media: {"schema": {"type": "string"}}
                        for media in (
                            "text/javascript; charset=utf-8",
                            "text/css; charset=utf-8",
                            "text/html; charset=utf-8",
                            "image/svg+xml",
                        )
                    },
                },
                "304": {"description": "Not modified: the If-None-Match header names this file."},
                "404": json_body("Error", "The dashboard has no such file (not_found)."),
            },
        },
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
            "an Allow header; HEAD is accepted wherever GET is. With --token or --tokens, every "
            "endpoint except /health and the dashboard's files (/ui) needs `Authorization: Bearer "
            "<token>` of a role that allows it: read (every GET), write (read and every write), "
            "admin (write, leaving, removing members). Without a known token the answer is 401 "
            "on any path, before 404 or 405; with a token whose role is too low, 403."
        ),
    },
    "tags": [
        {"name": "seed", "description": "Seed-compatible API: GET with query parameters."},
        {"name": "kv", "description": "REST API of keys."},
        {"name": "cluster", "description": "The cluster as this node sees it."},
        {"name": "operations", "description": "Health, digest, metrics, this document."},
        {"name": "dashboard", "description": "The dashboard for a browser, at /ui."},
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
                "description": "Needed only when the node runs with --token or --tokens.",
            }
        },
    },
    "security": [{"bearerAuth": []}, {}],
}

extend(OPENAPI)  # conditional writes, TTL, transactions: api/openapi_apps.py
openapi_ops.extend(OPENAPI)  # backup and restore: api/openapi_ops.py
