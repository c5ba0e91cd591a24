"""bpf/runqlat_hist: wakeup-to-run latency per task and per cgroup, with a trigger whose
latency is known to be high or low.

Three busy loops are pinned to CPU 0. A sleeper (3 ms of work, then 1 ms asleep, 300 times)
pinned there too waits behind them after most wakeups (p50 over 1 ms: having just run, it has
no claim to preempt them); the same sleeper free to run on CPU 1 is picked up at once (p50
under 1 ms, on a machine not loaded by other work). The sleeper lives in a cgroup2 directory the test makes, so its waits are also
counted under that cgroup's id (the directory's inode). The Prometheus side is in test_maps.
Under --unit only the unit's woken tasks are measured."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.conftest import Running, cgroup2_dirs
from tests.kernel.monitor import received, workers

SLEEPS = 300
BUSY = "import os; os.sched_setaffinity(0, {0}); os.read(0, 1)\nwhile True: pass\n"
SLEEPER = ("import os, sys, time\nif sys.argv[1] == 'pinned': os.sched_setaffinity(0, {0})\n"
           f"os.read(0, 1)\nfor _ in range({SLEEPS}):\n"
           "    end = time.monotonic() + 0.003\n    while time.monotonic() < end: pass\n"
           "    time.sleep(0.001)\n")


@pytest.fixture
def cgroup() -> Iterator[Path]:
    with cgroup2_dirs("runqlat") as (path,):
        yield path


@pytest.mark.skipif(os.cpu_count() < 2, reason="the unpinned case needs a second CPU")
@pytest.mark.parametrize("placement", ["pinned", "free"])
def test_wakeup_latency_per_task_and_per_cgroup(home: Path, tmp_path: Path, cgroup: Path,
                                                placement: str) -> None:
    loops = [subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.PIPE)
             for _ in range(3)]
    sleeper = subprocess.Popen([sys.executable, "-c", SLEEPER, placement], stdin=subprocess.PIPE)
    (cgroup / "cgroup.procs").write_text(str(sleeper.pid))
    try:
        for loop in loops:
            loop.stdin.write(b"x")
            loop.stdin.flush()
        run = Running(home, "bpf/runqlat_hist", tmp_path / "out.jsonl",
                      extra=["--set", f"targ_tgid={sleeper.pid}"])
        try:
            sleeper.stdin.write(b"x")
            sleeper.stdin.flush()
            assert sleeper.wait(timeout=60) == 0
        finally:
            done = run.stop()
    finally:
        for p in (*loops, sleeper):
            p.kill()
            p.wait()
    assert done.rc == 0, done.stderr
    per_task = [e for e in done.events if e.get("pid") == sleeper.pid]
    per_cgroup = [e for e in done.events if e.get("cgroup") == cgroup.stat().st_ino]
    assert per_task and per_cgroup, done.events[-3:]
    task, group = per_task[-1], per_cgroup[-1]  # cumulative: the last read holds every wait
    # each sleep ends in one wakeup, reading its stdin byte was one more; a sleep whose timer
    # fires before the sleeper has switched out merges with the next wakeup (see test_maps)
    assert SLEEPS - 15 <= task["count"] <= SLEEPS + 3, task
    assert group["count"] == task["count"] and group["buckets"] == task["buckets"]
    assert {e["cgroup"] for e in done.events if "cgroup" in e} == {cgroup.stat().st_ino}
    if placement == "pinned":
        assert task["p50"] > 1000, task  # µs: behind three loops on one CPU
    else:
        assert task["p50"] < 1000, task


def test_the_filter_measures_the_units_woken_tasks_only(home: Path, tmp_path: Path,
                                                        tree: dict[str, Path]) -> None:
    """The woken task decides, not the waker (a timer interrupt, or the test writing to the
    worker's stdin): the unit's and the child's sleepers have histograms, per task and per
    cgroup; the other service's sleeper has none, and no other task of the host either."""
    with workers("/dev/null", 3) as (unit, child, other):
        unit.move(tree["unit"])
        child.move(tree["child"])
        other.move(tree["other"])
        run = Running(home, "bpf/runqlat_hist", tmp_path / "out.jsonl",
                      extra=["--unit", tree["unit"].name])
        try:
            unit.do("sleep", 20)
            child.do("sleep", 30)
            other.do("sleep", 40)
            time.sleep(1.2)  # one more interval: the maps read after the last sleeps
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    per_task = [e for e in done.events if "pid" in e]
    per_cgroup = [e for e in done.events if "cgroup" in e]
    assert {e["pid"] for e in per_task} == {unit.pid, child.pid}  # one thread each
    assert {e["cgroup"] for e in per_cgroup} == {tree["unit"].stat().st_ino,
                                                 tree["child"].stat().st_ino}
    for worker, sleeps, where in ((unit, 20, "unit"), (child, 30, "child")):
        task = [e for e in per_task if e["pid"] == worker.pid][-1]   # cumulative: the last read
        group = [e for e in per_cgroup if e["cgroup"] == tree[where].stat().st_ino][-1]
        # one wakeup per sleep and one for the order on stdin; a sleep whose timer fires before
        # the sleeper has switched out is no wakeup (see the test above)
        assert sleeps - 3 <= task["count"] <= sleeps + 1, task
        assert group["count"] == task["count"], (group, task)
    assert received(done, "runqlat_hist/hists") == (len(per_task), 0)
    assert received(done, "runqlat_hist/cgroup_hists") == (len(per_cgroup), 0)
