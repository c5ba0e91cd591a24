"""The web view's page weight: every JS and CSS file index.html loads, gzipped, stays within the
500 KB budget of issue 16, and the built page names only files of its own (nothing from the web)."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

BUDGET = 500 * 1024  # bytes, JS + CSS after gzip


def test_bundle_gzip_size_is_within_the_budget(built: Path) -> None:
    html = (built / "index.html").read_text()
    names = re.findall(r'(?:src|href)="/static/([^"]+)"', html)
    assert {Path(n).suffix for n in names} == {".js", ".css"}, names
    sizes = {n: len(gzip.compress((built / n).read_bytes(), 9)) for n in names}
    total = sum(sizes.values())
    assert total <= BUDGET, f"page weight {total} bytes gzip over {BUDGET}: {sizes}"
    # the bundle holds the libraries, not a stub: the chart and flame graph code is in it
    js = next((built / n).read_text() for n in names if n.endswith(".js"))
    assert "d3-flame-graph" in js and "echarts" in js.lower()


def test_the_built_page_loads_nothing_from_the_web(built: Path) -> None:
    html = (built / "index.html").read_text()
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html), html
    css = "".join(p.read_text() for p in built.glob("app.*.css"))
    assert not re.search(r"url\((?!data:)", css) and "@import" not in css
