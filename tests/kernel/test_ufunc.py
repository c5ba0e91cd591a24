"""bpf/ufunc (uprobe + uretprobe on libc's getppid, every process) under the process filter:
only the calls of the process in the unit reach the ring, with label 1. Its attach kinds and
their errors are tested in test_attach.py and test_uprobe_follow.py."""

from __future__ import annotations

import os
from pathlib import Path

from tests.kernel.monitor import received, unit_run


def test_the_filter_reports_only_the_units_calls(home: Path, tmp_path: Path,
                                                 tree: dict[str, Path]) -> None:
    """The same getppid() calls from the unit's child cgroup and from another service: each of
    the first's is a call and a return event (label 1), none of the other's is."""
    with unit_run(home, tree, "bpf/ufunc", tmp_path / "calls.jsonl",
                  "/dev/null") as (inside, outside, run):
        inside.do("getppid", 3)
        outside.do("getppid", 2)
    done = run.done
    assert done.rc == 0, done.stderr
    # the workers' parent is this test process: getppid() returned its pid
    assert [(e["pid"], e["tid"], e["is_return"], e["label"]) for e in done.events] == \
        [(inside.pid, inside.pid, 0, 1), (inside.pid, inside.pid, 1, 1)] * 3
    assert [e["value"] for e in done.events if e["is_return"]] == [os.getpid()] * 3
    assert received(done, "ufunc/ufunc_events") == (6, 0)
