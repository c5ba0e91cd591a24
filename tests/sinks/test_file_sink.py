"""JSON-lines file sink: round trip, rotation by size and count, no torn lines after a crash,
clear errors for paths it cannot write; and the stdout sink."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from loader.errors import BpfDepotError
from loader.sinks import Record
from loader.sinks.files import FileSink, FileSinkError, StdoutSink
from tests.services import ROOT
from tests.sinks.conftest import records

STREAM = "tcp_connlat.tcp_connlat_events"


def chain(path: Path, keep: int) -> list[Path]:
    """The live file and its rotated files, oldest first."""
    rotated = [path.with_name(f"{path.name}.{n}") for n in range(keep, 0, -1)]
    return [p for p in rotated if p.exists()] + ([path] if path.exists() else [])


def read_lines(files: list[Path]) -> list[dict]:
    """Every line of ``files`` in order, parsed; fails on a torn or invalid line."""
    out = []
    for f in files:
        data = f.read_bytes()
        assert not data or data.endswith(b"\n"), f"{f} ends inside a line"
        out += [json.loads(line) for line in data.splitlines()]
    return out


def test_lines_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sent = records(100) + [Record(key=None, value='{"comm":"caf\u00e9 \u2713"}'.encode())]
    with FileSink(path, max_bytes=1 << 20, keep=2) as sink:
        sink.write(STREAM, sent[:40])
        sink.write(STREAM, [])
        sink.write(STREAM, sent[40:])
        stats = sink.flush()
    assert (stats.delivered, stats.failed, stats.pending) == (101, 0, 0)
    assert path.read_bytes() == b"".join(r.value + b"\n" for r in sent)
    assert read_lines([path])[-1] == {"comm": "caf\u00e9 \u2713"}
    assert not path.with_name("events.jsonl.1").exists()


def test_rotation_keeps_count_and_size_in_order(tmp_path: Path) -> None:
    path, keep, max_bytes = tmp_path / "out.jsonl", 3, 1000
    sink = FileSink(path, max_bytes=max_bytes, keep=keep)
    sent, n = records(600), 0
    for size in [1, 7, 37, 3, 150, 2, 19, 60, 1, 320]:  # 150 and 320 lines span several files
        sink.write(STREAM, sent[n:n + size])
        n += size
    assert n == len(sent)
    stats = sink.close()
    assert (stats.delivered, stats.failed) == (600, 0)

    files = chain(path, keep)
    assert len(files) == keep + 1
    assert not path.with_name("out.jsonl.4").exists()
    assert all(f.stat().st_size <= max_bytes for f in files)
    # Each rotated file was full: the next line would not have fitted.
    assert all(f.stat().st_size > max_bytes - 70 for f in files[:-1])
    seqs = [line["seq"] for line in read_lines(files)]
    assert seqs == list(range(seqs[0], 600)), "lines lost or reordered across files"
    assert seqs[0] > 0 and sink.rotations > keep


def test_line_longer_than_max_bytes_stands_alone(tmp_path: Path) -> None:
    """The one case a file passes max_bytes: a single line larger than it, alone in its file."""
    path = tmp_path / "big.jsonl"
    big = Record(key=None, value=json.dumps({"blob": "x" * 300}).encode())
    with FileSink(path, max_bytes=100, keep=5) as sink:
        sink.write(STREAM, records(1))
        sink.write(STREAM, [big] + records(1, start=1))
        sink.write(STREAM, [big])
    sizes = [f.stat().st_size for f in chain(path, 5)]
    assert sizes == [len(records(1)[0].value) + 1, len(big.value) + 1,
                     len(records(1, start=1)[0].value) + 1, len(big.value) + 1]
    assert [list(line) for line in read_lines(chain(path, 5))] == [
        ["seq", "pid", "comm", "dport", "key"], ["blob"], ["seq", "pid", "comm", "dport", "key"], ["blob"]]


def test_keep_zero_drops_the_full_file(tmp_path: Path) -> None:
    path = tmp_path / "only.jsonl"
    with FileSink(path, max_bytes=200, keep=0, fsync="never") as sink:
        for i in range(20):
            sink.write(STREAM, records(1, start=i))
    assert list(tmp_path.iterdir()) == [path]
    seqs = [line["seq"] for line in read_lines([path])]
    assert seqs[-1] == 19 and seqs == list(range(seqs[0], 20)) and path.stat().st_size <= 200


def test_reopen_appends_and_counts_existing_size(tmp_path: Path) -> None:
    path = tmp_path / "restart.jsonl"
    with FileSink(path, max_bytes=500, keep=2) as sink:
        sink.write(STREAM, records(5))
    with FileSink(path, max_bytes=500, keep=2) as sink:
        assert sink.dropped_partial_lines == 0
        sink.write(STREAM, records(10, start=5))
    files = chain(path, 2)
    assert all(f.stat().st_size <= 500 for f in files)
    assert [line["seq"] for line in read_lines(files)] == list(range(15))


WRITER = """
import sys
from loader.sinks.files import FileSink
from tests.sinks.conftest import records
sink = FileSink(sys.argv[1], max_bytes=20_000, keep=3, fsync="batch")
seq = 0
while True:
    sink.write("p.c", records(50, start=seq))
    seq += 50
"""


def test_sigkill_mid_write_leaves_only_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "crash.jsonl"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not path.with_name("crash.jsonl.2").exists():  # written through a few rotations
            assert child.poll() is None, "the writer exited"
            assert time.monotonic() < deadline, "the writer wrote nothing"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    # What a crash inside write() leaves at worst: a line without its end. (The kill itself
    # rarely tears one: a batch is one write() of a few KiB; count its tail in, if any.)
    # A kill between a rotation's rename and the reopen leaves no live file at all: fine too.
    torn = path.read_bytes().rsplit(b"\n", 1)[-1] if path.exists() else b""
    with open(path, "ab") as f:
        f.write(b'{"seq": 999999999, "pid": 42, "co')
    size = path.stat().st_size
    sink = FileSink(path, max_bytes=20_000, keep=3)
    assert sink.dropped_partial_lines == 1
    assert sink.dropped_partial_bytes == len(torn) + len(b'{"seq": 999999999, "pid": 42, "co')
    assert path.stat().st_size == size - sink.dropped_partial_bytes
    seqs = [line["seq"] for line in read_lines(chain(path, 3))]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a batch was lost between whole ones"

    # Writing goes on right after the last whole line.
    sink.write(STREAM, records(1, start=seqs[-1] + 1))
    sink.close()
    assert [line["seq"] for line in read_lines(chain(path, 3))][-2:] == [seqs[-1], seqs[-1] + 1]


def test_partial_line_without_any_newline_is_cut_to_empty(tmp_path: Path) -> None:
    path = tmp_path / "torn.jsonl"
    path.write_bytes(b'{"half": tr')
    with FileSink(path, max_bytes=1000, keep=1) as sink:
        assert (sink.dropped_partial_lines, sink.dropped_partial_bytes) == (1, 11)
        assert path.stat().st_size == 0
        sink.write(STREAM, records(2))
    assert [line["seq"] for line in read_lines([path])] == [0, 1]


def test_value_with_a_newline_is_counted_failed_not_written(tmp_path: Path) -> None:
    path = tmp_path / "nl.jsonl"
    with FileSink(path, max_bytes=1000, keep=1) as sink:
        sink.write(STREAM, [records(1)[0], Record(key=None, value=b'{"a":\n1}'), records(1, start=1)[0]])
        stats = sink.flush()
    assert (stats.delivered, stats.failed) == (2, 1)
    assert "raw newline" in sink.last_error
    assert [line["seq"] for line in read_lines([path])] == [0, 1]


def test_missing_folder_names_the_path_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "events.jsonl"
    with pytest.raises(FileSinkError) as err:
        FileSink(path, max_bytes=1000, keep=1)
    assert isinstance(err.value, BpfDepotError)
    assert str(path) in err.value.message and "does not exist" in err.value.message
    assert err.value.hint == f"create it (mkdir -p {path.parent}) or choose another path"


def test_folder_that_is_a_file_or_a_path_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileSinkError, match="the folder .*afile is not a folder"):
        FileSink(tmp_path / "afile" / "events.jsonl", max_bytes=1000, keep=1)
    with pytest.raises(FileSinkError, match="it is a folder") as err:
        FileSink(tmp_path, max_bytes=1000, keep=1)
    assert "events.jsonl" in err.value.hint


def test_folder_not_writable() -> None:
    """As root, the check runs in a child that drops to nobody (root may write anywhere), in a
    folder under /tmp that nobody can reach (pytest's own temporary folders are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="bpfdepot-ro-"))
    try:
        base.chmod(0o755)
        folder = base / "locked"
        folder.mkdir(mode=0o555)
        target = folder / "events.jsonl"
        code = f"""
import os, sys
from loader.sinks.files import FileSink, FileSinkError  # before dropping root: the imports need it
if os.geteuid() == 0:
    os.setgid(65534); os.setuid(65534)
try:
    FileSink({str(target)!r}, max_bytes=1000, keep=1)
except FileSinkError as e:
    print(e.message); print(e.hint); sys.exit(0)
sys.exit("no error")
"""
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        message, hint = out.stdout.splitlines()
        assert message == f"cannot write JSON lines to {target}: permission denied"
        assert f"ls -ld {folder}" in hint
        assert not target.exists()
    finally:
        shutil.rmtree(base)


def test_second_writer_of_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    with FileSink(path, max_bytes=1000, keep=1):
        with pytest.raises(FileSinkError, match="another process is writing"):
            FileSink(path, max_bytes=1000, keep=1)


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileSinkError, match="max_bytes must be at least 1"):
        FileSink(tmp_path / "x", max_bytes=0, keep=1)
    with pytest.raises(FileSinkError, match="keep must be 0 or more"):
        FileSink(tmp_path / "x", max_bytes=10, keep=-1)
    with pytest.raises(FileSinkError, match="fsync must be 'never' or 'batch'"):
        FileSink(tmp_path / "x", max_bytes=10, keep=1, fsync="always")  # type: ignore[arg-type]


def test_stdout_sink_writes_lines() -> None:
    code = """
from loader.sinks.files import StdoutSink
from tests.sinks.conftest import records
sink = StdoutSink()
sink.write("p.c", records(3))
sink.write("p.c", records(2, start=3))
s = sink.close()
import sys; print(s.delivered, s.failed, file=sys.stderr)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"".join(r.value + b"\n" for r in records(5))
    assert out.stderr.split() == [b"5", b"0"]


def test_stdout_sink_counts_a_closed_reader_as_failed() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "wb", buffering=0) as out:  # unbuffered: nothing left to flush at close
        sink = StdoutSink(out)
        sink.write(STREAM, records(4))
        stats = sink.close()
    assert (stats.delivered, stats.failed) == (0, 4)
    assert "Broken pipe" in sink.last_error
