"""Bad input in a real headless Chromium against a real `bpfdepot ui`: a missing store, a file
that is not a store and a malformed label filter each give a page that
names the object, the cause and the fix — never a stack trace; and the links between pages keep
the range and the label filters (the URL reproduces a view)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest

from tests.kernel.ui_fixtures import ui_server  # skips the module when not root (a real `bpfdepot ui`)
from tests.ui.conftest import browser_errors, foreign_requests, open_page

PAGES = ("/map", "/latency", "/drops", "/flame")


def api_failures_only(driver) -> None:
    """The only console errors are the browser's own notes of the API's error statuses (the
    page asked, got the error answer and shows it); no script error."""
    assert browser_errors(driver, allow=("/api/",)) == []


def shown_error(driver) -> str:
    alert = driver.find_element("css selector", "#page .message.error")
    assert "Traceback" not in driver.page_source and 'File "' not in driver.page_source
    return alert.text


def test_a_missing_store_says_which_file_and_how_to_fill_it(browser, built, tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite"
    with ui_server(db) as ui:
        for page in PAGES:
            open_page(browser, f"{ui.url}{page}")
            text = shown_error(browser)
            assert "(HTTP 503)" in text and f"no time-series store at {db}" in text, (page, text)
            assert f"Fix: run a program with the tsdb sink on, e.g. sudo bpfdepot run bpf/topology --tsdb {db}" in text
        api_failures_only(browser)
        assert foreign_requests(browser, ui.url) == []


def test_a_file_that_is_not_a_store_is_named_with_the_fix(browser, built, tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite"
    db.write_bytes(b"this is not an SQLite database\n" * 200)
    with ui_server(db) as ui:
        status, body = ui.get_json("/api/servicemap")
        assert status == 503
        for page in PAGES:
            open_page(browser, f"{ui.url}{page}")
            text = shown_error(browser)
            assert "(HTTP 503)" in text and body["error"] in text and str(db) in text, (page, text)
            assert f"Fix: {body['fix']}" in text
        api_failures_only(browser)


def test_a_malformed_label_filter_is_refused_in_place(browser, built, tmp_path: Path) -> None:
    with ui_server(tmp_path / "events.sqlite") as ui:
        open_page(browser, f"{ui.url}/drops?from=-1h")
        before = browser.current_url
        box = browser.find_element("id", "label")
        box.clear()
        box.send_keys("colour=red comm=curl")
        browser.find_element("css selector", "#filters button[type=submit]").click()
        error = browser.find_element("id", "filter-error").text
        assert error == ("not a label filter: colour=red "
                         "(write comm=VALUE, unit=VALUE, pod=VALUE, namespace=VALUE)")
        assert browser.current_url == before
        api_failures_only(browser)


def test_links_keep_the_range_and_the_label_filters(browser, built, tmp_path: Path) -> None:
    with ui_server(tmp_path / "events.sqlite") as ui:
        open_page(browser, f"{ui.url}/drops?from=-1h&comm=curl&comm=python3")
        assert browser.find_element("id", "label").get_attribute("value") == "comm=curl comm=python3"
        browser.find_element("link text", "Flame graphs").click()
        open_page_drawn(browser)
        url = urllib.parse.urlsplit(browser.current_url)
        assert url.path == "/flame"
        assert urllib.parse.parse_qs(url.query) == {"from": ["-1h"], "comm": ["curl", "python3"]}

        # a new range from the picker and a new filter from the box; Back returns to the old view
        from selenium.webdriver.support.ui import Select

        Select(browser.find_element("id", "range")).select_by_value("-6h")
        box = browser.find_element("id", "label")
        box.clear()
        box.send_keys("unit=shop.service")
        browser.find_element("css selector", "#filters button[type=submit]").click()
        open_page_drawn(browser)
        assert urllib.parse.parse_qs(urllib.parse.urlsplit(browser.current_url).query) == \
            {"from": ["-6h"], "unit": ["shop.service"]}
        browser.back()
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, 30).until(lambda d: d.find_element("id", "range").get_attribute("value") == "-1h")
        open_page_drawn(browser)
        assert urllib.parse.parse_qs(urllib.parse.urlsplit(browser.current_url).query) == \
            {"from": ["-1h"], "comm": ["curl", "python3"]}
        assert browser.find_element("id", "label").get_attribute("value") == "comm=curl comm=python3"
        api_failures_only(browser)


def open_page_drawn(driver, timeout: float = 30.0) -> None:
    """Wait for the page the browser is on now to finish drawing."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "return document.getElementById('page').dataset.state === 'ready'"))


def test_names_from_the_store_are_text_never_markup(browser, built, tmp_path: Path) -> None:
    """Process names are chosen by whoever runs the process (and unit or pod names by whoever
    names them): a comm like `<img onerror=...>` on the service map shows as those characters,
    in the table and in the graph's tooltip, and runs nothing."""
    import json
    import time

    from loader.sinks import Record
    from loader.sinks.tsdb import TsdbSink

    db = tmp_path / "events.sqlite"
    evil = "<img src=x onerror=window.pwned=1>"
    sink = TsdbSink(db, retention_s=None, max_bytes=None)
    now = time.time_ns()
    sink.write("topology.topology_edges", [Record(key=None, value=json.dumps(
        {"direction": "client", "pid": 100, "comm": evil, "cgroup": 7, "protocol": "TCP",
         "family": "AF_INET", "laddr": "127.0.0.1", "lport": 0, "raddr": "127.0.0.1",
         "rport": 8080, "bytes_tx": 4000, "bytes_rx": 5000, "conns": 1, "closed": 1,
         "ts_ns": now}).encode())])
    assert sink.close().failed == 0
    with ui_server(db) as ui:
        open_page(browser, f"{ui.url}/map?from=-1h")
        cells = browser.execute_script(
            "return Array.from(document.querySelectorAll('table.edges tbody td')).map(td => td.textContent)")
        assert evil in cells
        # hover every node of the graph so its tooltip is drawn from the name
        from selenium.webdriver.common.action_chains import ActionChains

        for node in browser.find_elements("css selector", "#page svg path, #page svg circle")[:40]:
            try:
                ActionChains(browser).move_to_element(node).perform()
            except Exception:  # noqa: BLE001 - a shape hidden under another: the next one
                continue
        assert browser.execute_script("return window.pwned === undefined")
        assert not browser.find_elements("css selector", "img[src='x']")
        assert browser_errors(browser) == []
