"""bpf/runqlat_hist: wakeup-to-run latency per task and per cgroup, with a trigger whose
latency is known to be high or low.

Three busy loops are pinned to CPU 0. A sleeper (3 ms of work, then 1 ms asleep, 300 times)
pinned there too waits behind them after most wakeups (p50 over 1 ms: having just run, it has
no claim to preempt them); the same sleeper free to run on CPU 1 is picked up at once (p50
under 1 ms, on a machine not loaded by other work). The sleeper lives in a cgroup2 directory the test makes, so its waits are also
counted under that cgroup's id (the directory's inode). The Prometheus side is in test_maps."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.conftest import Running, cgroup2_dirs

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
