"""The OpenAPI description of the operations API beyond the key APIs: GET and POST /v1/snapshot
(backup and restore). Added to the document of openapi.py by `extend`."""

from __future__ import annotations

from shareddb.api.openapi_components import V1_FAILURES, Doc, json_body, ref
from shareddb.record import Record
from shareddb.snapshot import MEDIA_TYPE, Header, Writer


def _example() -> str:
    """A whole snapshot of one record, as a node would stream it (a client may send it back)."""
    writer = Writer(Header(node="node1", seq=2, count=1, taken=1_800_000_005_000))
    record = Record("greeting", "hello", "01a21645261f0000-node1~3f9a1c2e7b40")
    return (writer.header() + writer.records([record]) + writer.trailer()).decode("utf-8")


SNAPSHOT_BODY: Doc = {
    "type": "string",
    "description": (
        "Newline-delimited JSON. First line, the header: "
        '{"format": "shareddb-snapshot", "version": 1, "node": ID, "seq": S, "count": N, '
        '"taken": ISO-8601}. Then N records, one a line: {"key": K, "value": V-or-null, '
        '"version": VER, "expires": ISO-8601-or-null} (a null value is a tombstone). Last, the '
        'trailer: {"end": true, "count": N, "sha256": HEX}, the SHA-256 of every byte before it.'
    ),
    "example": _example(),
}

SCHEMAS: Doc = {
    "SnapshotApplied": {
        "type": "object",
        "required": ["applied", "skipped"],
        "properties": {
            "applied": {
                "type": "integer",
                "minimum": 0,
                "description": "Records that won the merge and were written (they replicate).",
            },
            "skipped": {
                "type": "integer",
                "minimum": 0,
                "description": "Records kept as they were: this node held the same or a newer version.",
            },
        },
        "additionalProperties": False,
    },
}

PATHS: Doc = {
    "/v1/snapshot": {
        "get": {
            "tags": ["operations"],
            "operationId": "getSnapshot",
            "summary": "This node's data at one point in time (a backup)",
            "description": (
                "Every key with its value or tombstone, version and expiry, as of one commit, "
                "streamed in bounded memory. A stream that breaks off ends without its trailer, "
                "so a reader tells it from a whole one. Needs an admin token when the node has "
                "roles."
            ),
            "responses": {
                "200": {
                    "description": "The snapshot.",
                    "content": {MEDIA_TYPE: {"schema": SNAPSHOT_BODY}},
                },
                **V1_FAILURES,
            },
        },
        "post": {
            "tags": ["operations"],
            "operationId": "restoreSnapshot",
            "summary": "Merge a snapshot into this node (a restore)",
            "description": (
                "The body is checked whole before anything is applied: a body that is not a "
                "whole snapshot (garbage, cut short, a checksum that does not match) is 400 and "
                "changes nothing. Then each record is merged by the merge rule (a newer version "
                "here is kept) and replicates as usual. Needs an admin token when the node has "
                "roles."
            ),
            "requestBody": {
                "required": True,
                "content": {MEDIA_TYPE: {"schema": SNAPSHOT_BODY}},
            },
            "responses": {
                "200": json_body("SnapshotApplied", "The snapshot was merged."),
                "400": ref("responses", "BadRequest"),
                "413": ref("responses", "TooLarge"),
                "415": ref("responses", "UnsupportedEncoding"),
                "507": ref("responses", "Full"),
                **V1_FAILURES,
            },
        },
    },
}


def extend(doc: Doc) -> None:
    doc["components"]["schemas"].update(SCHEMAS)
    doc["paths"].update(PATHS)
