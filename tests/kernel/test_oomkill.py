"""oomkill in the running kernel: a child confined to a 64 MiB memory cgroup allocates 512 MiB
and is OOM-killed; exactly one event names it, as victim and as trigger."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.conftest import Running
from tests.kernel.monitor import received, workers
from tests.kernel.test_pagefault import prog_ids

LIMIT = 64 << 20
# Blocked on stdin until the test has moved it into the cgroup; then 512 MiB, every byte
# written (b"\x01" * n fills the buffer, so no page stays untouched and unaccounted).
HOG = "import sys; sys.stdin.read(1); b = b'\\x01' * (512 << 20); print(len(b))"


def _own_memcg() -> tuple[str, Path]:
    """("v1" | "v2", the directory of this process's memory cgroup)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return "v1", Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    # cgroup2 only: the memory controller is on the unified hierarchy
    unified = Path("/sys/fs/cgroup")
    if "memory" in (unified / "cgroup.controllers").read_text().split():
        path = next(l for l in Path("/proc/self/cgroup").read_text().splitlines()
                    if l.startswith("0::")).split(":", 2)[2]
        return "v2", unified / path.lstrip("/")
    pytest.skip("no memory cgroup controller (neither v1 nor v2) on this host")


@contextlib.contextmanager
def memcg(limit: int) -> Iterator[Path]:
    """A child memory cgroup of this process's own, limited to ``limit`` bytes, no swap; removed
    after. v1 (this host, cgroup-hybrid): memory.limit_in_bytes (+ memsw when swap accounting is
    on). v2: memory.max + memory.swap.max; that branch is not exercised here (this host's
    memory controller is v1) and v2 needs the parent's subtree_control to enable memory."""
    version, parent = _own_memcg()
    child = parent / f"bpfdepot-oom-{uuid.uuid4().hex[:8]}"
    child.mkdir()
    try:
        if version == "v1":
            (child / "memory.limit_in_bytes").write_text(str(limit))
            if (child / "memory.memsw.limit_in_bytes").exists():
                (child / "memory.memsw.limit_in_bytes").write_text(str(limit))
        else:
            (child / "memory.max").write_text(str(limit))
            if (child / "memory.swap.max").exists():
                (child / "memory.swap.max").write_text("0")
        yield child
    finally:
        for _ in range(50):  # rmdir fails with EBUSY until the killed task is reaped
            try:
                child.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def _own_cgroup2() -> int:
    """The cgroup2 id (directory inode) of this test process on the unified hierarchy."""
    from loader.attach.cgroup import cgroup2_mounts

    line = next(x for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::"))
    return os.stat(str(cgroup2_mounts()[0]) + line[3:].rstrip("/")).st_ino


def test_oom_kill_in_a_limited_memcg_is_one_event(home: Path, tmp_path: Path) -> None:
    with memcg(LIMIT) as cg:
        hog = subprocess.Popen([sys.executable, "-c", HOG], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL)
        try:
            (cg / "cgroup.procs").write_text(str(hog.pid))  # before it allocates anything big
            comm = Path(f"/proc/{hog.pid}/comm").read_text().strip()
            before = prog_ids("oomkill")
            run = Running(home, "bpf/oomkill", tmp_path / "oom.jsonl")
            ours = prog_ids("oomkill") - before
            hog.stdin.write(b"x")
            hog.stdin.close()
            rc = hog.wait(timeout=60)
            done = run.stop()
        finally:
            hog.kill()
            hog.wait()

    assert rc == -signal.SIGKILL, rc   # 137 in a shell
    assert done.rc == 0, done.stderr
    mine = [e for e in done.events if e["victim_pid"] == hog.pid]
    assert len(mine) == 1, done.events
    [e] = mine
    assert e["victim_comm"] == comm
    # the hog's own allocation hit the limit: it is the trigger too
    assert (e["trigger_pid"], e["trigger_comm"]) == (hog.pid, e["victim_comm"])
    assert e["victim_uid"] == os.getuid()
    # kB: ~64 MiB charged to the memcg, plus what the interpreter mapped before it moved in
    # (v1 leaves earlier charges with the old cgroup); far from the 512 MiB asked for
    assert 32 << 10 <= e["anon_rss_kb"] <= 2 * LIMIT >> 10
    assert e["oom_score_adj"] == 0 and e["total_vm_kb"] >= e["anon_rss_kb"]
    # cgroup2 ids, read from the victim's task and from current: both the hog's, which is
    # where this test runs on the unified hierarchy (the memcg is v1 here; on a v2-only host
    # the hog's directory is the memcg itself)
    kind, _ = _own_memcg()
    expected = cg.stat().st_ino if kind == "v2" else _own_cgroup2()
    assert e["victim_cgroup"] == e["trigger_cgroup"] == expected, (e, expected)
    assert set(e) == {"total_vm_kb", "anon_rss_kb", "file_rss_kb", "shmem_rss_kb", "pgtables_kb",
                      "victim_cgroup", "trigger_cgroup", "victim_pid", "victim_uid", "trigger_pid", "trigger_tid",
                      "oom_score_adj", "victim_comm", "trigger_comm", "label"}
    assert e["label"] == 0   # no filter in this run
    # Negative: nothing else in the run was killed by this test's cgroup
    assert not [x for x in done.events if x["victim_pid"] != hog.pid and x["trigger_pid"] == hog.pid]
    summary = next(line for line in done.stderr.splitlines() if "oomkill/oomkill_events" in line)
    received, lost = (int(x) for x in summary.split()[1:3])
    assert received == len(done.events) and lost == 0
    assert ours and not ours & prog_ids("oomkill")   # unloaded at stop


# Worker operations for the filter test: "hold N" keeps N MiB (every byte written, so charged to
# the memcg it is in now); "alloc N" writes N MiB and lets them go.
MEM_OPS = """
kept = []
def hold(n):
    kept.append(b'\\x01' * (n << 20))
def alloc(n):
    len(b'\\x02' * (n << 20))
"""
SHARE = 40   # MiB each: two of them do not fit in LIMIT (64 MiB), one does


def _oom_between(victim, trigger, memory: Path) -> None:
    """``victim`` holds SHARE MiB in ``memory``; ``trigger`` (same memcg) then asks for SHARE
    more: the memcg OOM killer picks the victim (oom_score_adj 1000) and the trigger's
    allocation completes once the victim's memory is freed."""
    victim.move(memory)
    trigger.move(memory)
    Path(f"/proc/{victim.pid}/oom_score_adj").write_text("1000")
    victim.do("hold", SHARE)
    trigger.do("alloc", SHARE)
    assert victim.proc.wait(timeout=30) == -signal.SIGKILL


def test_the_filter_follows_the_oom_victim_not_the_trigger(home: Path, tmp_path: Path,
                                                          tree: dict[str, Path]) -> None:
    """mark_victim runs in the task whose allocation failed: the filter must judge the victim
    by its own cgroup2. A victim in the unit killed by an outsider's allocation is reported
    (label 1); a victim outside killed by an allocation in the unit is not."""
    run = Running(home, "bpf/oomkill", tmp_path / "oom.jsonl", extra=["--unit", tree["unit"].name])
    try:
        with memcg(LIMIT) as mem, workers("/dev/null", 2, ops=MEM_OPS) as (inside, outsider):
            inside.move(tree["child"])
            outsider.move(tree["other"])
            _oom_between(inside, outsider, mem)
        with memcg(LIMIT) as mem, workers("/dev/null", 2, ops=MEM_OPS) as (insider, outside):
            insider.move(tree["child"])
            outside.move(tree["other"])
            _oom_between(outside, insider, mem)
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    [e] = done.events   # the outside victim never reached the ring
    assert (e["victim_pid"], e["trigger_pid"], e["label"]) == (inside.pid, outsider.pid, 1)
    assert e["victim_cgroup"] == tree["child"].stat().st_ino
    assert e["trigger_cgroup"] == tree["other"].stat().st_ino
    assert e["oom_score_adj"] == 1000
    assert received(done, "oomkill/oomkill_events") == (1, 0)
