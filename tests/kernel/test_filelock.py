"""bpf/filelock in the running kernel: a child process holds a lock on a file the test made
while this process asks for the same lock and blocks. Its event carries the wait (at least the
part of the hold it sat through), the file's inode and device, the holder's pid, and the
result; a non-blocking attempt meanwhile fails EAGAIN; POSIX (lockf), OFD and flock locks."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.kernel.conftest import Finished, Running
from tests.kernel.conftest import wait_for as _wait
from tests.kernel.monitor import received, unit_run

HOLD = 0.3            # s the child keeps the lock after saying so
MIN_WAIT_NS = 200_000_000  # what this process must have waited at least: the hold minus the
                      # time it takes us to read the child's line and call in (ms, not 100 ms)

# The holder: takes the lock with the given call, says "locked", holds it HOLD s, lets go.
HOLDER = """
import fcntl, struct, sys, time
how, path, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
f = open(path, "r+")
if how == "lockf":
    fcntl.lockf(f, fcntl.LOCK_EX)
elif how == "flock":
    fcntl.flock(f, fcntl.LOCK_EX)
else:  # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD), padded to 32
    fcntl.fcntl(f, fcntl.F_OFD_SETLKW, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
print("locked", flush=True)
time.sleep(hold)
"""






def _lost(stderr: str, channel: str) -> int:
    line = next(x for x in stderr.splitlines() if f"filelock/{channel}" in x)
    return int(line.split()[2])


def _events(records: list[dict], pid: int, ino: int) -> list[dict]:
    return [r for r in records if "wait_ns" in r and r["pid"] == pid and r["ino"] == ino]


def _contend(home: Path, tmp_path: Path, how: str,
             lock: Callable[[object, bool], None], unlock: Callable[[object], None]
             ) -> tuple[Finished, int, float, os.stat_result]:
    """Run filelock while a child holds `how` on a fresh file and this process first tries
    without waiting (EAGAIN), then waits for it, then unlocks. (done, child pid, our measured
    wait in ns, the file's stat)."""
    path = tmp_path / "locked"
    path.write_bytes(b"")
    st = os.stat(path)
    out = tmp_path / "filelock.jsonl"
    run = Running(home, "bpf/filelock", out)
    try:
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, how, str(path), str(HOLD)],
                                  stdout=subprocess.PIPE, text=True)
        with open(path, "r+") as f:
            assert holder.stdout.readline() == "locked\n"
            fcntl.fcntl(f, fcntl.F_GETFL)  # the negative case: not a lock call, no event
            try:
                lock(f, False)
                raise AssertionError("the lock was free while the child held it")
            except BlockingIOError:
                pass
            t0 = time.monotonic_ns()
            lock(f, True)
            measured = time.monotonic_ns() - t0
            unlock(f)
        assert holder.wait(timeout=10) == 0
        me = os.getpid()
        _wait(out, lambda r: len(_events(r, me, st.st_ino)) == 3, "this process's 3 lock calls")
        _wait(out, lambda r: any(h.get("kind") == _KIND[how] and h["count"] >= 1
                                 for h in r if "buckets" in h), "the wait histogram")
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    assert _lost(done.stderr, "filelock_events") == _lost(done.stderr, "filelock_hists") == 0
    return done, holder.pid, measured, st


_KIND = {"lockf": "POSIX", "ofd": "OFD", "flock": "FLOCK"}


def _check(done: Finished, how: str, child: int, measured: int, st: os.stat_result,
           lock_type: str, unlock_type: str, blocker: int, unlock_blocking: bool) -> None:
    kind = _KIND[how]
    me, tid = os.getpid(), threading.get_native_id()
    mine = _events(done.events, me, st.st_ino)
    assert len(mine) == 3, mine  # F_GETFL made none
    refused, waited, unlocked = mine
    common = {"pid": me, "tid": tid, "ino": st.st_ino, "dev": st.st_dev, "kind": kind,
              "comm": Path("/proc/self/comm").read_text().strip()[:15], "label": 0}
    assert {k: refused[k] for k in common} == common
    assert {k: waited[k] for k in common} == common
    assert {k: unlocked[k] for k in common} == common
    assert (refused["type"], refused["blocking"], refused["ret"], refused["blocker_pid"]) == \
        (lock_type, False, "EAGAIN", 0)
    assert (waited["type"], waited["blocking"], waited["ret"], waited["blocker_pid"]) == \
        (lock_type, True, 0, blocker)
    # the kernel's wait lies inside the one this process measured around the call
    assert MIN_WAIT_NS <= waited["wait_ns"] <= measured, (waited, measured)
    assert (unlocked["type"], unlocked["blocking"], unlocked["ret"], unlocked["blocker_pid"]) == \
        (unlock_type, unlock_blocking, 0, 0)
    assert unlocked["wait_ns"] < MIN_WAIT_NS
    # the holder's own lock call did not wait
    held = [e for e in _events(done.events, child, st.st_ino) if e["type"] == lock_type]
    assert len(held) == 1 and held[0]["ret"] == 0 and held[0]["blocker_pid"] == 0, held
    # our wait is in the histogram of its kind: a slot at or above 2^17 us (131 ms)
    hists = [h for h in done.events if "buckets" in h and h["kind"] == kind]
    assert hists and set(hists[-1]) == {"kind", "unit", "buckets", "count", "sum", "p50", "p90", "p99"}
    last = hists[-1]
    assert last["unit"] == "us" and last["sum"] >= MIN_WAIT_NS // 1000
    assert sum(b["count"] for b in last["buckets"]
               if b["le"] == "+Inf" or b["le"] >= (1 << 17) - 1) >= 1, last


def test_lockf_waits_for_the_holder(home: Path, tmp_path: Path) -> None:
    # Python's lockf is fcntl(F_SETLKW) (F_SETLK with LOCK_NB), unlock included
    def lock(f: object, wait: bool) -> None:
        fcntl.lockf(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)

    done, child, measured, st = _contend(home, tmp_path, "lockf", lock,
                                         lambda f: fcntl.lockf(f, fcntl.LOCK_UN))
    _check(done, "lockf", child, measured, st, "F_WRLCK", "F_UNLCK", blocker=child,
           unlock_blocking=True)


def test_ofd_lock_waits_for_the_holder(home: Path, tmp_path: Path) -> None:
    def flock_struct(kind: int) -> bytes:
        return struct.pack("hhqqi4x", kind, 0, 0, 0, 0)

    def lock(f: object, wait: bool) -> None:
        fcntl.fcntl(f, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK,
                    flock_struct(fcntl.F_WRLCK))

    done, child, measured, st = _contend(
        home, tmp_path, "ofd", lock,
        lambda f: fcntl.fcntl(f, fcntl.F_OFD_SETLK, flock_struct(fcntl.F_UNLCK)))
    # an OFD lock belongs to an open file, and F_GETLK says pid -1, but the kernel keeps the
    # pid that took it: the holder is named here too
    _check(done, "ofd", child, measured, st, "F_WRLCK", "F_UNLCK", blocker=child,
           unlock_blocking=False)


def test_flock_waits_for_the_holder(home: Path, tmp_path: Path) -> None:
    def lock(f: object, wait: bool) -> None:
        fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)

    done, child, measured, st = _contend(home, tmp_path, "flock", lock,
                                         lambda f: fcntl.flock(f, fcntl.LOCK_UN))
    _check(done, "flock", child, measured, st, "LOCK_EX", "LOCK_UN", blocker=child,
           unlock_blocking=False)


# A worker operation: N uncontended flock(LOCK_EX) + flock(LOCK_UN) pairs on the worker's file.
LOCK_OPS = """
import fcntl
def lock(n):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    for _ in range(n):
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
"""


def test_the_filter_reports_only_the_units_lock_calls(home: Path, tmp_path: Path,
                                                      tree: dict[str, Path]) -> None:
    """The same flock pairs from the unit's child cgroup and from another service: only the
    unit's calls are events (label 1) and only its blocking locks are in the histogram."""
    path = tmp_path / "locked"
    with unit_run(home, tree, "bpf/filelock", tmp_path / "filelock.jsonl", path,
                  ops=LOCK_OPS) as (inside, outside, run):
        inside.do("lock", 3)
        outside.do("lock", 2)
        time.sleep(1.2)  # one histogram read while the program still runs
    done = run.done
    assert done.rc == 0, done.stderr
    ino = path.stat().st_ino
    events = [r for r in done.events if "wait_ns" in r]
    assert [(e["pid"], e["ino"], e["kind"], e["type"], e["ret"], e["label"]) for e in events] == \
        [(inside.pid, ino, "FLOCK", "LOCK_EX", 0, 1), (inside.pid, ino, "FLOCK", "LOCK_UN", 0, 1)] * 3
    hists = [h for h in done.events if "buckets" in h]
    assert {h["kind"] for h in hists} == {"FLOCK"} and hists[-1]["count"] == 3
    assert received(done, "filelock/filelock_events") == (6, 0)
    assert _lost(done.stderr, "filelock_hists") == 0
