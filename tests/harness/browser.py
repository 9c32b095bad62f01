"""A real headless Chromium driven through Selenium: Debian's `chromium` and `chromium-driver`.

Nothing is downloaded: the browser and its driver are the system's (`.ci/run` installs them), named
by path, so Selenium never runs its manager to look for (or fetch) one of its own. Imported on its
own, not through `tests.harness`, so that only the tests that open a browser import Selenium.
"""

from __future__ import annotations

import shutil

from selenium import webdriver
from selenium.webdriver import Chrome
from selenium.webdriver.chrome.service import Service

BROWSER_NAMES = ("chromium", "chromium-browser")
DRIVER_NAME = "chromedriver"
WINDOW = (1400, 900)
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # tests and CI run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--mute-audio",
    "--lang=en-US",
)


def chromium_paths() -> tuple[str, str] | None:
    """(browser, driver) when both are installed."""
    browser = next((found for name in BROWSER_NAMES if (found := shutil.which(name))), None)
    driver = shutil.which(DRIVER_NAME)
    return (browser, driver) if browser and driver else None


def start_chromium(width: int = WINDOW[0], height: int = WINDOW[1]) -> Chrome:
    """A headless Chromium whose console messages `console_errors` can read."""
    paths = chromium_paths()
    if paths is None:
        raise RuntimeError(
            "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(paths[1]))
    driver.set_page_load_timeout(30)
    return driver


def console_errors(driver: Chrome, *, allowed: tuple[str, ...] = ()) -> list[str]:
    """The page's console errors since the last call (uncaught exceptions, console.error, failed
    loads), less those containing one of `allowed`."""
    entries = driver.get_log("browser")  # type: ignore[no-untyped-call]
    messages = [str(entry["message"]) for entry in entries if entry["level"] == "SEVERE"]
    return [m for m in messages if not any(text in m for text in allowed)]
