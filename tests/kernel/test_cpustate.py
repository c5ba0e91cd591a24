"""bpf/cpustate: on/off-CPU time and voluntary vs involuntary switches per process.

A child that sleeps 1 ms 100 times switches out voluntarily at least 100 times and spends at
least 100 ms off CPU; two busy loops sharing CPU 0 preempt each other (involuntary switches);
under --unit only the unit's processes have entries."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from tests.kernel.conftest import Running
from tests.kernel.monitor import received, workers

SLEEPER = "import os, time\nos.read(0, 1)\nfor _ in range(100): time.sleep(0.001)\n"
BUSY = ("import os, time\nos.sched_setaffinity(0, {0})\nos.read(0, 1)\nend = time.monotonic() + 1.5\n"
        "while time.monotonic() < end: pass\n")


def _last(events: list[dict], pid: int) -> dict:
    mine = [e for e in events if e["pid"] == pid]
    assert mine, f"no record for pid {pid}"
    return mine[-1]  # cumulative: the last read holds everything


def _run_child(home: Path, tmp_path: Path, source: str, copies: int = 1) -> tuple[list, object]:
    children = [subprocess.Popen([sys.executable, "-c", source], stdin=subprocess.PIPE)
                for _ in range(copies)]
    targ = children[0].pid if copies == 1 else 0
    run = Running(home, "bpf/cpustate", tmp_path / "out.jsonl",
                  extra=["--set", f"targ_tgid={targ}"] if targ else [])
    try:
        for c in children:
            c.stdin.write(b"x")
            c.stdin.flush()
        for c in children:
            assert c.wait(timeout=30) == 0
    finally:
        for c in children:
            c.kill()
        done = run.stop()
    assert done.rc == 0, done.stderr
    summary = re.search(r"cpustate/cpustate\s+(\d+)\s+(\d+)", done.stderr)
    assert summary and summary[2] == "0", done.stderr  # no process left out of a full map
    return children, done


def test_a_hundred_short_sleeps_are_voluntary_switches(home: Path, tmp_path: Path) -> None:
    (child,), done = _run_child(home, tmp_path, SLEEPER)
    assert {e["pid"] for e in done.events} == {child.pid}  # targ_tgid keeps only the child
    state = _last(done.events, child.pid)
    assert state["voluntary"] >= 100, state
    assert state["off_ns"] >= 100 * 1_000_000, state  # each sleep is at least 1 ms off CPU
    assert state["on_ns"] > 0 and state["comm"] == "python3", state


def test_two_loops_on_one_cpu_preempt_each_other(home: Path, tmp_path: Path) -> None:
    children, done = _run_child(home, tmp_path, BUSY, copies=2)
    for child in children:
        state = _last(done.events, child.pid)
        assert state["involuntary"] >= 10, state  # 1.5 s shared: many time slices each
        assert state["on_ns"] >= 100_000_000, state  # half of 1.5 s each, less other work there


def test_the_filter_counts_the_units_processes_only(home: Path, tmp_path: Path,
                                                    tree: dict[str, Path]) -> None:
    """The task switched out decides, and its clock carries the label to its switch-in: the
    unit's sleepers get entries (label 1) with their sleeps counted; the other service's
    sleeper, and every other process on the host, gets no entry at all."""
    with workers("/dev/null", 3) as (unit, child, other):
        unit.move(tree["unit"])
        child.move(tree["child"])
        other.move(tree["other"])
        run = Running(home, "bpf/cpustate", tmp_path / "out.jsonl",
                      extra=["--unit", tree["unit"].name])
        try:
            unit.do("sleep", 20)
            child.do("sleep", 30)
            other.do("sleep", 40)
            time.sleep(1.2)  # one more interval: the map read after the last sleeps
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    assert {e["pid"] for e in done.events} == {unit.pid, child.pid}
    assert {e["label"] for e in done.events} == {1}
    for worker, sleeps in ((unit, 20), (child, 30)):
        state = _last(done.events, worker.pid)
        # the sleeps, and the blocks on stdin for the next order (after the run started)
        assert sleeps <= state["voluntary"] <= sleeps + 2, state
        # time.sleep(0.002) sleeps to a deadline it takes before the call: off CPU a little
        # less than 2 ms each
        assert state["off_ns"] >= sleeps * 1_500_000, state
    assert received(done, "cpustate/cpustate") == (len(done.events), 0)
