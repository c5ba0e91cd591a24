"""bpf/cpu_sample under the process filter: a perf_event sample interrupts whatever runs, and the
interrupted task (current) decides. Busy workers in the unit and its child are sampled with label
1; one as busy in another service, and the idle task, never reach the ring. (Its perf_event
attach, knobs and map sizing are tested in test_attach.py and test_controls.py.)"""

from __future__ import annotations

from pathlib import Path

from tests.kernel.conftest import Running
from tests.kernel.monitor import received, workers
from tests.kernel.test_attach import link_progs_named

# burn(n): keep a CPU busy for n tenths of a second
BURN = """
def burn(n):
    end = time.monotonic() + n / 10
    while time.monotonic() < end:
        pass
"""


def test_the_filter_samples_the_units_processes_only(home: Path, tmp_path: Path,
                                                     tree: dict[str, Path]) -> None:
    with workers("/dev/null", 3, ops=BURN) as (unit, child, other):
        unit.move(tree["unit"])
        child.move(tree["child"])
        other.move(tree["other"])
        run = Running(home, "bpf/cpu_sample", tmp_path / "samples.jsonl",
                      extra=["--unit", tree["unit"].name])
        try:
            unit.do("burn", 10)
            other.do("burn", 10)
            child.do("burn", 10)
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    by_pid = {pid: [e for e in done.events if e["pid"] == pid] for pid in (unit.pid, child.pid)}
    # 99 Hz for 1 s is ~99 samples with a CPU to itself; the machine is shared, so a floor
    for pid, samples in by_pid.items():
        assert len(samples) >= 10, (pid, len(samples))
    # nothing else: not the other service's burner, not the idle task (pid 0), not the loader
    assert {e["pid"] for e in done.events} == {unit.pid, child.pid}
    assert {e["label"] for e in done.events} == {1}
    assert received(done, "cpu_sample/cpu_samples") == (len(done.events), 0)
    assert link_progs_named("do_sample") == 0
