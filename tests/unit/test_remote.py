"""Remote manifests and artifacts (loader/remote.py) against a real HTTP server on 127.0.0.1
that can be honest, slow, lying about sizes, or redirect somewhere it should not."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loader.errors import ManifestError
from loader.remote import FetchError, cache_dir, fetch, materialize, split_pin


class Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 — the stdlib's name
        path = self.path
        if path == "/redirect-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
            return
        if path.startswith("/short/"):  # says 100 bytes, sends 10, closes
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.close_connection = True
            return
        if path.startswith("/endless/"):  # no length, more than any limit
            self.send_response(200)
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"y" * 65536)
            return
        if path.startswith("/slow/"):
            self.send_response(200)
            self.send_header("Content-Length", "20")
            self.end_headers()
            self.wfile.write(b"z" * 10)
            self.wfile.flush()
            time.sleep(2.5)
            self.wfile.write(b"z" * 10)
            return
        body = self.files.get(path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_caches_by_content_and_a_pin_needs_no_network(server: str, tmp_path: Path) -> None:
    Handler.files = {"/a.bpf.o": b"object bytes"}
    digest = hashlib.sha256(b"object bytes").hexdigest()
    path = fetch(f"{server}/a.bpf.o", tmp_path)
    assert path == cache_dir(tmp_path) / digest and path.read_bytes() == b"object bytes"
    Handler.files = {}  # gone from the server: the pinned copy is used, no request made
    assert fetch(f"{server}/a.bpf.o#sha256={digest}", tmp_path) == path


def test_a_different_digest_than_pinned_is_refused_and_not_kept(server: str, tmp_path: Path) -> None:
    Handler.files = {"/a.so": b"evil"}
    with pytest.raises(FetchError, match="is not the pinned"):
        fetch(f"{server}/a.so#sha256={'0' * 64}", tmp_path)
    assert list(cache_dir(tmp_path).iterdir()) == []


def test_lying_endless_slow_and_redirected_servers_are_refused(server: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="said 100 bytes and (sent|closed after) 10"):
        fetch(f"{server}/short/x.so", tmp_path)
    with pytest.raises(FetchError, match="more than 1048576 bytes"):
        fetch(f"{server}/endless/x.so", tmp_path, limit=1 << 20)
    with pytest.raises(FetchError, match="nothing arrived for 1 s"):
        fetch(f"{server}/slow/x.so", tmp_path, timeout=1.0)
    with pytest.raises(FetchError, match="is not allowed|not http"):  # urllib's words or ours
        fetch(f"{server}/redirect-file", tmp_path)
    with pytest.raises(FetchError, match="answered 404"):
        fetch(f"{server}/none.so", tmp_path)
    Handler.files = {"/big.so": b"b" * 2000}
    with pytest.raises(FetchError, match="says 2000 bytes, over the 1000-byte limit"):
        fetch(f"{server}/big.so", tmp_path, limit=1000)
    assert [p.name for p in cache_dir(tmp_path).iterdir()] == []  # no part file left


def test_pins_are_64_hex(tmp_path: Path) -> None:
    assert split_pin("http://h/x.so") == ("http://h/x.so", None)
    with pytest.raises(ManifestError, match="#sha256=<64 hex>"):
        split_pin("http://h/x.so#md5=abc")


MANIFEST = b"""kind: ebpfprogram
name: remote
spec:
  programs:
    - {name: k, path: file://./sub/k.bpf.o, type: ebpf_object}
    - {name: p, path: file://./p.so, type: user_so}
  properties:
    initfile: ./p.ini
"""


def test_materialize_fetches_the_files_a_manifest_names(server: str, tmp_path: Path) -> None:
    Handler.files = {"/b/manifest.yaml": MANIFEST, "/b/sub/k.bpf.o": b"k", "/b/p.so": b"p",
                     "/b/p.ini": b"ini", "/b/bpfdepot.lock": b"lock"}
    folder = materialize(f"{server}/b/manifest.yaml", tmp_path)
    assert {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} == {
        "manifest.yaml", "sub/k.bpf.o", "p.so", "p.ini", "bpfdepot.lock"}
    assert (folder / "p.ini").read_bytes() == b"ini"
    Handler.files["/b/manifest.yaml"] = MANIFEST.replace(b"./p.so", b"./../../etc/x.so")
    with pytest.raises(ManifestError, match="is not a path inside the bundle"):
        materialize(f"{server}/b/manifest.yaml", tmp_path)
