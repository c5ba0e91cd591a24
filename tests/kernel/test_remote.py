"""Manifests and artifacts over http:// from a server the test runs on 127.0.0.1: the talk's own
manifest (events: beside channels:, sources relative to it, a processor and its initfile) loads
as written, from a run and from the agent; a pinned library whose bytes differ is refused with
nothing loaded."""

from __future__ import annotations

import functools
import re
import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.conftest import ROOT, Running, bpfdepot, prog_names
from tests.kernel.test_agent import agent  # noqa: F401 (the fixture)
from tests.kernel.test_tcp_connlat_sinks import _check, _connect, _mine
from tests.unit.test_manifest_talk import FLAT

CONNLAT = ROOT / "bpf" / "tcp_connlat"



def _talk(processor: str) -> str:
    """The talk's manifest (DESIGN.md), events: flattened beside channels: as the talk writes
    it (tests/unit/test_manifest_talk.py), its processor at ``processor``."""
    old = "path: file://./tcp_connlat_user.c"
    assert old in FLAT
    text = FLAT.replace(old, f"path: {processor}")
    # its route sends to Kafka, file and TSDB: the run's own sinks suffice here
    return re.sub(r"\n *storage:\n( +\w+: true.*\n)+", "\n", text)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder) of an http server on 127.0.0.1 serving the folder."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    finally:
        httpd.shutdown()
        httpd.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _publish(folder: Path, processor: str) -> None:
    for name in ("tcp_connlat.bpf.c", "tcp_connlat.h", "tcp_connlat_user.c", "connlat.ini"):
        shutil.copy(CONNLAT / name, folder / name)
    (folder / "manifest.yaml").write_text(_talk(processor))


def test_the_talks_manifest_runs_from_a_url(home: Path, tmp_path: Path, served) -> None:
    url, folder = served
    _publish(folder, "file://./tcp_connlat_user.c")
    run = Running(home, f"{url}/manifest.yaml", tmp_path / "out.jsonl")
    assert f"{url}/manifest.yaml: fetched into" in run.stderr
    ports = _connect(3)
    done = run.stop()
    assert done.rc == 0, done.stderr
    _check(_mine(done.events), ports)


def test_a_pinned_library_with_other_bytes_is_refused(home: Path, tmp_path: Path, served) -> None:
    url, folder = served
    # the processor built once, served as a prebuilt .so by its own URL, pinned by digest
    _publish(folder, "file://./tcp_connlat_user.c")
    built = bpfdepot(home, "build", str(folder))
    assert built.returncode == 0, built.stderr
    so = next(line.split()[3] for line in built.stdout.splitlines() if "(user_so)" in line)
    blob = Path(home) / "blobs" / "sha256" / so.removeprefix("sha256:")[:2] / so.removeprefix(
        "sha256:")[2:]
    shutil.copy(blob, folder / "user.so")
    good = hashlib.sha256((folder / "user.so").read_bytes()).hexdigest()
    (folder / "manifest.yaml").write_text(_talk(f"{url}/user.so#sha256={good}"))
    run = Running(home, f"{url}/manifest.yaml", tmp_path / "out.jsonl")
    ports = _connect(2)
    done = run.stop()
    assert done.rc == 0, done.stderr
    _check(_mine(done.events), ports)

    with (folder / "user.so").open("ab") as f:
        f.write(b"\0")  # the server now serves other bytes under the pinned URL
    bad = "1" * 64
    (folder / "manifest.yaml").write_text(_talk(f"{url}/user.so#sha256={bad}"))
    out = bpfdepot(home, "run", f"{url}/manifest.yaml", "--duration", "1")
    assert out.returncode == 3, out.stderr
    assert f"{url}/user.so: sha256 " in out.stderr and "is not the pinned 1111111111111111" in out.stderr
    assert "attached" not in out.stderr and "tcp_connlat" not in prog_names()


def test_the_agent_loads_a_manifest_by_its_url(agent, served) -> None:  # noqa: F811
    url, folder = served
    _publish(folder, "file://./tcp_connlat_user.c")
    agent.ok("load", f"{url}/manifest.yaml")
    assert agent.ps()["tcp_connlat"]["target"] == f"{url}/manifest.yaml"
    ports = _connect(2)
    agent.wait(lambda: len(_mine(agent.events("tcp_connlat"))) == 2, "the processed records")
    _check(_mine(agent.events("tcp_connlat")), ports)
