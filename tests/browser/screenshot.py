"""The README's picture of the dashboard: `make screenshot` (python -m tests.browser.screenshot FILE).

Starts a two-node cluster with the harness, writes a small data set, opens /ui in a headless
Chromium, makes a few changes on the other node so the live tail has something to show, opens one
key in the editor and saves the window as a PNG.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import orjson
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from tests.cluster.replication_helpers import delete, http, put, wait_all_up
from tests.harness import NodeProcess, stop_all, wait_for
from tests.harness.browser import console_errors, start_chromium

WINDOW = (1400, 900)
DATA = {
    "config/feature-flags": '{"new-search": true, "beta-editor": false}',
    "config/max-upload-mb": "25",
    "config/region": "eu-west",
    "users/ann": '{"name": "Ann", "plan": "pro", "since": "2024-03-02"}',
    "users/bob": '{"name": "Bob", "plan": "free"}',
    "users/chen": '{"name": "Chen", "plan": "team"}',
    "queue/jobs/8812": "resize images/2026/12/harbour.jpg",
}
EXPIRING = {"sessions/4f1c9a": "ann", "sessions/9b27de": "chen"}
LATER = [("users/dana", '{"name": "Dana", "plan": "pro"}'), ("config/region", "eu-central")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="where to write the PNG")
    output: Path = parser.parse_args().output
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nodes = [NodeProcess(root / "node1", "node1")]
        driver = None
        try:
            nodes[0].start()
            nodes.append(NodeProcess(root / "node2", "node2", "--peers", nodes[0].url).start())
            wait_all_up(nodes)
            node1, node2 = nodes
            then = [{"op": "put", "key": key, "value": value} for key, value in DATA.items()]
            assert http("POST", node1.url + "/v1/txn", orjson.dumps({"then": then})).status == 200
            for key, value in EXPIRING.items():
                assert put(node1, key, value, "ttl=3600").status == 201
            driver = start_chromium(*WINDOW)
            driver.get(node1.url + "/ui")

            def live() -> bool:
                state = driver.find_element(By.ID, "stream-state").get_attribute("data-state")
                return state == "live"

            wait_for(live, 15, "the live tail", nodes)
            for key, value in LATER:
                put(node2, key, value)
            delete(node2, "queue/jobs/8812")
            wait_for(
                lambda: len(driver.find_elements(By.CSS_SELECTOR, "#tail li")) == len(LATER) + 1,
                15,
                "the changes in the tail",
                nodes,
            )

            def open_ann() -> bool:  # the table is replaced while the changes come in
                try:
                    driver.find_element(By.CSS_SELECTOR, 'tr[data-key="users/ann"]').click()
                except StaleElementReferenceException:
                    return False
                return driver.find_element(By.ID, "edit-key").get_attribute("value") == "users/ann"

            wait_for(
                lambda: driver.find_elements(By.CSS_SELECTOR, 'tr[data-key="users/dana"]'),
                15,
                "the new key listed",
                nodes,
            )
            wait_for(open_ann, 15, "a key open in the editor", nodes)
            # The pointer off the rows (no hover), and the window as tall as the page.
            ActionChains(driver).move_to_element(driver.find_element(By.ID, "this-node")).perform()
            height = driver.execute_script("return document.documentElement.scrollHeight;")
            metrics = {
                "width": WINDOW[0],
                "height": int(height),
                "deviceScaleFactor": 1,
                "mobile": False,
            }
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            # Let the members' last contact tick and the rows' highlight fade.
            wait_for(
                lambda: (
                    not driver.find_elements(By.CSS_SELECTOR, ".flash, .fresh")
                    or driver.execute_script("return document.getAnimations().length === 0;")
                ),
                15,
                "the highlights to fade",
                nodes,
                interval=0.2,
            )
            output.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(output))
            errors = console_errors(driver)
            assert not errors, errors
            print(f"wrote {output}")
        finally:
            if driver is not None:
                driver.quit()
            stop_all(nodes)


if __name__ == "__main__":
    main()
