"""LogThrottle: one line per kind of failure per interval, repeats counted and told."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from loader.sinks import LogThrottle, Record
from loader.sinks import files as files_module
from loader.sinks.files import FileSink


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_repeats_are_counted_and_told_with_the_next_line(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    throttle = LogThrottle(logging.getLogger("t"), interval_s=10, clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        for i in range(50):
            clock.now = i * 0.5  # 25 s of failures, two a second
            throttle.log(logging.ERROR, "enospc", f"batch {i}: disk full")
        throttle.log(logging.ERROR, "other", "another kind")
        throttle.summary()
    assert [r.getMessage() for r in caplog.records] == [
        "batch 0: disk full",
        "batch 20: disk full (and 19 more like it in the last 10 s)",
        "batch 40: disk full (and 19 more like it in the last 10 s)",
        "another kind",
        "batch 49: disk full (9 more like it since the line above)",
    ]


def test_a_full_disk_prints_a_few_lines_and_counts_every_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """410 failing batches used to print 410 lines."""
    sink = FileSink(tmp_path / "out.jsonl", max_bytes=1 << 30, keep=1)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(files_module.os, "write", full)
    with caplog.at_level(logging.ERROR, logger="bpfdepot.sink.file"):
        for _ in range(410):
            sink.write("p.c", [Record(key=None, value=b'{"a":1}')] * 100)
        stats = sink.close()
    assert (stats.delivered, stats.failed) == (0, 41_000)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0] == f"file: 100 record(s) not written: writing {tmp_path / 'out.jsonl'}: No space left on device"
    assert lines[1].endswith("(409 more like it since the line above)")
