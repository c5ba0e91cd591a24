"""``bpfdepot ui`` over real HTTP (urllib on loopback): answers, bad input as status + error
JSON (a missing store, a corrupt one, a malformed parameter, an unknown endpoint or page),
read-only (other methods 405, the store's bytes unchanged), loopback by default, static files
with their types, gzip and cache headers, and the page telling to build the bundle."""

from __future__ import annotations

import gzip
import hashlib
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.cli import main
from loader.ui import UiError
from loader.ui import server as ui_server
from loader.ui.live import OverSocket
from loader.ui.server import UiServer, check_listen, open_ui
from tests.unit.test_ui_fixtures import Expected, fill_small


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None
          ) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def fetch_json(url: str) -> tuple[int, dict]:
    status, _, body = fetch(url)
    return status, json.loads(body)


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[tuple[UiServer, Expected]]:
    expected = fill_small(tmp_path / "events.sqlite")
    server = open_ui(tmp_path / "events.sqlite", OverSocket(tmp_path / "no.sock"), "127.0.0.1:0")
    yield server, expected
    server.stop()


def test_the_api_over_http(ui) -> None:
    server, x = ui
    rng = f"from={x.t0_s}&to={x.t0_s + 60}"
    status, answer = fetch_json(f"{server.url}/api/servicemap?{rng}")
    assert status == 200
    edge = next(e for e in answer["edges"] if e["target"] == "comm:python3")
    assert (edge["bytes_tx"], edge["bytes_rx"]) == (x.edge_tx, x.edge_rx)
    status, headers, body = fetch(f"{server.url}/api/streams?{rng}", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert len(json.loads(gzip.decompress(body))["streams"]) == 7
    status, answer = fetch_json(f"{server.url}/api/latency?metric=connect&{rng}")
    assert status == 200 and answer["groups"][0]["count"] == x.connects
    assert headers["Cache-Control"] == "no-store" and headers["Server-Timing"].startswith("app;dur=")
    status, answer = fetch_json(f"{server.url}/api/instances")
    assert status == 200 and answer["empty"] and "no bpfdepot agent answers" in answer["why"]


@pytest.mark.parametrize("path, status, words", [
    ("/api/latency?metric=connect&from=yesterday", 400, "from='yesterday' is not a time"),
    ("/api/latency?metric=connect&from=-5m&to=-10m", 400, "is empty or reversed"),
    ("/api/latency?metric=conect", 404, "metric='conect' is not one of"),
    ("/api/latency", 400, "parameter 'metric' is missing"),
    ("/api/drops?by=colour", 400, "by='colour' is not one of"),
    ("/api/drops?limit=-1", 400, "limit='-1' is not a whole number"),
    ("/api/servicemap?frm=-5m", 400, "unknown parameter 'frm'"),
    ("/api/flamegraph?program=nosuch", 404, "no stack records of program 'nosuch'"),
    ("/api/flamegraph?kind=gpu", 404, "kind='gpu' is not one of"),
    ("/api/nosuch", 404, "no endpoint /api/nosuch"),
])
def test_bad_input_is_a_status_and_an_error_with_its_fix(ui, path: str, status: int, words: str) -> None:
    server, _ = ui
    got, answer = fetch_json(server.url + path)
    assert got == status and answer["status"] == status
    assert words in answer["error"] and answer["fix"]


def test_did_you_mean_for_a_misspelt_parameter(ui) -> None:
    server, _ = ui
    _, answer = fetch_json(f"{server.url}/api/servicemap?frm=-5m")
    assert answer["fix"] == "did you mean 'from'?"


def test_a_range_with_no_data_is_an_empty_state(ui) -> None:
    server, x = ui
    status, answer = fetch_json(f"{server.url}/api/drops?from={x.t0_s - 7200}&to={x.t0_s - 3600}")
    assert status == 200 and answer["empty"] is True
    assert "no packet drops between" in answer["why"] and "the store holds skb_drops events" in answer["why"]


def test_a_missing_store_is_503_with_the_fix(tmp_path: Path) -> None:
    server = open_ui(tmp_path / "none.sqlite", OverSocket(tmp_path / "no.sock"), "127.0.0.1:0")
    try:
        status, answer = fetch_json(f"{server.url}/api/servicemap")
        assert status == 503 and answer["error"] == f"no time-series store at {tmp_path / 'none.sqlite'}"
        assert "bpfdepot run bpf/topology --tsdb" in answer["fix"]
        status, health = fetch_json(f"{server.url}/api/health")
        assert status == 200 and health["db"]["ok"] is False
        assert not (tmp_path / "none.sqlite").exists()  # the UI never creates the store
    finally:
        server.stop()


def test_a_corrupt_store_is_503_never_a_traceback(tmp_path: Path) -> None:
    db = tmp_path / "garbage.sqlite"
    db.write_bytes(b"this is not SQLite at all\n" * 400)
    before = db.read_bytes()
    server = open_ui(db, OverSocket(tmp_path / "no.sock"), "127.0.0.1:0")
    try:
        for path in ("/api/servicemap", "/api/latency?metric=connect", "/api/flamegraph", "/api/drops"):
            status, _, body = fetch(server.url + path)
            answer = json.loads(body)
            assert status == 503, path
            assert answer["error"].startswith(f"cannot read the time-series store {db}: file is not a database")
            assert "integrity_check" in answer["fix"] and b"Traceback" not in body
    finally:
        server.stop()
    assert db.read_bytes() == before


def test_read_only_other_methods_are_405_and_the_store_is_unchanged(ui) -> None:
    server, x = ui
    digest = hashlib.sha256(server.data.db.read_bytes()).hexdigest()
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, body = fetch(f"{server.url}/api/servicemap", method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD", method
        assert "read-only" in json.loads(body)["error"]
    for path in ("/api/servicemap", "/api/latency?metric=connect", "/api/drops", "/api/flamegraph",
                 "/api/streams", "/api/health"):
        assert fetch(f"{server.url}{path}&from={x.t0_s}" if "?" in path else f"{server.url}{path}")[0] in (200,)
    assert hashlib.sha256(server.data.db.read_bytes()).hexdigest() == digest


def test_loopback_only_unless_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_listen("127.0.0.1:8437", False) == ("127.0.0.1", 8437)
    assert check_listen("[::1]:0", False) == ("::1", 0)
    assert check_listen("0.0.0.0:0", True) == ("0.0.0.0", 0)
    with pytest.raises(UiError) as err:
        check_listen("0.0.0.0:8437", False)
    assert "binds loopback only" in err.value.message and "--allow-remote" in err.value.fix
    with pytest.raises(UiError):
        check_listen("8437", False)
    assert main(["ui", "--listen", "10.1.2.3:8437", "--db", str(tmp_path / "x.sqlite")]) != 0
    assert "binds loopback only by default" in capsys.readouterr().err


def test_static_pages_types_gzip_and_cache(ui, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, _ = ui
    static = tmp_path / "static"
    (static / "assets").mkdir(parents=True)
    (static / "index.html").write_text("<!doctype html><title>bpfdepot</title>" + " " * 2000)
    (static / "assets" / "app.3f2a9c1d.js").write_text("console.log('x');" * 200)
    (static / "assets" / "app.css").write_text("body{}")
    (static / "assets" / "app.css.gz").write_bytes(gzip.compress(b"body{}"))
    monkeypatch.setattr(ui_server, "STATIC", static)
    status, headers, body = fetch(f"{server.url}/latency?metric=connect", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Encoding"] == "gzip" and headers["Cache-Control"] == "no-cache"
    assert gzip.decompress(body).startswith(b"<!doctype html>")
    assert fetch(f"{server.url}/", headers={"If-None-Match": headers["ETag"], "Accept-Encoding": "gzip"})[0] == 304
    status, headers, _ = fetch(f"{server.url}/static/assets/app.3f2a9c1d.js")
    assert (status, headers["Content-Type"]) == (200, "text/javascript; charset=utf-8")
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    status, headers, body = fetch(f"{server.url}/static/assets/app.css", headers={"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == b"body{}"
    for bad in ("/static/../data.py", "/static/%2e%2e/data.py", "/static/assets/", "/nosuch", "/static/.x"):
        status, headers, body = fetch(server.url + bad)
        assert status == 404, bad
    assert b"Pages:" in fetch(server.url + "/nosuch")[2]


def test_a_missing_bundle_says_to_build_it(ui, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, _ = ui
    monkeypatch.setattr(ui_server, "STATIC", tmp_path / "nothing")
    status, headers, body = fetch(f"{server.url}/map")
    assert status == 503 and headers["Content-Type"].startswith("text/html")
    assert b"scripts/build-ui" in body


def test_a_store_not_yet_summed_is_503_building_with_retry_after(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fill_small(tmp_path / "events.sqlite")
    monkeypatch.setattr(ui_server, "SYNC_ROWS", 10)  # the 118 rows count as a large store
    monkeypatch.setattr(ui_server, "REFRESH_S", 3600.0)  # and no thread sums them meanwhile
    server = open_ui(tmp_path / "events.sqlite", OverSocket(tmp_path / "no.sock"), "127.0.0.1:0")
    try:
        status, headers, body = fetch(f"{server.url}/api/drops")
        answer = json.loads(body)
        assert (status, headers["Retry-After"]) == (503, "1")
        assert answer["building"]["behind"] == 118 and "events to go" in answer["error"]
        server.data.refresh()
        assert fetch(f"{server.url}/api/drops")[0] == 200
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_command_serves_until_a_signal_then_stops_cleanly(tmp_path: Path, sig: int) -> None:
    fill_small(tmp_path / "events.sqlite")
    proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "ui", "--listen", "127.0.0.1:0",
                             "--db", str(tmp_path / "events.sqlite"), "--agent-socket", str(tmp_path / "a.sock")],
                            cwd=Path(__file__).parents[2], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line.split("serving ")[1].split("/ ")[0]
        assert fetch_json(f"{url}/api/health")[0] == 200
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        assert "bpfdepot ui: stopped" in proc.stderr.read()
    finally:
        proc.kill()
