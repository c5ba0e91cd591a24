"""runqlat in the running kernel: a thread of this test sleeps, its wakeups come back."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from pathlib import Path

from tests.kernel.conftest import Running, prog_names
from tests.kernel.monitor import received, unit_run

N = 5             # sleeps, each one wakeup + switch-in of the sleeper
SLEEP_S = 0.010
PR_SET_NAME = 15  # <linux/prctl.h>


def _set_thread_name(name: str) -> None:
    """comm of the calling thread (prctl acts on the caller only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NAME, name.encode(), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


class Sleeper(threading.Thread):
    """Names itself, waits for `go`, then sleeps N times."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.tid = 0
        self.named = threading.Event()
        self.go = threading.Event()

    def run(self) -> None:
        self.tid = threading.get_native_id()
        _set_thread_name("rqlt-test")
        self.named.set()
        self.go.wait()
        for _ in range(N):
            time.sleep(SLEEP_S)


class Blocked(threading.Thread):
    """Blocks on a futex for the whole window: never woken, so it must give no event."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.tid = 0
        self.ready = threading.Event()
        self.release = threading.Event()

    def run(self) -> None:
        self.tid = threading.get_native_id()
        _set_thread_name("rqlt-idle")
        self.ready.set()
        self.release.wait()  # no timeout: one futex wait, no periodic wakeups


def test_sleeps_give_wakeup_events(home: Path, tmp_path: Path) -> None:
    sleeper, blocked = Sleeper(), Blocked()
    sleeper.start()
    blocked.start()
    assert sleeper.named.wait(5) and blocked.ready.wait(5)
    time.sleep(0.05)  # let `blocked` reach its futex before we attach

    run = Running(home, "bpf/runqlat", tmp_path / "events.jsonl")
    sleeper.go.set()
    sleeper.join(5)
    assert not sleeper.is_alive()
    done = run.stop()
    blocked.release.set()
    blocked.join(5)

    assert done.rc == 0, done.stderr
    mine = [e for e in done.events if e["pid"] == sleeper.tid]
    # Each sleep ends in one wakeup; the go.wait() futex and GIL hand-offs may add more.
    assert len(mine) >= N, mine
    for e in mine:
        assert e["comm"] == "rqlt-test"
        assert e["tgid"] == os.getpid()
        assert 0 < e["delta_ns"] < 1_000_000_000
        assert e["cpu"] < os.cpu_count()
        assert e["prev_pid"] != sleeper.tid
        assert set(e) == {"delta_ns", "pid", "tgid", "prev_pid", "cpu", "comm", "prev_comm", "label"}

    # Negative: a task asleep the whole window is never woken, so never measured.
    assert not [e for e in done.events if e["pid"] == blocked.tid or e["comm"] == "rqlt-idle"]

    summary = next(line for line in done.stderr.splitlines() if "runqlat/runqlat_events" in line)
    received, lost = (int(x) for x in summary.split()[1:3])
    assert received == len(done.events) and lost == 0
    assert not {n for n in prog_names() if n.startswith("runqlat")}


def test_the_filter_follows_the_woken_task_not_the_waker(home: Path, tmp_path: Path,
                                                          tree: dict[str, Path]) -> None:
    """sched_wakeup runs in the waker's context: the filter must judge the woken task by its own
    cgroup, so a sleeper in the unit passes and one in the other service never reaches the ring."""
    with unit_run(home, tree, "bpf/runqlat", tmp_path / "events.jsonl",
                  "/dev/null") as (inside, outside, run):
        inside.do("sleep", N)
        outside.do("sleep", N)
    done = run.done
    assert done.rc == 0, done.stderr
    mine = [e for e in done.events if e["tgid"] == inside.pid]
    assert len(mine) >= N, done.stderr
    assert {e["label"] for e in done.events} == {1}
    assert {e["tgid"] for e in done.events} == {inside.pid}
    assert received(done, "runqlat/runqlat_events")[0] == len(done.events)
