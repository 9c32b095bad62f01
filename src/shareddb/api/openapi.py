"""The OpenAPI document of both HTTP APIs, served at /v1/openapi.json."""

from __future__ import annotations

from typing import Any

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "shareddb", "version": "1"},
    "paths": {},
}
