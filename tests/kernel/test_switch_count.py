"""bpf/switch_count under the process filter: sched_switch runs in the context of the task going
off CPU, so that task's cgroup decides; a sleeper in the unit is counted, one in another service
never reaches the ring. (Its forms: and knobs are tested in test_controls.py.)"""

from __future__ import annotations

from pathlib import Path

from tests.kernel.conftest import Running, prog_names
from tests.kernel.monitor import received, workers

N = 20                 # sleeps per worker: one voluntary switch away each
TASK_INTERRUPTIBLE = 1


def test_the_filter_passes_the_units_switches_only(home: Path, tmp_path: Path,
                                                   tree: dict[str, Path]) -> None:
    with workers("/dev/null", 3) as (unit, child, other):
        unit.move(tree["unit"])
        child.move(tree["child"])
        other.move(tree["other"])
        run = Running(home, "bpf/switch_count", tmp_path / "events.jsonl",
                      extra=["--unit", tree["unit"].name])
        try:
            unit.do("sleep", N)
            child.do("sleep", N)
            other.do("sleep", 2 * N)
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    assert {e["tgid"] for e in done.events} == {unit.pid, child.pid}
    assert {e["label"] for e in done.events} == {1}
    for w in (unit, child):
        slept = [e for e in done.events if e["tgid"] == w.pid
                 and e["prev_state"] & TASK_INTERRUPTIBLE]  # | TASK_FREEZABLE (6.1+)
        # the sleeps, and the block on stdin for the next order if it came before the stop
        assert len(slept) in (N, N + 1), len(slept)
    assert not [e for e in done.events if e["tgid"] == other.pid]
    # the other service's switches never left the kernel: the ring got only what was written
    assert received(done, "switch_count/switch_events") == (len(done.events), 0)
    assert "on_switch_btf" not in prog_names()
