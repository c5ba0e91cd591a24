"""filelat in the running kernel: a child process's writes and fsync counted exactly in the
per-{op, fs} histogram; a read on a FIFO whose writer sleeps gives one slow event, marked fifo;
nothing is left attached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.kernel.conftest import Finished, Running, held_prog_ids
from tests.kernel.monitor import received, unit_run

MIB = 1 << 20

# The trigger: blocks on stdin (a pipe: not a regular file, so not counted by default) until
# the program is attached, then 4 writes of 1 MiB and one fsync on a regular file.
WRITER = """
import os, sys
sys.stdin.readline()
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
buf = b"x" * (1 << 20)
for _ in range(4):
    assert os.write(fd, buf) == len(buf)
os.fsync(fd)
os.close(fd)
"""

# Blocks in open() until the test opens the FIFO for writing, then reads it once (slow: the
# writer sleeps first) and once more (end of file).
READER = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
assert os.read(fd, 4096) == b"hello"
assert os.read(fd, 4096) == b""
os.close(fd)
"""


def _fs_of(path: Path) -> str:
    """The filesystem type of the mount holding ``path`` (the longest mount point above it)."""
    best, fstype = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mnt, typ, *_ = line.split()
        mnt = mnt.replace("\\040", " ")
        if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
            best, fstype = mnt, typ
    return fstype


def _wait_in_syscall(pid: int, nr: int) -> None:
    """Until ``pid`` sleeps in syscall ``nr`` (/proc/PID/syscall's first field)."""
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/syscall").read_text().split()[0] != str(nr):
        assert time.monotonic() < deadline, f"pid {pid} never reached syscall {nr}"
        time.sleep(0.01)


def still_loaded(ids: set[int]) -> set[int]:
    """Which of ``ids`` are still loaded, after giving the kernel's deferred free (RCU) up to
    2 s. By id, not by name: another session may run the same program meanwhile."""
    deadline = time.monotonic() + 2
    while True:
        out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                             check=True)
        left = ids & {p["id"] for p in json.loads(out.stdout or "[]")}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _slow_fifo_read(home: Path, tmp_path: Path, fifo: Path, *knobs: str) -> tuple[Finished, subprocess.Popen]:
    """READER on ``fifo`` under filelat (min_us 50 ms, plus ``knobs``): the test opens the
    FIFO, waits until the reader blocks in read(), sleeps 100 ms, writes 5 bytes, closes."""
    reader = subprocess.Popen([sys.executable, "-c", READER, str(fifo)])
    try:
        _wait_in_syscall(reader.pid, 257)  # openat, blocked until a writer opens the FIFO
        extra = ["--set", f"targ_pid={reader.pid}", "--set", "min_us=50000"]
        for knob in knobs:
            extra += ["--set", knob]
        run = Running(home, "bpf/filelat", tmp_path / "events.jsonl", extra=extra)
        try:
            fd = os.open(fifo, os.O_WRONLY)
            _wait_in_syscall(reader.pid, 0)  # the reader now blocks in read()
            time.sleep(0.1)
            os.write(fd, b"hello")
            os.close(fd)
            reader.wait(timeout=30)
        finally:
            done = run.stop()  # detached whatever the reader did
    finally:
        reader.kill()
    assert reader.returncode == 0
    assert done.rc == 0, done.stderr
    return done, reader


def _last_per_key(records: list[dict]) -> list[dict]:
    """The histogram records of the last read (cumulative: a later read holds the earlier)."""
    last: dict[tuple, dict] = {}
    for r in records:
        if "buckets" in r:
            last[(r["op"], r["ftype"], r["fs"], r["dev_major"], r["dev_minor"])] = r
    return list(last.values())


def _lost(stderr: str, channel: str) -> int:
    line = next(x for x in stderr.splitlines() if f"filelat/{channel}" in x)
    return int(line.split()[2])


def test_four_writes_and_one_fsync_are_counted_exactly(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdin=subprocess.PIPE)
    try:
        run = Running(home, "bpf/filelat", tmp_path / "events.jsonl",
                      extra=["--set", f"targ_pid={child.pid}"])
        progs = held_prog_ids(run.proc.pid)
        try:
            child.communicate(b"go\n", timeout=60)
            time.sleep(1.2)  # one histogram read while the program still runs
        finally:
            done = run.stop()  # detached whatever the child did
    finally:
        child.kill()

    assert child.returncode == 0
    assert done.rc == 0, done.stderr
    assert target.stat().st_size == 4 * MIB
    fs = _fs_of(tmp_path)
    st = os.stat(tmp_path)
    hists = _last_per_key(done.events)
    counts = Counter()
    for h in hists:
        # default: regular files only (the child's stdin pipe read is left out)
        assert (h["ftype"], h["fs"], h["unit"]) == ("regular", fs, "us"), h
        assert (h["dev_major"], h["dev_minor"]) == (os.major(st.st_dev), os.minor(st.st_dev))
        assert sum(b["count"] for b in h["buckets"]) == h["count"]
        assert set(h) == {"op", "ftype", "fs", "dev_major", "dev_minor", "unit", "buckets",
                          "count", "sum", "p50", "p90", "p99"}
        counts[h["op"]] += h["count"]
    assert counts == {"write": 4, "fsync": 1}
    # whether the fsync of 4 MiB passes the default 10 ms depends on the disk: slow events are
    # only checked to be the child's own calls on its file
    for e in (r for r in done.events if "latency_us" in r):
        assert e["pid"] == child.pid and e["op"] in ("write", "fsync") and e["file"] == "data.bin"
    assert _lost(done.stderr, "filelat_hists") == 0 and _lost(done.stderr, "filelat_events") == 0
    assert len(progs) == 16 and not still_loaded(progs)  # 8 entries + 8 exits, all detached


def test_a_read_on_a_fifo_whose_writer_sleeps_is_one_slow_event(home: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "slow.fifo"
    os.mkfifo(fifo)
    done, reader = _slow_fifo_read(home, tmp_path, fifo, "all_types=1")
    [slow] = [r for r in done.events if "latency_us" in r]
    comm = Path(sys.executable).name[:15]  # the exec'd file's base name, as the kernel sets it
    assert slow["latency_us"] >= 100_000
    assert {k: slow[k] for k in ("pid", "tid", "op", "ftype", "fs", "file", "bytes", "comm")} == {
        "pid": reader.pid, "tid": reader.pid, "op": "read", "ftype": "fifo",
        "fs": _fs_of(tmp_path), "file": "slow.fifo", "bytes": 5, "comm": comm}
    assert slow["label"] == 0  # no filter in this run
    # the FIFO's two reads are in the histogram with the fifo type; the second took no time
    [h] = [h for h in _last_per_key(done.events) if (h["op"], h["ftype"]) == ("read", "fifo")]
    assert h["count"] == 2 and h["sum"] >= 100_000
    assert _lost(done.stderr, "filelat_hists") == 0 and _lost(done.stderr, "filelat_events") == 0


def test_without_all_types_the_fifo_read_is_not_measured(home: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "quiet.fifo"
    os.mkfifo(fifo)
    done, _ = _slow_fifo_read(home, tmp_path, fifo)
    assert not [r for r in done.events if "latency_us" in r]
    assert not [h for h in _last_per_key(done.events) if h["ftype"] == "fifo"]
    assert _lost(done.stderr, "filelat_hists") == 0 and _lost(done.stderr, "filelat_events") == 0


# A worker operation: N writes of 4 KiB to the worker's file (a regular file: measured).
WRITE_OPS = """
def write(n):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    for _ in range(n):
        os.write(fd, b"x" * 4096)
    os.close(fd)
"""


def test_the_filter_measures_only_the_units_calls(home: Path, tmp_path: Path,
                                                  tree: dict[str, Path]) -> None:
    """Writes from the unit's child cgroup and from another service to the same file, every
    call an event (min_us 0): only the unit's are in the histogram and the events, label 1."""
    with unit_run(home, tree, "bpf/filelat", tmp_path / "events.jsonl", tmp_path / "data.bin",
                  ops=WRITE_OPS, extra=["--set", "min_us=0"]) as (inside, outside, run):
        inside.do("write", 3)
        outside.do("write", 2)
        time.sleep(1.2)  # one histogram read while the program still runs
    done = run.done
    assert done.rc == 0, done.stderr
    events = [r for r in done.events if "latency_us" in r]
    assert [(e["pid"], e["op"], e["file"], e["bytes"], e["label"]) for e in events] == \
        [(inside.pid, "write", "data.bin", 4096, 1)] * 3
    assert {h["op"]: h["count"] for h in _last_per_key(done.events)} == {"write": 3}
    assert received(done, "filelat/filelat_events") == (3, 0)
    assert _lost(done.stderr, "filelat_hists") == 0
