"""The web view's HTTP server: the built pages and the /api answers of API.md, read-only.

Standard library only (``ThreadingHTTPServer``): a node gains no web framework. GET and HEAD are
the only methods (anything else is 405), nothing the server does loads or unloads a program, the
store is opened read-only; the only file it writes is its own rollup cache (data.py). It binds
127.0.0.1 unless the caller passes ``allow_remote`` (``check_listen`` refuses otherwise).

A thread keeps the rollup current (every REFRESH_S); a request also sums what arrived since
(when that is at most SYNC_ROWS rows), so a page shows events a second old. While a large store
is summed for the first time, data endpoints answer 503 with the progress and ``Retry-After``;
once it has caught up, a lag of up to BEHIND_ROWS rows (a writer outrunning the thread for a
moment) is answered from the cache as it is, ``fresh_ns`` saying how old.
"""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import json
import mimetypes
import re
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from loader.ui import UiError, views
from loader.ui.data import Data
from loader.ui.live import Live

STATIC = Path(__file__).parent / "static"
PAGES = ("/", "/instances", "/map", "/latency", "/drops", "/flame")
REFRESH_S = 0.5
SYNC_ROWS = 20_000       # rows a request sums itself before answering
BEHIND_ROWS = 200_000    # more rows than this not yet summed: a data page says "building"
GZIP_MIN = 1024
_HASHED = re.compile(r"[.-][0-9a-f]{8,}\.[a-z0-9]+$")
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
          ".html": "text/html", ".svg": "image/svg+xml", ".json": "application/json",
          ".map": "application/json", ".png": "image/png", ".woff2": "font/woff2",
          ".txt": "text/plain", ".ico": "image/x-icon"}
_TEXT = ("text/", "application/json", "image/svg+xml")


def check_listen(listen: str, allow_remote: bool) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); a host that is not loopback needs ``allow_remote``."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or int(port) > 65535 or not host:
        raise UiError(400, f"--listen {listen!r} is not HOST:PORT", "for example --listen 127.0.0.1:8437")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise UiError(400, f"--listen {listen!r}: {host!r} is not an IP address",
                      "give a numeric address, e.g. 127.0.0.1:8437") from None
    if not loopback and not allow_remote:
        raise UiError(400, f"--listen {listen} would serve this node's events and processes to the "
                           "network; bpfdepot ui binds loopback only by default",
                      "use 127.0.0.1:PORT and an SSH tunnel (ssh -L PORT:127.0.0.1:PORT node), or "
                      "add --allow-remote if the network is trusted")
    return host, int(port)


class UiServer:
    """The HTTP server, the rollup thread, and their shutdown."""

    def __init__(self, data: Data, live: Live, host: str, port: int, *,
                 say: Callable[[str], None] = print) -> None:
        self.data, self.live, self.say = data, live, say
        self._stop = threading.Event()
        self._static: dict[tuple[str, bool], tuple[bytes, str, str]] = {}
        self.api: dict[str, Callable[[dict[str, list[str]]], dict[str, Any]]] = {
            "/api/health": self.health,
            "/api/instances": self.instances,
            "/api/streams": self._data(views.streams),
            "/api/servicemap": self._data(views.servicemap),
            "/api/servicemap/edge": self._data(views.servicemap_edge),
            "/api/latency": self._data(views.latency),
            "/api/latency/metrics": self._data(views.latency_metrics),
            "/api/drops": self._data(views.drops),
            "/api/flamegraph": self._data(views.flamegraph),
        }
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self._threads = [threading.Thread(target=self.httpd.serve_forever, args=(0.1,), name="bpfdepot-ui", daemon=True),
                         threading.Thread(target=self._refresh_loop, name="bpfdepot-ui-rollup", daemon=True)]

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop serving, wait for the threads, close the files."""
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for thread in self._threads:
            thread.join(5.0)

    def request_stop(self) -> None:
        """Make ``wait`` return (safe in a signal handler)."""
        self._stop.set()

    def wait(self) -> None:
        """Block until ``stop`` (the caller's signal handler calls it)."""
        while not self._stop.wait(1.0):
            pass

    # -- the rollup ---------------------------------------------------------------------------

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                self.data.refresh()
            except UiError:
                pass  # a missing or broken store: each request says so with its fix
            except Exception as exc:  # noqa: BLE001 — keep the thread; say it once per kind
                self.say(f"bpfdepot ui: summing the store failed: {type(exc).__name__}: {exc}")
                self._stop.wait(5.0)
        self.data.close()

    def _data(self, view: Callable[[Data, dict[str, list[str]]], dict[str, Any]]
              ) -> Callable[[dict[str, list[str]]], dict[str, Any]]:
        def answer(params: dict[str, list[str]]) -> dict[str, Any]:
            behind = self.data.behind()
            if 0 < behind <= SYNC_ROWS:
                behind = self.data.refresh(max_rows=SYNC_ROWS)  # waits for a short one running
            if behind and not (self.data.caught_up and behind <= BEHIND_ROWS):
                done, total = self.data.building or (0, behind)
                raise UiError(503, f"the UI is summing the store {self.data.db} into its cache "
                                   f"{self.data.cache}: {behind:,} events to go",
                              "wait: the page retries by itself (Retry-After)",
                              building={"done": done, "total": total, "behind": behind})
            return view(self.data, params)
        return answer

    # -- endpoints without the cache ----------------------------------------------------------

    def health(self, params: dict[str, list[str]]) -> dict[str, Any]:
        try:
            version = metadata.version("bpfdepot")
        except metadata.PackageNotFoundError:
            version = "unknown"

        db: dict[str, Any] = {"path": str(self.data.db), "cache": str(self.data.cache), "ok": True,
                              "error": None}
        try:
            spans = self.data.streams()
            db.update(streams=len(spans),
                      first_ns=min((s["first_ns"] for s in spans if s["first_ns"]), default=None),
                      last_ns=max((s["last_ns"] for s in spans if s["last_ns"]), default=None),
                      cache_ready=self.data.building is None, skipped=self.data.skipped())
        except UiError as exc:
            db.update(ok=False, error={"error": exc.message, "fix": exc.fix})
        agent: dict[str, Any] = {"mode": self.live.mode, "ok": True, "error": None,
                                 "socket": str(getattr(self.live, "path", "")) or None}
        try:
            state = self.live.instances()
            if state.get("empty"):
                agent.update(mode="none", ok=False, error={"error": state["why"], "fix": state["run"]})
        except UiError as exc:
            agent.update(ok=False, error={"error": exc.message, "fix": exc.fix})
        return {"ok": db["ok"] and agent["ok"], "version": version, "db": db, "agent": agent}

    def instances(self, params: dict[str, list[str]]) -> dict[str, Any]:
        views.check_params(params, ())
        return self.live.instances()

    # -- static files -------------------------------------------------------------------------

    def static(self, path: str, gz: bool) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, headers) of a page or a file under static/."""
        if path in PAGES or path.rstrip("/") in PAGES:
            file = STATIC / "index.html"
            if not file.is_file():
                return 503, _missing_bundle(), {"Content-Type": "text/html; charset=utf-8",
                                                "Cache-Control": "no-store"}
        elif path.startswith("/static/") or path == "/favicon.ico":
            rel = path.removeprefix("/static/") if path.startswith("/static/") else "favicon.ico"
            parts = rel.split("/")
            file = STATIC.joinpath(*parts)
            if any(p in ("", ".", "..") or p.startswith(".") for p in parts) or not file.is_file():
                return 404, _not_found(path), {"Content-Type": "text/html; charset=utf-8"}
        else:
            return 404, _not_found(path), {"Content-Type": "text/html; charset=utf-8"}
        body, ctype, etag = self._file(file, gz)
        headers = {"Content-Type": ctype, "ETag": etag,
                   "Cache-Control": "public, max-age=31536000, immutable" if _HASHED.search(file.name)
                   else "no-cache"}
        if gz and body[:2] == b"\x1f\x8b":
            headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
        return 200, body, headers

    def _file(self, file: Path, gz: bool) -> tuple[bytes, str, str]:
        st = file.stat()
        key = (f"{file}:{st.st_mtime_ns}:{st.st_size}", gz)
        hit = self._static.get(key)
        if hit is None:
            raw = file.read_bytes()
            ctype = _TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype == "application/json":
                ctype += "; charset=utf-8"
            body = raw
            if gz:
                pre = file.with_name(file.name + ".gz")
                if pre.is_file():
                    body = pre.read_bytes()
                elif len(raw) >= GZIP_MIN and ctype.startswith(_TEXT):
                    body = gzip.compress(raw, 9, mtime=0)
            etag = '"' + hashlib.sha256(raw).hexdigest()[:20] + ('-gz"' if body is not raw else '"')
            hit = self._static[key] = (body, ctype, etag)
        return hit


def _page(title: str, text: str) -> bytes:
    return (f"<!doctype html><meta charset=utf-8><title>{title}</title>"
            f"<body style='font-family:sans-serif;margin:2em'><h1>{title}</h1>{text}</body>").encode()


def _not_found(path: str) -> bytes:
    from html import escape

    links = " ".join(f"<a href='{p}'>{p}</a>" for p in PAGES)
    return _page("Not found", f"<p>bpfdepot ui has no page <code>{escape(path)}</code>.</p>"
                              f"<p>Pages: {links}</p>")


def _missing_bundle() -> bytes:
    return _page("The pages are not built",
                 f"<p>bpfdepot ui found no <code>{STATIC / 'index.html'}</code>.</p>"
                 "<p>Build them: <code>scripts/build-ui</code> (needs Node.js and npm), then reload. "
                 "The data API answers meanwhile: <a href='/api/health'>/api/health</a>.</p>")


def _handler(ui: UiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "bpfdepot-ui"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._answer(head=False)

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def _refuse(self) -> None:
            body = UiError(405, f"{self.command} is not allowed: bpfdepot ui is read-only",
                           "use GET; to load or unload programs use bpfdepot load / unload").body()
            self._send(405, _json(body), {"Content-Type": "application/json", "Allow": "GET, HEAD"},
                       head=False)

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

        def _answer(self, head: bool) -> None:
            began = time.perf_counter()
            url = urlsplit(self.path)
            path = unquote(url.path)
            gz = "gzip" in self.headers.get("Accept-Encoding", "")
            if not path.startswith("/api/"):
                status, body, headers = ui.static(path, gz)
                if status == 200 and self.headers.get("If-None-Match") == headers.get("ETag"):
                    status, body = 304, b""
                self._send(status, body, headers, head)
                return
            endpoint = ui.api.get(path.rstrip("/"))
            headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
            try:
                if endpoint is None:
                    raise UiError(404, f"no endpoint {path}",
                                  "endpoints: " + ", ".join(sorted(ui.api)))
                params = parse_qs(url.query, keep_blank_values=True, strict_parsing=False)
                status, answer = 200, endpoint(params)
            except UiError as exc:
                status, answer = exc.status, exc.body()
                if "building" in exc.extra:
                    headers["Retry-After"] = "1"
            except Exception as exc:  # noqa: BLE001 — a bug: an answer, never a traceback
                status, answer = 500, {"error": f"{path} failed: {type(exc).__name__}: {exc}",
                                       "fix": "report this bug with the URL; other pages still work",
                                       "status": 500}
            body = _json(answer)
            headers["Server-Timing"] = f"app;dur={(time.perf_counter() - began) * 1000:.1f}"
            if gz and len(body) >= GZIP_MIN:
                body = gzip.compress(body, 5)
                headers["Content-Encoding"] = "gzip"
            self._send(status, body, headers, head)

        def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
            self.send_response(status, HTTPStatus(status).phrase)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if not head and body:
                self.wfile.write(body)

    return Handler


def _json(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer, separators=(",", ":"), default=str).encode()


def open_ui(db: Path, live: Live, listen: str, *, allow_remote: bool = False, cache: Path | None = None,
            say: Callable[[str], None] = print) -> UiServer:
    """A started UiServer for ``db`` on ``listen`` (``HOST:PORT``; port 0 picks a free one);
    UiError 400 for a listen address refused, OSError when the port is taken."""
    from loader.ui.data import default_cache

    host, port = check_listen(listen, allow_remote)
    server = UiServer(Data(db, cache or default_cache(db)), live, host, port, say=say)
    server.start()
    return server
