"""The SVG flame graph in a real browser: headless Chromium opens the file from disk, shows the
names, searches, zooms and resets, with no console error (the picture is kept as an artefact)."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from loader.flamegraph import write_svg
from loader.flamegraph.svg import PAD, WIDTH

FULL = WIDTH - 2 * PAD
PROFILE = [
    (["burn", "main", "burn_mid", "burn_leaf"], 90),
    (["burn", "main", "burn_mid"], 5),
    (["burn", "main", "setup", "sys_write", "vfs_write"], 5),
]
FRAMES_JS = """return Array.from(document.querySelectorAll('#frames > g.f')).map(function (g) {
  var r = g.querySelector('rect'), t = g.querySelector('title').textContent;
  return {name: t.slice(0, t.lastIndexOf(' (')), width: +r.getAttribute('width'),
          fill: r.getAttribute('fill'), shown: g.style.display !== 'none'};});"""


def frames(driver) -> dict[str, dict]:
    return {f["name"]: f for f in driver.execute_script(FRAMES_JS)}


def distinct_colours(png: bytes) -> int:
    """Distinct colours of the screenshot (Pillow when there, else a PNG decode by hand)."""
    try:
        from PIL import Image
        import io

        return len(Image.open(io.BytesIO(png)).convert("RGB").getcolors(1 << 24) or [])
    except ImportError:  # 8-bit RGB(A) PNG, filters ignored: colours of raw rows, a lower bound
        data, at = b"", 8
        while at < len(png):
            size = int.from_bytes(png[at:at + 4], "big")
            kind = png[at + 4:at + 8]
            if kind == b"IDAT":
                data += png[at + 8:at + 8 + size]
            at += 12 + size
        raw = zlib.decompress(data)
        return len({raw[i:i + 3] for i in range(1, len(raw) - 3, 4)})


def test_svg_opens_searches_and_zooms_in_chromium(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver = browser
    path = tmp_path / "burn.svg"
    write_svg(path, PROFILE, title="burn: CPU samples", kernel={"sys_write", "vfs_write"})
    driver.get(path.as_uri())

    # the names are on the page, as drawn text (not only in tooltips)
    texts = driver.execute_script(
        "return Array.from(document.querySelectorAll('#frames text')).map(t => t.textContent)")
    assert "burn_leaf" in texts and "burn_mid" in texts
    assert "burn_leaf" in driver.execute_script("return document.documentElement.textContent")

    # a picture, not a blank page: the frames' colours, the grey root, text and background
    shot = tmp_path / "flamegraph.png"
    assert driver.save_screenshot(str(shot))
    colours = distinct_colours(shot.read_bytes())
    assert colours > 20, f"screenshot {shot} has {colours} colours"

    before = frames(driver)
    assert before["all"]["width"] == pytest.approx(FULL, abs=0.01)
    assert before["burn_leaf"]["width"] == pytest.approx(FULL * 0.90, abs=0.01)

    # search: type a regular expression into the box; the matching frames turn magenta
    # (in an SVG document, chromedriver's element send_keys does not reach a foreignObject
    # input: focus it with a click and type as a user does)
    driver.find_element("id", "search").click()
    ActionChains(driver).send_keys("^burn_").perform()
    found = frames(driver)
    assert {n for n, f in found.items() if f["fill"] == "rgb(230,0,230)"} == {"burn_mid", "burn_leaf"}
    assert driver.find_element("id", "matched").text == "Matched: 95.0%"
    ActionChains(driver).send_keys(Keys.BACKSPACE * 6).perform()
    assert driver.find_element("id", "matched").text == ""
    assert all(f["fill"] != "rgb(230,0,230)" for f in frames(driver).values())

    # click burn_mid: it fills the width, its child grows with it, setup leaves, ancestors stay
    mid = next(g for g in driver.find_elements("css selector", "#frames > g.f")
               if g.find_element("css selector", "title").get_attribute("textContent").startswith("burn_mid "))
    mid.find_element("css selector", "rect").click()
    zoomed = frames(driver)
    assert zoomed["burn_mid"]["width"] == pytest.approx(FULL, abs=0.01)
    assert zoomed["burn_leaf"]["width"] == pytest.approx(FULL * 90 / 95, abs=0.01)
    assert zoomed["main"]["shown"] and zoomed["main"]["width"] == pytest.approx(FULL, abs=0.01)
    assert not zoomed["setup"]["shown"] and not zoomed["vfs_write"]["shown"]
    driver.save_screenshot(str(tmp_path / "flamegraph-zoomed.png"))

    # reset: every frame back where it was
    driver.find_element("id", "reset").click()
    after = frames(driver)
    assert {n: (f["width"], f["shown"]) for n, f in after.items()} == \
        {n: (f["width"], f["shown"]) for n, f in before.items()}

    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == [], errors
