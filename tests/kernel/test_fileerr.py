"""fileerr in the running kernel: a child process's failing open, read, write (a full tmpfs)
and rename counted by {syscall, errno, comm}, and, in event mode, one event each with its fd
and path; nothing is left attached."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.conftest import Finished, Running, held_prog_ids
from tests.kernel.monitor import received, unit_run
from tests.kernel.test_filelat import still_loaded

COMM = "fileerr-trig"  # the child names itself (prctl PR_SET_NAME) once the program is attached

# Blocks on stdin until the program is attached, renames itself, then fails four ways.
TRIGGER = """
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
full, missing, comm = sys.argv[1:4]  # missing: a path the test made sure is absent
sys.stdin.readline()
libc.prctl(15, comm.encode(), 0, 0, 0)  # PR_SET_NAME
try:
    open(missing)
except FileNotFoundError:
    pass
try:
    os.read(12345, 1)
except OSError as e:
    assert e.errno == errno.EBADF
try:
    os.rename(missing, missing + ".new")
except FileNotFoundError:
    pass
fd = os.open(full, os.O_WRONLY | os.O_CREAT, 0o600)
buf = b"x" * 4096
while True:  # 4 KiB at a time into a 64 KiB tmpfs: the write that finds it full fails whole
    try:
        os.write(fd, buf)
    except OSError as e:
        assert e.errno == errno.ENOSPC
        break
print(fd, flush=True)
os.close(fd)
"""


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted for the test, unmounted after."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "fileerr-test", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _run(home: Path, tmp_path: Path, mnt: Path, *knobs: str) -> tuple[Finished, int, str]:
    """The trigger run under fileerr with the given knobs; (finished run, child pid, its
    write fd). Every program the run loaded is checked to be gone after it stopped."""
    missing = str(tmp_path / "missing")
    child = subprocess.Popen([sys.executable, "-c", TRIGGER, str(mnt / "fill"), missing, COMM],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        extra = ["--set", f"targ_pid={child.pid}"]
        for knob in knobs:
            extra += ["--set", knob]
        run = Running(home, "bpf/fileerr", tmp_path / "events.jsonl", extra=extra)
        progs = held_prog_ids(run.proc.pid)
        try:
            out, _ = child.communicate(b"go\n", timeout=60)
            time.sleep(1.2)  # one counter read while the program still runs
        finally:
            done = run.stop()  # detached whatever the child did
    finally:
        child.kill()
    assert child.returncode == 0
    assert done.rc == 0, done.stderr
    # 23 exits + 23 entries on x86_64, all detached
    assert len(progs) == 46 and not still_loaded(progs)
    return done, child.pid, out.decode().strip()


def _counts(records: list[dict]) -> dict[tuple[str, str, str], int]:
    """The last read of each {syscall, error, comm} (cumulative: later reads hold earlier);
    every key has label 0 (no filter in these runs)."""
    assert {r["label"] for r in records if "count" in r} <= {0}
    return {(r["syscall"], r["error"], r["comm"]): r["count"] for r in records if "count" in r}


def _lost(stderr: str, channel: str) -> int:
    line = next(x for x in stderr.splitlines() if f"fileerr/{channel}" in x)
    return int(line.split()[2])


def test_failures_are_counted_by_syscall_errno_and_comm(home: Path, tmp_path: Path,
                                                        small_tmpfs: Path) -> None:
    done, _, _ = _run(home, tmp_path, small_tmpfs)
    counts = _counts(done.events)
    # glibc's rename() is the rename syscall on x86_64 (renameat2 where the arch lacks it)
    assert counts == {("openat", "ENOENT", COMM): 1, ("read", "EBADF", COMM): 1,
                      ("rename", "ENOENT", COMM): 1, ("write", "ENOSPC", COMM): 1}
    for r in done.events:
        assert set(r) == {"syscall", "error", "comm", "label", "count"}
    # the counter mode sends no events
    assert _lost(done.stderr, "fileerr_counts") == 0
    line = next(x for x in done.stderr.splitlines() if "fileerr/fileerr_events" in x)
    assert [int(x) for x in line.split()[1:3]] == [0, 0]


def test_event_mode_gives_each_failure_with_its_fd_and_path(home: Path, tmp_path: Path,
                                                            small_tmpfs: Path) -> None:
    done, pid, fd = _run(home, tmp_path, small_tmpfs, "emit_events=1")
    events = [r for r in done.events if "path" in r]
    missing = str(tmp_path / "missing")
    assert events == [
        {"pid": pid, "tid": pid, "error": "ENOENT", "fd": -100, "comm": COMM,
         "syscall": "openat", "path": missing, "path2": "", "label": 0},
        {"pid": pid, "tid": pid, "error": "EBADF", "fd": 12345, "comm": COMM,
         "syscall": "read", "path": "", "path2": "", "label": 0},
        {"pid": pid, "tid": pid, "error": "ENOENT", "fd": -100, "comm": COMM,  # AT_FDCWD
         "syscall": "rename", "path": missing, "path2": missing + ".new", "label": 0},
        {"pid": pid, "tid": pid, "error": "ENOSPC", "fd": int(fd), "comm": COMM,
         "syscall": "write", "path": "", "path2": "", "label": 0},
    ]
    # the counters agree with the events
    assert sum(_counts(done.events).values()) == 4
    assert _lost(done.stderr, "fileerr_counts") == 0 and _lost(done.stderr, "fileerr_events") == 0


# A worker operation: N opens of a path that does not exist (ENOENT each).
FAIL_OPS = """
def fail(n):
    for _ in range(n):
        try:
            os.close(os.open(path + ".missing", os.O_RDONLY))
        except FileNotFoundError:
            pass
"""


def test_the_filter_counts_and_sends_only_the_units_failures(home: Path, tmp_path: Path,
                                                             tree: dict[str, Path]) -> None:
    """Two processes of the same comm fail the same way, one in the unit's child cgroup and one
    in another service: only the first's failures are counted (keyed with label 1) and sent."""
    with unit_run(home, tree, "bpf/fileerr", tmp_path / "events.jsonl", tmp_path / "absent",
                  ops=FAIL_OPS, extra=["--set", "emit_events=1"]) as (inside, outside, run):
        inside.do("fail", 3)
        outside.do("fail", 2)
        time.sleep(1.2)  # one counter read while the program still runs
    done = run.done
    assert done.rc == 0, done.stderr
    comm = Path(f"/proc/{os.getpid()}/comm").read_text().strip()  # the workers' too: python3
    events = [r for r in done.events if "path" in r]
    assert [(e["pid"], e["syscall"], e["error"], e["path"], e["label"]) for e in events] == \
        [(inside.pid, "openat", "ENOENT", str(tmp_path / "absent.missing"), 1)] * 3
    counts = {(r["syscall"], r["error"], r["comm"], r["label"]): r["count"]
              for r in done.events if "count" in r}
    assert counts == {("openat", "ENOENT", comm, 1): 3}
    assert received(done, "fileerr/fileerr_events") == (3, 0)
    assert _lost(done.stderr, "fileerr_counts") == 0
