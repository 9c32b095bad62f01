"""GET /ui: the dashboard, a page of static files packaged in shareddb/ui/ and served as they are.

The files are public (README, "Dashboard"): they hold no data. The page asks for a token when the
API answers 401 and sends it with every request it makes itself; the node never puts a token or a
value into the page. No build step and nothing from another origin: the Content-Security-Policy
allows scripts, styles and requests to this node only. docs/design.md, "Dashboard", says why the
page is built as it is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from shareddb.api.errors import ApiError
from shareddb.api.routing import Route
from shareddb.node import Node
from shareddb.tokens import Role

PATH = "/ui"
FILES_PREFIX = "/ui/"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The browser asks again each time (a 304 when nothing changed), so a node upgraded under an
    # open page serves its new files at the next load.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_files() -> dict[str, StaticFile]:
    """Every file of the dashboard, by name, read once: the whole page is a few tens of KiB."""
    files: dict[str, StaticFile] = {}
    for entry in resources.files("shareddb").joinpath("ui").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            files[entry.name] = StaticFile(body, TYPES[suffix], etag)
    return files


FILES = load_files()
INDEX = "index.html"


def serve(name: str, request: web.BaseRequest) -> web.Response:
    found = FILES.get(name)
    if found is None:
        raise ApiError(404, f"no such file of the dashboard: {name!r}")
    headers = {**SECURITY_HEADERS, "ETag": found.etag}
    if request.headers.get("If-None-Match") == found.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.body, headers={**headers, "Content-Type": found.content_type})


async def page(request: web.BaseRequest) -> web.Response:
    return serve(INDEX, request)


async def static_file(request: web.BaseRequest) -> web.Response:
    name = request.raw_path.partition("?")[0][len(FILES_PREFIX) :]
    return serve(name or INDEX, request)


def routes(node: Node) -> list[Route]:
    """The same for every node: the page reads the node through the API, like any client."""
    return [
        Route("GET", PATH, page, Role.PUBLIC),
        Route("GET", FILES_PREFIX + "*", static_file, Role.PUBLIC),
    ]
