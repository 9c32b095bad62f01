"""GET /ui: the dashboard's files are served by the node, public, self-contained and cacheable.

What the page does in a browser is tested in tests/browser/test_dashboard.py.
"""

from __future__ import annotations

import re

from shareddb.api.ui import FILES
from tests.api.conftest import Api

SELF_CONTAINED = "script-src 'self'"


async def test_ui_serves_the_page_as_html(api: Api) -> None:
    reply = await api.get("/ui")
    assert reply.status == 200
    assert reply.content_type == "text/html; charset=utf-8"
    assert "<title>shareddb</title>" in reply.text
    assert SELF_CONTAINED in reply.headers["Content-Security-Policy"]
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert (await api.get("/ui/")).body == reply.body


async def test_every_file_the_page_names_is_served_from_this_node(api: Api) -> None:
    page = (await api.get("/ui")).text
    named = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert {"/ui/dashboard.js", "/ui/dashboard.css", "/ui/icon.svg"} <= set(named)
    for target in named:
        assert target.startswith("/ui/"), f"{target} is not served by the node"
        reply = await api.get(target)
        assert reply.status == 200, target
    assert (await api.get("/ui/dashboard.js")).content_type == "text/javascript; charset=utf-8"
    assert (await api.get("/ui/dashboard.css")).content_type == "text/css; charset=utf-8"
    assert (await api.get("/ui/icon.svg")).content_type == "image/svg+xml"


async def test_every_module_the_script_imports_is_served(api: Api) -> None:
    scripts = [name for name in FILES if name.endswith(".js")]
    imported = {
        name
        for script in scripts
        for name in re.findall(r'from "\./([\w.-]+)"', FILES[script].body.decode("utf-8"))
    }
    assert "session.js" in imported
    assert imported <= set(scripts)
    for name in imported:
        reply = await api.get(f"/ui/{name}")
        assert reply.status == 200, name
        assert reply.content_type == "text/javascript; charset=utf-8", name


async def test_nothing_is_loaded_from_another_origin(api: Api) -> None:
    for name, found in FILES.items():
        text = found.body.decode("utf-8")
        assert not re.search(r"https?://", text.replace("http://www.w3.org/2000/svg", "")), name


async def test_an_unknown_file_is_a_404_json_error(api: Api) -> None:
    for target in ["/ui/nothing.js", "/ui/../pyproject.toml", "/ui/%2e%2e/api/ui.py"]:
        reply = await api.get(target)
        assert reply.status == 404, target
        assert reply.json()["error"] == "not_found"


async def test_a_file_not_changed_since_is_a_304(api: Api) -> None:
    first = await api.get("/ui/dashboard.js")
    etag = first.headers["ETag"]
    again = await api.get("/ui/dashboard.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.body == b""
    other = await api.get("/ui/dashboard.js", headers={"If-None-Match": '"other"'})
    assert other.status == 200


async def test_the_files_need_no_token_but_the_data_does(secured_api: Api) -> None:
    for target in ["/ui", "/ui/dashboard.js", "/ui/dashboard.css"]:
        assert (await secured_api.get(target, auth=False)).status == 200, target
    assert (await secured_api.get("/v1/cluster", auth=False)).status == 401
