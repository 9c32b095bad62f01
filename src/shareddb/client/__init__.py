"""The Python client of shareddb: `Client` (synchronous) and `AsyncClient` (asyncio), with the
whole v1 API, failover across node URLs, typed answers and typed exceptions.

    from shareddb.client import Client, PreconditionFailed

    with Client(["http://127.0.0.1:8080", "http://127.0.0.1:8081"]) as db:
        written = db.put("greeting", "hello")
        entry = db.get("greeting")          # Entry(key, value, version, expires) or None

calls.py holds every request and the reading of every answer (shared by both clients), watch.py
what a watch remembers across reconnects, errors.py the exceptions, model.py the dataclasses.
"""

from shareddb.client.aio import AsyncClient, AsyncWatch
from shareddb.client.errors import (
    BadRequest,
    ClientError,
    Failed,
    Forbidden,
    Gone,
    InvalidAnswer,
    NotFound,
    PreconditionFailed,
    Timeout,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from shareddb.client.model import (
    Condition,
    Delete,
    Entry,
    Event,
    IfAbsent,
    IfVersion,
    Operation,
    Page,
    Put,
    TxnResult,
    Written,
)
from shareddb.client.sync import DEFAULT_URL, Client, Watch

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "AsyncWatch",
    "BadRequest",
    "Client",
    "ClientError",
    "Condition",
    "Delete",
    "Entry",
    "Event",
    "Failed",
    "Forbidden",
    "Gone",
    "IfAbsent",
    "IfVersion",
    "InvalidAnswer",
    "NotFound",
    "Operation",
    "Page",
    "PreconditionFailed",
    "Put",
    "Timeout",
    "TooLarge",
    "TxnResult",
    "Unauthorized",
    "Unavailable",
    "Watch",
    "Written",
]
