"""kmemleak in the running kernel: a child holds 1000 eventfds, then closes them; the kernel
memory it holds outstanding follows, by call site and by pid. A tiny `allocs` map shows that
allocations it cannot track are counted lost, not dropped silently."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.kernel.conftest import ROOT, Running
from tests.kernel.conftest import records as _records, wait_for as _wait
from tests.kernel.monitor import unit_run
from tests.kernel.test_pagefault import prog_ids

N = 1000
# After the close, what the child still holds: its grown fd table (alloc_fdtable: the table,
# its bitmaps; kept until exit), slab metadata vectors allocated for new slabs on its behalf
# (alloc_slab_obj_exts), an ida/maple-tree node or so. 5 here; 32 leaves room, far below N.
SLACK = 32
HOLDER = f"""
import os, sys
sys.stdin.readline()
fds = [os.eventfd(0) for _ in range({N})]
print("held", flush=True)
sys.stdin.readline()
for fd in fds:
    os.close(fd)
print("closed", flush=True)
sys.stdin.readline()
"""


def _bundle(tmp: Path, maps: str | None = None) -> Path:
    """bpf/kmemleak read every 200 ms (and, with ``maps``, another allocs size)."""
    out = tmp / "kmemleak"
    shutil.copytree(ROOT / "bpf" / "kmemleak", out)
    text = (out / "manifest.yaml").read_text().replace("interval: 5s", "interval: 200ms")
    if maps:
        text = text.replace("allocs: {max_entries: 131072}", maps)
    (out / "manifest.yaml").write_text(text)
    return out






def _pid_records(records: list[dict], pid: int) -> list[dict]:
    return [r for r in records if r.get("pid") == pid]


def _lost(stderr: str, channel: str) -> int:
    m = re.search(rf"kmemleak/{channel}\s+(\d+)\s+(\d+)", stderr)
    assert m, stderr
    return int(m.group(2))


class Holder:
    """The child, started (and its interpreter's own allocations done) before the run."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def step(self, expect: str | None) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        if expect:
            assert self.proc.stdout.readline().strip() == expect

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_held_eventfds_are_outstanding_until_closed(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "kmem.jsonl"
    child = Holder()
    pid = child.proc.pid
    try:
        before = prog_ids("kmemleak")
        run = Running(home, str(_bundle(tmp_path)), out, extra=["--set", f"targ_tgid={pid}"])
        ours = prog_ids("kmemleak") - before
        child.step("held")
        _wait(out, lambda rs: any(r["count"] >= N for r in _pid_records(rs, pid)), "1000 held")
        seen = len(_records(out))
        held_sites = [r for r in _records(out) if "call_site" in r]
        child.step("closed")
        _wait(out, lambda rs: any(r["count"] <= SLACK for r in _pid_records(rs[seen:], pid)),
              "the close")
        child.step(None)
        assert child.proc.wait(timeout=10) == 0
        done = run.stop()
    finally:
        child.close()
    assert done.rc == 0, done.stderr

    mine = _pid_records(done.events, pid)
    assert {r["comm"] for r in mine} == {"python3"} and all(r["cgroup"] > 0 for r in mine)
    assert {r["label"] for r in mine} == {0}   # no filter in this run
    held = max(mine, key=lambda r: r["count"])
    assert held["count"] >= N and held["bytes"] >= N * 64
    # by call site, while held: eventfd's context is a kmalloc in do_eventfd (64 bytes each on
    # x86_64), its struct file a kmem_cache_alloc (filp) in alloc_empty_file
    sites = {re.sub(r"\+0x[0-9a-f]+$", "", r["call_site"]): r for r in held_sites}
    assert sites["do_eventfd"]["count"] >= N, sites
    assert sites["do_eventfd"]["bytes"] == sites["do_eventfd"]["count"] * 64
    assert sites["alloc_empty_file"]["count"] >= N, sites
    # after the close: back to the slack, do_eventfd to 0 (eventfd_ctx is freed at close)
    after = [r for r in done.events[seen:] if "call_site" in r]
    assert [r for r in mine[-1:] if r["count"] <= SLACK], mine[-3:]
    assert [r["count"] for r in after if r["call_site"].startswith("do_eventfd+")][-1] == 0
    # targ_tgid: nobody else's allocations
    assert {r["pid"] for r in done.events if "pid" in r} == {pid}
    assert _lost(done.stderr, "outstanding_by_site") == 0
    assert _lost(done.stderr, "outstanding_by_pid") == 0
    assert len(ours) == 4 and not ours & prog_ids("kmemleak")   # unloaded at stop


def test_allocations_that_do_not_fit_are_counted_lost(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "kmem.jsonl"
    child = Holder()
    pid = child.proc.pid
    try:
        run = Running(home, str(_bundle(tmp_path, "allocs: {max_entries: 100}")), out,
                      extra=["--set", f"targ_tgid={pid}"])
        child.step("held")
        _wait(out, lambda rs: bool(_pid_records(rs, pid)), "a read")
        done = run.stop()
    finally:
        child.close()
    assert done.rc == 0, done.stderr
    # 1000 eventfds are >= 2000 objects held at once (context + file each; 6.18 adds a dentry
    # and an LSM blob); `allocs` tracks at most 100 of them, the rest are each channel's lost
    assert max(r["count"] for r in _pid_records(done.events, pid)) <= 100
    assert _lost(done.stderr, "outstanding_by_pid") >= 2 * N - 100
    assert _lost(done.stderr, "outstanding_by_site") >= 2 * N - 100


# Worker operations: "hold N" makes N eventfds and keeps them, "release N" closes them all.
EVENTFD_OPS = """
fds = []
def hold(n):
    fds.extend(os.eventfd(0) for _ in range(n))
def release(n):
    while fds:
        os.close(fds.pop())
"""


def _site(records: list[dict], name: str) -> list[dict]:
    return [r for r in records if re.sub(r"\+0x[0-9a-f]+$", "", r.get("call_site", "")) == name]


def test_the_filter_tracks_only_the_units_allocations(home: Path, tmp_path: Path,
                                                      tree: dict[str, Path]) -> None:
    """Two processes hold N eventfds each, one in the unit's child cgroup and one in another
    service: only the first's allocations are outstanding (by pid, label 1, and by site), and
    its close takes them out again."""
    out = tmp_path / "kmem.jsonl"
    with unit_run(home, tree, str(_bundle(tmp_path)), out, "/dev/null",
                  ops=EVENTFD_OPS) as (inside, outside, run):
        inside.do("hold", N)
        outside.do("hold", N)
        seen = len(_wait(out, lambda rs: any(r["count"] >= N for r in _pid_records(rs, inside.pid)),
                         "the unit's held eventfds"))
        # the second read after that one was made after both held theirs
        _wait(out, lambda rs: len(_site(rs[seen:], "do_eventfd")) >= 2, "two later reads")
        held = _site(_records(out)[seen:], "do_eventfd")[-1]
        inside.do("release", N)
        _wait(out, lambda rs: any(r["count"] <= SLACK for r in _pid_records(rs[seen:], inside.pid)),
              "the unit's close")
    done = run.done
    assert done.rc == 0, done.stderr
    # by site: the unit's eventfd contexts, exactly (64 bytes each on x86_64)
    assert (held["count"], held["bytes"]) == (N, N * 64), held
    owners = [r for r in done.events if "pid" in r]
    assert {(r["pid"], r["label"], r["cgroup"]) for r in owners} == \
        {(inside.pid, 1, tree["child"].stat().st_ino)}
    assert max(r["count"] for r in owners) >= N
    assert _lost(done.stderr, "outstanding_by_site") == 0
    assert _lost(done.stderr, "outstanding_by_pid") == 0
