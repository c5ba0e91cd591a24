"""The web view's pages in headless Chromium: from navigation to the page's data drawn (the
`bpfdepot:ready:PAGE` User Timing mark main.js sets), against the baseline of the same page's API
answers alone (their Resource Timing, fetched by that very page load). The ratio is what the
browser side adds over the data: loading the bundle, parsing the answers, drawing the charts.

    python bench/bench_ui_pages.py                    # a store of 1M records (bench_ui.py's, cached)
    python bench/bench_ui_pages.py --records 10000000 --reps 9

Needs Debian chromium + chromium-driver, selenium, and the built pages (scripts/build-ui).
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import ROOT, Row, main, median, paired

from bench_ui import FOLDER, SPAN_S, filled

STATIC = ROOT / "loader" / "ui" / "static"
READY_MS = 1000.0  # a page drawn within a second of asking for it, on a warm cache

TIMINGS = """
var page = arguments[0];
var ready = performance.getEntriesByName('bpfdepot:ready:' + page);
var api = performance.getEntriesByType('resource').filter(e => e.name.indexOf('/api/') >= 0);
return {ready: ready.length ? ready[ready.length - 1].startTime : null,
        api: api.reduce((sum, e) => sum + (e.responseEnd - e.startTime), 0), calls: api.length};
"""


def _browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)


def _ready(driver, url: str, page: str, timeout: float = 120.0) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(TIMINGS, page)["ready"] is not None)
    return driver.execute_script(TIMINGS, page)


def measure(args: argparse.Namespace) -> list[Row]:
    if not (STATIC / "index.html").is_file():
        sys.exit("bench/bench_ui_pages: the pages are not built: run scripts/build-ui")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        sys.exit("bench/bench_ui_pages: needs chromium and chromium-driver (apt-get install chromium chromium-driver)")
    db, fill_s, t0 = filled(args.records)
    print(f"store: {db}; " + (f"filled in {fill_s:.0f} s" if fill_s else "cached (fill skipped)"), flush=True)
    names = re.findall(r'/static/(app\.[0-9a-f]+\.(?:js|css))', (STATIC / "index.html").read_text())
    weight = sum(len(gzip.compress((STATIC / n).read_bytes(), 9)) for n in names)
    rows = [Row(metric="page weight (JS + CSS, gzip)", value=f"{weight / 1024:.0f} KB", goal="≤ 500 KB",
                met=weight <= 500 * 1024)]
    cache = FOLDER / "bench-pages.ui-cache"
    for old in FOLDER.glob(cache.name + "*"):
        old.unlink()
    ui = subprocess.Popen([sys.executable, "-m", "builder.cli", "ui", "--listen", "127.0.0.1:0", "--db", str(db),
                           "--cache", str(cache), "--agent-socket", str(FOLDER / "no-agent.sock")],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ui.stdout.readline()
    if "serving http://" not in line:
        ui.kill()
        sys.exit(f"bench/bench_ui_pages: bpfdepot ui did not start: {line}{ui.stderr.read()}")
    base = line.split("serving ")[1].split("/ ")[0].rstrip("/")
    hour = f"from={t0}&to={t0 + SPAN_S}"
    pages = [("service map", "/map"), ("latency connect by comm", "/latency", "metric=connect&by=comm"),
             ("latency http", "/latency", "metric=http"), ("drops", "/drops"), ("flame graph", "/flame")]
    with tempfile.TemporaryDirectory(prefix="bench-ui-pages-") as profile:
        driver = _browser(Path(profile))
        try:
            # the first visit waits for the cache's first build (minutes at 10M rows); not timed
            _ready(driver, f"{base}/map?{hour}", "/map", timeout=1800)
            for label, path, *extra in pages:
                url = f"{base}{path}?{hour}" + (f"&{extra[0]}" if extra else "")
                ours, api = [], []
                for _ in range(args.reps):
                    got = _ready(driver, url, path)
                    ours.append(got["ready"])
                    api.append(got["api"])
                rows.append(Row(metric=f"{label}: navigation → drawn", value=f"{median(ours):.0f} ms",
                                baseline=f"{median(api):.0f} ms its API answers", ratio=paired(ours, api),
                                goal=f"≤ {READY_MS:.0f} ms", met=median(ours) <= READY_MS))
        finally:
            driver.quit()
            ui.send_signal(signal.SIGTERM)
            ui.wait(timeout=30)
            for old in FOLDER.glob(cache.name + "*"):
                old.unlink()  # the cache is the size of a small store: not kept between runs
    return rows


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", type=int, default=1_000_000, help="rows in the store (default 1M)")


if __name__ == "__main__":
    sys.exit(main("bench_ui_pages", measure, reps=7, add_args=add_args))
