"""The web view in a real headless Chromium over stores filled by real catalog runs (root):
a loopback exchange traced by bpf/topology and bpf/tcp_connlat, a `burn` program profiled by
bpf/cpu_profile, and the agent running a program while the test makes its calls. Each page is
checked for its exact numbers, a non-blank screenshot, no console error and nothing fetched from
anywhere but the server; links keep the range and filters."""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

# importing these skips the module (with the reason) when not root or clang is missing
from tests.kernel.conftest import ROOT, Running
from tests.kernel.ui_fixtures import CLIENT_COMM, DOWN, SERVER_COMM, UP, Exchange, Profile, \
    burn_profile, topology_exchange, ui_server
from tests.ui.conftest import browser_errors, foreign_requests, open_page
from tests.ui.test_flamegraph_browser import distinct_colours

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store of built programs for the module, so each is compiled once."""
    return tmp_path_factory.mktemp("bpfdepot-home")


@pytest.fixture(scope="module")
def exchange(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Exchange, dict]]:
    """The loopback exchange with bpf/tcp_connlat running beside bpf/topology on the same store;
    yields it with the connect event of the exchange's client."""
    tmp = tmp_path_factory.mktemp("exchange")
    connlat = Running(home, str(ROOT / "bpf" / "tcp_connlat"), tmp / "connlat.jsonl",
                      extra=["--tsdb", str(tmp / "events.sqlite")])
    try:
        made = topology_exchange(home, tmp)
    finally:
        done = connlat.stop()
    assert done.rc == 0, done.stderr
    mine = [e for e in done.events if e.get("comm") == CLIENT_COMM and e.get("dport") == made.port]
    assert len(mine) == 1, done.events[-5:]
    yield made, mine[0]


@pytest.fixture(scope="module")
def profile(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Profile:
    return burn_profile(home, tmp_path_factory.mktemp("burn"))


def shot(driver, folder: Path, name: str) -> Path:
    """Save a screenshot and check it is a picture, not a blank page."""
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path))
    colours = distinct_colours(path.read_bytes())
    assert colours > 20, f"screenshot {path} has {colours} colours"
    return path


def clean(driver, base: str) -> None:
    """No console error and nothing fetched from the web."""
    assert browser_errors(driver) == []
    assert foreign_requests(driver, base) == []


def test_service_map_shows_the_client_server_edge_with_its_bytes(browser, built, exchange, artefacts) -> None:
    made, _ = exchange
    driver = browser
    with ui_server(made.db) as ui:
        open_page(driver, f"{ui.url}/map?from=-1h")
        rows = driver.execute_script("""return Array.from(document.querySelectorAll('table.edges tbody tr'))
            .map(tr => ({id: tr.dataset.edge, cells: Array.from(tr.cells).map(td => td.textContent),
                         bytes: tr.cells[3].dataset.bytes}))""")
        edge = [r for r in rows if r["cells"][:2] == [CLIENT_COMM, SERVER_COMM]]
        assert len(edge) == 1, rows
        edge = edge[0]
        assert edge["cells"][2] == f"127.0.0.1:{made.port}"
        assert int(edge["bytes"]) == UP + DOWN
        assert edge["cells"][3] == "8,000 B (7.8 KiB)"
        assert edge["cells"][4:7] == [f"{UP:,}", f"{DOWN:,}", "1"]
        shot(driver, artefacts, "servicemap")
        # the graph draws both processes and the edge's label (SVG text, so in the page); the
        # store also holds whatever else talked on the host meanwhile (the browser and its
        # driver), whose labels may cover these: the view filtered to the two shows them alone.
        # Read as the SVG's text, not as what WebDriver deems visible: the force layout can
        # still be moving a node across the chart's edge when the page is read
        open_page(driver, f"{ui.url}/map?from=-1h&comm={CLIENT_COMM}&comm={SERVER_COMM}")
        graph = driver.find_element("css selector", "#map-graph svg").get_attribute("textContent")
        assert CLIENT_COMM in graph and SERVER_COMM in graph and "7.8 KiB · 1 conn" in graph
        shot(driver, artefacts, "servicemap-filtered")
        open_page(driver, f"{ui.url}/map?from=-1h")

        # click through: the edge's detail, with the exchange's connect latency; the URL keeps it
        driver.find_element("css selector", f'tr[data-edge="{edge["id"]}"]').click()
        detail = wait_text(driver, "edge-detail", "in 1 connection")
        assert f"{CLIENT_COMM} → {SERVER_COMM} (127.0.0.1:{made.port})" in detail
        assert "8,000 B (7.8 KiB) in 1 connection" in detail
        assert re.search(r"connect: 1 · p50 [\d.]+ [µm]?s", detail), detail
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(driver.current_url).query)
        assert query["edge"] == [edge["id"]] and query["from"] == ["-1h"]
        shot(driver, artefacts, "servicemap-edge")
        clean(driver, ui.url)

        # Back: the view before the click, with no edge picked; Forward: the edge again
        picked = driver.current_url
        driver.back()
        wait_text(driver, "edge-detail", "Click an edge")
        assert "edge" not in urllib.parse.parse_qs(urllib.parse.urlsplit(driver.current_url).query)
        driver.forward()
        wait_text(driver, "edge-detail", "8,000 B (7.8 KiB) in 1 connection")
        # the link reproduces the view: the same URL opened afresh shows the same edge's detail
        open_page(driver, picked)
        assert "8,000 B (7.8 KiB) in 1 connection" in driver.find_element("id", "edge-detail").text
        clean(driver, ui.url)


def wait_text(driver, element_id: str, text: str, timeout: float = 20.0) -> str:
    """The text of ``element_id`` once it holds ``text``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    read = f"var e = document.getElementById('{element_id}'); return e ? e.innerText : null"
    try:
        WebDriverWait(driver, timeout).until(lambda d: text in (d.execute_script(read) or ""))
    except TimeoutException:
        raise AssertionError(f"#{element_id} never showed {text!r}; it shows {driver.execute_script(read)!r}; "
                             f"the page: {driver.find_element('id', 'page').text[:2000]}") from None
    return driver.execute_script(read)


def test_latency_page_shows_a_heatmap_of_the_exchange_connect(browser, built, exchange, artefacts) -> None:
    made, connect = exchange
    driver = browser
    with ui_server(made.db) as ui:
        text = open_page(driver, f"{ui.url}/latency?from=-1h&metric=connect&by=comm&comm={CLIENT_COMM}")
        groups = driver.find_elements("css selector", "section.group")
        assert [g.get_attribute("data-group") for g in groups] == [CLIENT_COMM], text
        assert "1 call ·" in groups[0].text
        heat = groups[0].find_element("css selector", ".chart.heat")
        assert heat.get_attribute("data-cells") == "1"   # one connect: one cell of the heatmap
        # that cell is drawn: the heatmap's SVG has a cell in the darkest colour (its only count)
        fills = driver.execute_script(
            "return Array.from(arguments[0].querySelectorAll('path')).map(p => p.getAttribute('fill'))", heat)
        assert "rgb(128,0,38)" in [f.replace(" ", "") for f in fills if f], fills
        # the latency the page states is the exchange's own, within the 19 % of quarter-octave buckets
        p50 = re.search(r"p50 ([\d.]+) (ns|µs|ms|s)\b", groups[0].text)
        scale = {"ns": 1, "µs": 1e3, "ms": 1e6, "s": 1e9}[p50.group(2)]
        assert float(p50.group(1)) * scale == pytest.approx(connect["delta_ns"], rel=0.2)
        shot(driver, artefacts, "latency")

        # the page's own controls go through the URL: grouping by none gives one panel of all
        from selenium.webdriver.support.ui import Select

        Select(driver.find_element("id", "by")).select_by_value("none")
        panel = wait_text(driver, "page", "All connect")
        assert "1 call ·" in panel
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(driver.current_url).query)
        assert query["by"] == ["none"] and query["comm"] == [CLIENT_COMM] and query["metric"] == ["connect"]
        clean(driver, ui.url)


def test_flame_graph_page_shows_burn_leaf_and_searches_and_zooms(browser, built, profile, artefacts) -> None:
    driver = browser
    with ui_server(profile.db) as ui:
        open_page(driver, f"{ui.url}/flame?from=-1h&comm=burn")
        flame = wait_text(driver, "flame", "burn_leaf")  # labels are drawn after a transition
        assert "burn_mid" in flame
        shot(driver, artefacts, "flamegraph")

        def frames() -> dict[str, dict]:
            return {f["name"]: f for f in driver.execute_script("""
                return Array.from(document.querySelectorAll('#flame g.frame')).map(g => ({
                  name: g.getAttribute('name'), width: +g.querySelector('rect').getAttribute('width'),
                  fill: g.querySelector('rect').getAttribute('fill')}))""")}

        before = frames()
        assert before["burn_leaf"]["width"] > 0
        search = driver.find_element("id", "search")
        search.send_keys("^burn_")
        wait_text(driver, "matched", "matched")
        assert {n for n, f in frames().items() if f["fill"].lower() == "#e600e6"} == {"burn_mid", "burn_leaf"}
        search.clear()
        search.send_keys(" ")  # an input event with an empty term clears the highlight
        assert all(f["fill"].lower() != "#e600e6" for f in frames().values())

        # click burn_mid: it takes the full width of `all`
        driver.find_element("css selector", '#flame g.frame[name="burn_mid"] rect').click()
        time.sleep(0.6)  # the zoom transition (150 ms)
        zoomed = frames()
        assert zoomed["burn_mid"]["width"] == pytest.approx(before["all"]["width"], rel=0.01)
        shot(driver, artefacts, "flamegraph-zoomed")
        driver.find_element("id", "reset").click()
        time.sleep(0.6)
        assert frames()["burn_mid"]["width"] == pytest.approx(before["burn_mid"]["width"], rel=0.01)
        clean(driver, ui.url)


def test_instances_page_shows_the_running_program_counting(browser, built, home: Path, tmp_path: Path,
                                                           artefacts) -> None:
    """The agent runs tests/kernel/bundles/agent_calls for a worker; the page, polling the agent,
    shows the channel's received count go 0 → 5 → 12 as the worker makes its calls."""
    from tests.kernel.monitor import Worker
    from tests.kernel.test_agent import CALLS, start_agent, stop_agent

    driver = browser
    agent = start_agent(home, tmp_path)
    worker = Worker()
    try:
        agent.ok("load", str(CALLS), "--name", "calls", "--set", f"target_tgid={worker.pid}")
        with ui_server(tmp_path / "no-store.sqlite", agent_socket=agent.socket) as ui:
            open_page(driver, f"{ui.url}/instances")
            card = wait_text(driver, "page", "calls")
            assert "running" in card and "channels" in card
            cell = 'td[data-count="calls/channels/agent_calls/events/received"]'
            assert driver.find_element("css selector", cell).text == "0"
            # every version of the cell the page draws, with its classes (a redraw replaces it)
            driver.execute_script("""
                window.seen = [];
                new MutationObserver(() => {
                  var td = document.querySelector(arguments[0]);
                  if (td) window.seen.push(td.textContent + ' ' + td.className);
                }).observe(document.getElementById('page'), {childList: true, subtree: true});""", cell)
            for made, total in ((5, "5"), (7, "12")):
                worker.do("getppid", made)
                wait_cell(driver, cell, total)
            # each new count was drawn flashing (class "changed"); nothing was lost
            seen = driver.execute_script("return window.seen")
            assert "5 n changed" in seen and "12 n changed" in seen, seen
            lost = 'td[data-count="calls/channels/agent_calls/events/lost"]'
            assert driver.find_element("css selector", lost).text == "0"
            shot(driver, artefacts, "instances")
            clean(driver, ui.url)
    finally:
        worker.proc.kill()
        stop_agent(agent)


def wait_cell(driver, css: str, text: str, timeout: float = 20.0) -> None:
    """Wait until the element at ``css`` (redrawn by each poll) reads ``text``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    read = f"var e = document.querySelector('{css}'); return e ? e.textContent : null"
    try:
        WebDriverWait(driver, timeout).until(lambda d: d.execute_script(read) == text)
    except TimeoutException:
        raise AssertionError(f"{css} never read {text!r}; it reads {driver.execute_script(read)!r}") from None


def test_bad_input_over_a_real_store_gets_a_clear_page(browser, built, exchange) -> None:
    """A range with no data says what the store holds; an unknown program lists those stored;
    a malformed parameter names itself — each on the page, never a stack trace."""
    made, _ = exchange
    driver = browser
    with ui_server(made.db) as ui:
        # a range that ends before the exchange: empty, with the store's own span named
        before = int(made.db.stat().st_ctime) - 3600
        text = open_page(driver, f"{ui.url}/map?from={before - 600}&to={before}")
        message = driver.find_element("css selector", "#page .message.empty").text
        assert message.startswith("No topology data in this range"), text
        assert "(the store holds topology" in message, message  # when it does have data
        text = open_page(driver, f"{ui.url}/latency?from={before - 600}&to={before}&metric=connect")
        assert "No connect latency in this range" in text, text

        # an unknown program: the server's 404, its words and its fix on the page
        status, body = ui.get_json("/api/flamegraph?program=no_such_program")
        assert status == 404
        open_page(driver, f"{ui.url}/flame?program=no_such_program")
        error = driver.find_element("css selector", "#page .message.error").text
        assert "(HTTP 404)" in error and "no_such_program" in error
        assert body["error"] in error and f"Fix: {body['fix']}" in error

        # a malformed parameter
        open_page(driver, f"{ui.url}/map?from=yesterday")
        error = driver.find_element("css selector", "#page .message.error").text
        assert "(HTTP 400)" in error and "from" in error and "yesterday" in error, error
        assert "Traceback" not in driver.page_source
        assert browser_errors(driver, allow=("/api/",)) == []


def test_drops_page_counts_the_udp_datagrams_sent_to_a_closed_port(browser, built, home: Path,
                                                                   tmp_path: Path, artefacts) -> None:
    """bpf/skb_drops into a store while the test sends 7 datagrams to a closed port of its own:
    the drops page by port shows that port with exactly 7, and by reason NO_SOCKET."""
    import socket

    from tests.kernel.conftest import wait_for

    db, out = tmp_path / "events.sqlite", tmp_path / "drops.jsonl"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free now: bound, then closed
    run = Running(home, str(ROOT / "bpf" / "skb_drops"), out, extra=["--tsdb", str(db)])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(7):
                s.sendto(b"bpfdepot", ("127.0.0.1", port))
        wait_for(out, lambda rs: any(r.get("port") == port and r.get("count") == 7 for r in rs),
                 f"7 drops on port {port}")
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    driver = browser
    with ui_server(db) as ui:
        open_page(driver, f"{ui.url}/drops?from=-1h&by=port")
        rows = {r.get_attribute("data-value"): r.text for r in
                driver.find_elements("css selector", "table.top tbody tr")}
        assert rows[str(port)] == f"{port} 7", rows
        assert driver.find_element("id", "drops-chart").text  # the chart's legend and axes are drawn
        shot(driver, artefacts, "drops")
        open_page(driver, f"{ui.url}/drops?from=-1h&by=reason")
        rows = {r.get_attribute("data-value"): r.text for r in
                driver.find_elements("css selector", "table.top tbody tr")}
        assert "SKB_DROP_REASON_NO_SOCKET" in rows, rows
        clean(driver, ui.url)
