"""bpf/runqlen: run-queue length per CPU from perf-event samples, as a linear histogram.

Four busy loops pinned to CPU 0 keep at least three tasks waiting behind the running one
whenever CPU 0 is sampled (other work on the machine can only add to that). In group mode the
queue is the sampled task's group's: the loops share this test's group, so the samples that
land on them see three. It has no process filter (a sample is of a CPU's queue): refused under
one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import Running, bpfdepot

BUSY = "import os; os.sched_setaffinity(0, {0}); r = os.read(0, 1)\nwhile True: pass\n"


def _share(record: dict, at_least: int) -> float:
    return sum(b["count"] for b in record["buckets"] if b["le"] == "+Inf" or b["le"] >= at_least
               ) / record["count"]


@pytest.mark.skipif(os.cpu_count() < 2, reason="needs a second CPU for the loader")
@pytest.mark.parametrize("group", [0, 1], ids=["cpu", "group"])
def test_four_busy_loops_on_cpu0_queue_three_behind_the_runner(home: Path, tmp_path: Path,
                                                               group: int) -> None:
    loops = [subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.PIPE)
             for _ in range(4)]
    try:
        for p in loops:  # released together, each already pinned to CPU 0
            p.stdin.write(b"x")
            p.stdin.flush()
        run = Running(home, "bpf/runqlen", tmp_path / "out.jsonl",
                      extra=["--set", "count_running=0", "--set", f"group_queue={group}"])
        try:
            os.sched_setaffinity(0, {1})  # this test and its loader stay off CPU 0 meanwhile
            time.sleep(2.5)
        finally:
            os.sched_setaffinity(0, set(range(os.cpu_count())))
            done = run.stop()
    finally:
        for p in loops:
            p.kill()
            p.wait()
    assert done.rc == 0, done.stderr
    cpu0 = [r for r in done.events if r["cpu"] == 0]
    assert cpu0 and set(done.events[-1]) >= {"cpu", "unit", "buckets", "count", "p50"}
    last = cpu0[-1]  # cumulative: the last record holds every sample
    assert last["unit"] == "tasks" and last["count"] >= 150  # 99 Hz for 2.5 s, less start-up
    # group mode: a sample landing on another group's task (another session's) sees its queue
    assert _share(last, 3) > (0.4 if group else 0.9), last
    summary = re.search(r"runqlen/runqlen_hists\s+(\d+)\s+(\d+)", done.stderr)
    assert summary and int(summary[1]) == len(done.events) and summary[2] == "0", done.stderr
    assert {r["cpu"] for r in done.events} == set(range(os.cpu_count()))  # every CPU sampled


def test_the_process_filter_is_refused_by_name(home: Path) -> None:
    """A run-queue sample belongs to a CPU, not to a process: runqlen has no filter to honour,
    so a run asking for one refuses it before anything loads."""
    done = bpfdepot(home, "run", "bpf/runqlen", "--duration", "1", "--pid", str(os.getpid()))
    assert done.returncode == 2, done.stderr
    assert "'runqlen' does not honour the process filter this run asks for" in done.stderr
    assert "attached" not in done.stderr
