"""A real headless Chromium driven by Selenium, for pictures a person opens (flame graphs, the
web view of `bpfdepot ui`), and the helpers of the web view's tests (its built pages, waiting
for a page to draw, console errors, requests leaving the server, where screenshots go).

Skipped with the reason when Chromium, its driver or selenium is missing (Debian ``chromium``
and ``chromium-driver``, PyPI ``selenium``; scripts/setup --test installs them). The browser runs
with no network services of its own and a fresh profile, so a test sees only its file."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("headless Chromium is not installed: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the Debian driver by path: selenium's own driver manager would try to download one
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# -- the web view (`bpfdepot ui`): its built pages, waiting for a page, console and artefacts --

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "loader" / "ui" / "static"


@pytest.fixture
def built() -> Path:
    """The bundle scripts/build-ui made (skip with the fix when it is not there)."""
    if not (STATIC / "index.html").is_file():
        pytest.skip(f"the web view's pages are not built ({STATIC}/index.html): run scripts/build-ui")
    return STATIC


@pytest.fixture
def artefacts(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where a test keeps its screenshots: $BPFDEPOT_TEST_ARTEFACTS/<test> when set (CI keeps
    that folder), else the test's tmp dir."""
    base = os.environ.get("BPFDEPOT_TEST_ARTEFACTS")
    if not base:
        return tmp_path
    folder = Path(base) / request.node.name.replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(driver, url: str, timeout: float = 30.0) -> str:
    """Open ``url`` and wait until the page has drawn (``#page[data-state=ready]``); its text."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "var p = document.getElementById('page'); return p && p.dataset.state === 'ready'"))
    return driver.find_element("id", "page").text


def browser_errors(driver, allow: tuple[str, ...] = ()) -> list[dict]:
    """SEVERE console entries, less those whose message holds one of ``allow`` (a test that asks
    for a 404 on purpose allows that URL's 'Failed to load resource')."""
    return [e for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in allow)]


def foreign_requests(driver, base: str) -> list[str]:
    """Every resource the page fetched from anywhere but ``base`` (the page must fetch nothing
    from the web)."""
    names = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".concat(performance.getEntriesByType('navigation').map(e => e.name))")
    return [n for n in names if not n.startswith(base + "/") and not n.startswith("data:")]
