"""The dashboard (/ui) in a real headless Chromium, against real node processes.

One browser and one two-node cluster serve the whole module (starting a browser takes a second or
more); each test opens the page afresh. Every wait polls with a deadline and, when it expires,
fails with the nodes' logs. Without chromium and chromedriver the tests skip, except under CI=true,
where they fail: CI installs both (.ci/run).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import orjson
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.cluster.replication_helpers import http, key_url, put, read, wait_all_up
from tests.harness import NodeProcess, stop_all, wait_for
from tests.harness.browser import chromium_paths, console_errors, start_chromium

pytestmark = [pytest.mark.cluster, pytest.mark.browser]

T = TypeVar("T")
WAIT = 15.0  # seconds for anything the page should show; the cluster is polled every 1.5 s
POLL = 0.05
TOKEN = "dashboard-admin-token"
# What Chromium logs for every request answered 401 or 403: expected where the page asks for a
# token or is refused a write, and an error anywhere else.
REFUSED = ("status of 401", "status of 403")


@functools.cache
def roles_supported() -> bool:
    """Whether `serve` takes `--tokens FILE` (read/write/admin roles)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "shareddb", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    ).stdout
    return "--tokens" in help_text


@pytest.fixture(scope="module")
def browser() -> Iterator[Chrome]:
    if chromium_paths() is None:
        why = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    """Two nodes that pull from each other."""
    root = tmp_path_factory.mktemp("dashboard")
    nodes = [NodeProcess(root / "node1", "node1")]
    try:
        nodes[0].start()
        nodes.append(NodeProcess(root / "node2", "node2", "--peers", nodes[0].url))
        nodes[1].start()
        wait_all_up(nodes)
        yield nodes
    finally:
        stop_all(nodes)


def until(page: Chrome, check: Callable[[], T | None], what: str, nodes: Sequence[NodeProcess]) -> T:
    """Poll the page until `check` gives something; on timeout fail with the nodes' logs and what
    the browser logged. An element replaced while it was read counts as "not yet"."""

    def attempt() -> T | None:
        try:
            return check()
        except StaleElementReferenceException:
            return None

    try:
        return wait_for(attempt, WAIT, what, nodes, POLL)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- browser console ---\n{console_errors(page)}") from None


def open_dashboard(page: Chrome, node: NodeProcess) -> None:
    page.get(node.url + "/ui")
    # Gone after a reload: the tests that say "without a reload" check it is still there.
    page.execute_script("window.sameDocument = true;")


def same_document(page: Chrome) -> bool:
    return page.execute_script("return window.sameDocument === true;") is True


def by_id(page: Chrome, element_id: str) -> WebElement:
    return page.find_element(By.ID, element_id)


def search(page: Chrome, prefix: str) -> None:
    """List the keys under `prefix` (the tests share one cluster: other tests' keys are there)."""
    by_id(page, "prefix").send_keys(prefix)
    by_id(page, "search").submit()


def rows(page: Chrome, selector: str) -> list[WebElement]:
    return page.find_elements(By.CSS_SELECTOR, selector)


def member_states(page: Chrome) -> dict[str, str]:
    return {
        str(row.get_attribute("data-id")): str(row.get_attribute("data-state"))
        for row in rows(page, "#members tbody tr")
    }


def key_row(page: Chrome, key: str) -> WebElement | None:
    for row in rows(page, "#keys tbody tr"):
        if row.get_attribute("data-key") == key:
            return row
    return None


def row_value(page: Chrome, key: str) -> str | None:
    row = key_row(page, key)
    return None if row is None else row.find_element(By.CSS_SELECTOR, "td.value").text


def tail_keys(page: Chrome) -> list[tuple[str, str]]:
    """(op, key) of every change in the live tail, newest first."""
    return [
        (str(item.get_attribute("data-op")), str(item.get_attribute("data-key")))
        for item in rows(page, "#tail li")
    ]


def stream_is_live(page: Chrome) -> bool:
    return by_id(page, "stream-state").get_attribute("data-state") == "live"


def token_dialog_open(page: Chrome) -> bool:
    return by_id(page, "token-dialog").get_attribute("open") is not None


def give_token(page: Chrome, token: str) -> None:
    field = by_id(page, "token-input")
    field.clear()
    field.send_keys(token)
    by_id(page, "token-submit").click()


def session_storage(page: Chrome) -> dict[str, Any]:
    found: dict[str, Any] = page.execute_script(
        "return {session: {...sessionStorage}, local: {...localStorage}, cookies: document.cookie};"
    )
    return found


def read_value(node: NodeProcess, key: str) -> str | None:
    found = read(node, key)
    return None if found is None else found[0]


def editor_says(page: Chrome, text: str) -> bool:
    return text.lower() in by_id(page, "editor-message").text.lower()


def edit_value(page: Chrome, nodes: Sequence[NodeProcess], key: str, value: str) -> None:
    """Open `key` in the editor from the key browser, type `value` over its value and save."""

    def open_in_editor() -> bool:
        row = key_row(page, key)
        if row is None:
            return False
        row.click()  # a row replaced meanwhile is stale: `until` tries again
        return by_id(page, "edit-key").get_attribute("value") == key

    until(page, open_in_editor, f"{key} open in the editor", nodes)
    area = by_id(page, "edit-value")
    area.clear()
    area.send_keys(value)
    by_id(page, "save-key").click()


def test_page_loads_without_console_errors_and_shows_both_members(
    browser: Chrome, cluster: list[NodeProcess]
) -> None:
    node1, node2 = cluster
    open_dashboard(browser, node1)
    assert browser.title.startswith("shareddb")
    both_up = {"node1": "up", "node2": "up"}
    until(browser, lambda: member_states(browser) == both_up, "both members up", cluster)
    text = by_id(browser, "members").text
    assert node2.url in text
    assert "this node" in text
    until(browser, lambda: stream_is_live(browser), "the live tail to connect", cluster)
    assert not token_dialog_open(browser), "a node without a token asks for none"
    until(browser, lambda: "live key" in by_id(browser, "key-count").text, "the key count", cluster)
    assert console_errors(browser) == []


def test_a_key_written_through_the_api_appears_live_without_a_reload(
    browser: Chrome, cluster: list[NodeProcess]
) -> None:
    node1, node2 = cluster
    assert put(node1, "colors/grass", "green").status == 201
    open_dashboard(browser, node1)
    search(browser, "colors/")
    until(browser, lambda: row_value(browser, "colors/grass") == "green", "the listing", cluster)
    until(browser, lambda: stream_is_live(browser), "the live tail to connect", cluster)

    # Written on the other node: it reaches this one by replication, then the page by its watch.
    assert put(node2, "colors/sky", "blue").status == 201
    assert put(node2, "colors/grass", "lime").status == 200
    until(
        browser,
        lambda: {("put", "colors/sky"), ("put", "colors/grass")} <= set(tail_keys(browser)),
        "both writes in the live tail",
        cluster,
    )
    until(browser, lambda: row_value(browser, "colors/sky") == "blue", "the new key listed", cluster)
    until(browser, lambda: row_value(browser, "colors/grass") == "lime", "the new value", cluster)

    assert http("DELETE", key_url(node2, "colors/grass")).status == 204
    until(browser, lambda: ("delete", "colors/grass") in tail_keys(browser), "the delete", cluster)
    until(browser, lambda: key_row(browser, "colors/grass") is None, "the row to go", cluster)
    assert same_document(browser), "the page was reloaded"
    assert console_errors(browser) == []


def test_prefix_search_and_paging_go_through_every_key(
    browser: Chrome, cluster: list[NodeProcess]
) -> None:
    node1, _ = cluster
    keys = [f"pages/{i:03d}" for i in range(73)]
    then = [{"op": "put", "key": key, "value": f"v{i}"} for i, key in enumerate(keys)]
    body = orjson.dumps({"then": then})
    assert http("POST", node1.url + "/v1/txn", body).status == 200
    open_dashboard(browser, node1)
    search(browser, "pages/")

    def listed() -> list[str]:
        return [str(row.get_attribute("data-key")) for row in rows(browser, "#keys tbody tr")]

    def page_starting_after(previous: list[str]) -> list[str] | None:
        found = listed()
        return found if found and found != previous and found[0].startswith("pages/") else None

    first = until(browser, lambda: page_starting_after([]), "page 1", cluster)
    assert first[0] == keys[0]
    assert by_id(browser, "prev-page").get_attribute("disabled") is not None
    by_id(browser, "next-page").click()
    second = until(browser, lambda: page_starting_after(first), "page 2", cluster)
    assert first + second == keys, "two pages hold every key under the prefix, in order, once"
    assert by_id(browser, "next-page").get_attribute("disabled") is not None
    by_id(browser, "prev-page").click()
    until(browser, lambda: listed() == first, "page 1 again", cluster)
    assert console_errors(browser) == []


def test_an_edit_made_in_the_page_is_readable_through_the_api(
    browser: Chrome, cluster: list[NodeProcess]
) -> None:
    node1, node2 = cluster
    assert put(node1, "config/mode", "fast").status == 201
    open_dashboard(browser, node1)
    search(browser, "config/")
    edit_value(browser, cluster, "config/mode", "careful & slow = 100%")
    until(browser, lambda: editor_says(browser, "Saved"), "the page to say it saved", cluster)
    until(
        browser,
        lambda: read_value(node2, "config/mode") == "careful & slow = 100%",
        "the edit on the other node",
        cluster,
    )

    # A new key, then deleted from the page.
    by_id(browser, "new-key").click()
    key_field = by_id(browser, "edit-key")
    key_field.clear()
    key_field.send_keys("config/ñew key")
    by_id(browser, "edit-value").send_keys("made in the page")
    by_id(browser, "save-key").click()
    until(browser, lambda: read(node1, "config/ñew key") is not None, "the new key", cluster)
    assert read_value(node1, "config/ñew key") == "made in the page"
    until(browser, lambda: key_row(browser, "config/ñew key"), "the new key listed", cluster)
    by_id(browser, "delete-key").click()  # asks to confirm
    assert read(node1, "config/ñew key") is not None
    by_id(browser, "delete-key").click()
    until(
        browser, lambda: read(node2, "config/ñew key") is None, "the delete on the other node", cluster
    )
    assert same_document(browser)
    assert console_errors(browser) == []


def test_a_save_over_a_change_made_meanwhile_writes_only_when_saved_again(
    browser: Chrome, cluster: list[NodeProcess]
) -> None:
    node1, node2 = cluster
    assert put(node1, "stock/apples", "10").status == 201
    open_dashboard(browser, node1)
    search(browser, "stock/")
    until(browser, lambda: stream_is_live(browser), "the live tail to connect", cluster)
    edit_value(browser, cluster, "stock/apples", "9")  # saved: the page's own write
    until(browser, lambda: read_value(node1, "stock/apples") == "9", "the first save", cluster)

    area = by_id(browser, "edit-value")
    area.clear()
    area.send_keys("8")  # typed, not saved yet, while someone else writes
    assert put(node2, "stock/apples", "20").status == 200
    until(browser, lambda: editor_says(browser, "changed on the node since"), "the warning", cluster)
    by_id(browser, "save-key").click()
    until(browser, lambda: editor_says(browser, "Not saved"), "the refusal", cluster)
    assert read_value(node1, "stock/apples") == "20", "the other write was kept"
    by_id(browser, "save-key").click()
    until(browser, lambda: editor_says(browser, "Saved"), "the second save", cluster)
    until(browser, lambda: read_value(node2, "stock/apples") == "8", "the overwrite everywhere", cluster)
    assert console_errors(browser, allowed=("status of 412",)) == []


@pytest.fixture(scope="module")
def secured_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path_factory.mktemp("secured") / "locked", "locked", "--token", TOKEN)
    try:
        yield node.start()
    finally:
        node.cleanup()


def test_with_a_token_the_page_asks_for_it_and_keeps_it_for_the_session(
    browser: Chrome, secured_node: NodeProcess
) -> None:
    nodes = [secured_node]
    open_dashboard(browser, secured_node)
    until(browser, lambda: token_dialog_open(browser), "the page to ask for a token", nodes)
    assert member_states(browser) == {}, "nothing is shown without the token"

    give_token(browser, "not-the-token")
    until(browser, lambda: token_dialog_open(browser), "the page to ask again", nodes)
    until(
        browser,
        lambda: "did not accept" in by_id(browser, "token-reason").text,
        "the page to say the token was refused",
        nodes,
    )

    give_token(browser, TOKEN)
    until(browser, lambda: member_states(browser) == {"locked": "up"}, "the members", nodes)
    until(browser, lambda: stream_is_live(browser), "the live tail to connect", nodes)
    assert not token_dialog_open(browser)
    stored = session_storage(browser)
    assert TOKEN in stored["session"].values()
    assert TOKEN not in orjson.dumps(stored["local"]).decode()
    assert TOKEN not in stored["cookies"]

    # A write through the API shows up in the tail, which the page reads with the token too.
    reply = http(
        "PUT", key_url(secured_node, "locked/door"), b"shut", {"Authorization": f"Bearer {TOKEN}"}
    )
    assert reply.status == 201
    until(browser, lambda: ("put", "locked/door") in tail_keys(browser), "the write in the tail", nodes)

    # The token is kept for the session: a reload does not ask again.
    browser.refresh()
    until(
        browser, lambda: member_states(browser) == {"locked": "up"}, "the members after a reload", nodes
    )
    assert not token_dialog_open(browser)
    assert console_errors(browser, allowed=REFUSED) == []


@pytest.fixture(scope="module")
def role_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    root = tmp_path_factory.mktemp("roles")
    tokens = root / "tokens"
    tokens.write_text("# the dashboard's roles test\nread R1\nwrite W1\n")
    node = NodeProcess(root / "roles", "roles", "--tokens", str(tokens))
    try:
        yield node.start()
    finally:
        node.cleanup()


@pytest.mark.skipif(not roles_supported(), reason="this build of serve has no --tokens (roles)")
def test_a_read_token_cannot_edit(browser: Chrome, role_node: NodeProcess) -> None:
    nodes = [role_node]
    writer = {"Authorization": "Bearer W1"}
    assert http("PUT", key_url(role_node, "plans/ann"), b"free", writer).status == 201
    open_dashboard(browser, role_node)
    until(browser, lambda: token_dialog_open(browser), "the page to ask for a token", nodes)
    give_token(browser, "R1")
    edit_value(browser, nodes, "plans/ann", "pro")
    until(
        browser,
        lambda: editor_says(browser, "this token cannot write"),
        "the page to say the token cannot write",
        nodes,
    )
    assert not by_id(browser, "save-key").is_displayed(), "edit controls are hidden after a 403"
    assert not by_id(browser, "delete-key").is_displayed()
    reply = http("GET", key_url(role_node, "plans/ann"), headers=writer)
    assert (reply.status, reply.body) == (200, b"free"), "nothing was written"

    # With a write token, the same edit goes through.
    by_id(browser, "forget-token").click()
    until(browser, lambda: token_dialog_open(browser), "the page to ask again", nodes)
    give_token(browser, "W1")
    edit_value(browser, nodes, "plans/ann", "pro")
    until(
        browser,
        lambda: http("GET", key_url(role_node, "plans/ann"), headers=writer).body == b"pro",
        "the edit with a write token",
        nodes,
    )
    assert console_errors(browser, allowed=REFUSED) == []


def test_the_page_fits_a_phone_wide_window(browser: Chrome, cluster: list[NodeProcess]) -> None:
    """The layout stacks its columns on a narrow window rather than overflow it sideways."""
    node1, _ = cluster
    size = browser.get_window_size()
    try:
        browser.set_window_size(420, 900)
        open_dashboard(browser, node1)
        until(browser, lambda: len(member_states(browser)) == 2, "the members", cluster)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;"
        )
        assert overflow <= 0
    finally:
        browser.set_window_size(size["width"], size["height"])
    assert console_errors(browser) == []
