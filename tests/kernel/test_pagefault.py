"""pagefault in the running kernel: pages this test writes fault once each, exact fields back."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import subprocess
import sys
import threading
from pathlib import Path

from tests.kernel.conftest import Running
from tests.kernel.monitor import received, unit_run

PAGE = mmap.PAGESIZE
NPAGES = 64
X86_PF_WRITE, X86_PF_USER = 2, 4


def _anon(npages: int) -> tuple[mmap.mmap, int]:
    """A private anonymous mapping, no huge pages (one fault per small page); (map, base)."""
    m = mmap.mmap(-1, npages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    view = ctypes.c_char.from_buffer(m)  # only to learn the address; touches nothing
    base = ctypes.addressof(view)
    del view  # release the export, or m.close() fails
    return m, base


def prog_ids(prefix: str) -> set[int]:
    """Ids of the BPF programs loaded now whose name starts with ``prefix``. A test compares
    ids, not names: other runs of the same program (a parallel test session) may be loaded."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                         check=True)
    return {p["id"] for p in json.loads(out.stdout or "[]") if p.get("name", "").startswith(prefix)}


def _events(records: list[dict]) -> list[dict]:
    """The pagefault_events records (the other channels' records have no "error_code")."""
    return [r for r in records if "error_code" in r]


def _pages_in(events: list[dict], base: int, npages: int) -> list[dict]:
    return [e for e in events if base <= e["address"] < base + npages * PAGE]


def test_written_pages_fault_once_each(home: Path, tmp_path: Path) -> None:
    touched, base = _anon(NPAGES)
    untouched, quiet_base = _anon(NPAGES)
    try:
        before = prog_ids("pagefault")
        run = Running(home, "bpf/pagefault", tmp_path / "events.jsonl",
                      extra=["--set", f"targ_tgid={os.getpid()}"])
        ours = prog_ids("pagefault") - before
        for i in range(NPAGES):
            touched[i * PAGE] = 0x5a  # one user-mode write per page
        done = run.stop()
    finally:
        touched.close()
        untouched.close()

    assert done.rc == 0, done.stderr
    events = _events(done.events)
    mine = [e for e in events if e["pid"] == os.getpid()]
    hits = _pages_in(mine, base, NPAGES)
    assert {e["address"] & ~(PAGE - 1) for e in hits} == {base + i * PAGE for i in range(NPAGES)}
    tid = threading.get_native_id()
    comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
    for e in hits:
        assert e["error_code"] & X86_PF_WRITE and e["error_code"] & X86_PF_USER, e
        assert (e["tid"], e["comm"]) == (tid, comm)
        assert e["ip"] != 0
        assert set(e) == {"address", "ip", "error_code", "pid", "tid", "comm", "label"}
        assert e["label"] == 0   # no filter in this run

    # Negative: mapped but never touched, so never faulted.
    assert not _pages_in(mine, quiet_base, NPAGES)

    summary = next(line for line in done.stderr.splitlines() if "pagefault/pagefault_events" in line)
    received, lost = (int(x) for x in summary.split()[1:3])
    assert received == len(events) and lost == 0
    assert ours and not ours & prog_ids("pagefault")   # unloaded at stop


# A child that maps NPAGES_BIG anonymous pages and a file of NFILE pages (dropped from the page
# cache, read-ahead off), prints both ranges, waits for the test, then touches every page once:
# writes to the anonymous ones, reads of the file ones.
NPAGES_BIG, NFILE = 4096, 64
TOUCH = rf"""
import ctypes, mmap, os, sys
PAGE = mmap.PAGESIZE
anon = mmap.mmap(-1, {NPAGES_BIG} * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
anon.madvise(mmap.MADV_NOHUGEPAGE)
v = ctypes.c_char.from_buffer(anon); base = ctypes.addressof(v); del v
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
os.write(fd, b"\x01" * ({NFILE} * PAGE)); os.fsync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)   # clean pages: really dropped
fmap = mmap.mmap(fd, {NFILE} * PAGE, prot=mmap.PROT_READ)
fmap.madvise(mmap.MADV_RANDOM)                        # no read-ahead: one fault per page
print(base, base + {NPAGES_BIG} * PAGE, flush=True)
sys.stdin.read(1)
for i in range({NPAGES_BIG}):
    anon[i * PAGE] = 1
total = sum(fmap[i * PAGE] for i in range({NFILE}))
print(total, flush=True)
"""


def _channel(stderr: str, name: str) -> tuple[int, int]:
    line = next(x for x in stderr.splitlines() if f"pagefault/{name}" in x)
    received, lost = (int(x) for x in line.split()[1:3])
    return received, lost


def test_counts_addresses_and_stacks_of_a_child_touching_4096_pages(home: Path,
                                                                    tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", TOUCH, str(tmp_path / "data")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        start, end = (int(x) for x in child.stdout.readline().split())
        before = prog_ids("pagefault")
        run = Running(home, "bpf/pagefault", tmp_path / "faults.jsonl",
                      extra=["--set", f"targ_tgid={child.pid}"])
        ours = prog_ids("pagefault") - before
        child.stdin.write("x")
        child.stdin.close()
        assert child.stdout.readline().strip() == str(NFILE)   # every file byte read was 1
        assert child.wait(timeout=30) == 0
        done = run.stop()
    finally:
        child.kill()
        child.wait()
    assert done.rc == 0, done.stderr

    # events: one per anonymous page at least, each a user-mode write inside the mapping
    hits = _pages_in(_events(done.events), start, NPAGES_BIG)
    assert {e["address"] & ~(PAGE - 1) for e in hits} == set(range(start, end, PAGE))
    assert all(e["error_code"] & X86_PF_WRITE and e["error_code"] & X86_PF_USER for e in hits)
    assert {e["pid"] for e in _events(done.events)} == {child.pid}   # targ_tgid: nobody else

    # counts: cumulative, so the last read of the child's key holds them all
    counts = [r for r in done.events if "user_faults" in r]
    assert {r["pid"] for r in counts} == {child.pid}
    last = counts[-1]
    assert last["user_faults"] >= NPAGES_BIG and last["comm"] == "python3"
    assert last["cgroup"] == os.stat(_cgroup2_dir()).st_ino   # the child's, = this test's
    if Path("/sys/kernel/tracing/events/filemap/mm_filemap_fault").exists():
        assert last["file_faults"] >= NFILE and last["cache_fills"] == 0, last
    else:  # 6.1: the other form counts pages added to the page cache instead
        assert last["cache_fills"] >= NFILE and last["file_faults"] == 0, last

    # address histogram: the mapping's faults in its 1 GiB window(s), in the right 16 MiB slots
    hists = [r for r in done.events if "buckets" in r]
    windows: dict[int, dict[int, int]] = {}
    for h in hists:   # interval 5s: one read after detach holds everything
        w = h["window"]
        for b in h["buckets"]:
            windows.setdefault(w, {})
            windows[w][b["le"]] = windows[w].get(b["le"], 0) + b["count"]
    expected: dict[tuple[int, int], int] = {}
    for page in range(start, end, PAGE):
        w = page & ~((1 << 30) - 1)
        slot = (page - w) >> 24             # slot of 16 MiB, `le` its largest MiB; the map's
        le = "+Inf" if slot == 63 else slot * 16 + 15  # last slot is "+Inf" (outputs/histogram.py)
        expected[w, le] = expected.get((w, le), 0) + 1
    for (w, le), n in expected.items():
        assert windows.get(w, {}).get(le, 0) >= n, (hex(w), le, n, [{k: v for k, v in h.items() if k != "buckets"} for h in hists], windows)

    # stacks: the child's user stacks of its faults, python's frames named
    stacks = [r for r in done.events if "stack" in r]
    assert stacks and {r["pid"] for r in stacks} == {child.pid}
    assert sum(r["value"] for r in stacks) >= NPAGES_BIG
    assert any(r["user"] for r in stacks), stacks[:3]
    assert all(r["unit"] == "count" for r in stacks)

    for name in ("pagefault_events", "fault_counts", "fault_addrs", "fault_stacks"):
        assert _channel(done.stderr, name)[1] == 0, done.stderr
    assert len(ours) == 3 and not ours & prog_ids("pagefault")   # user, kernel, file: unloaded


def test_user_stacks_knob_off_leaves_the_stack_channel_empty(home: Path, tmp_path: Path) -> None:
    run = Running(home, "bpf/pagefault", tmp_path / "faults.jsonl",
                  extra=["--set", f"targ_tgid={os.getpid()}", "--set", "user_stacks=0"])
    m, base = _anon(NPAGES)
    try:
        for i in range(NPAGES):
            m[i * PAGE] = 1
        done = run.stop()
    finally:
        m.close()
    assert done.rc == 0, done.stderr
    assert len(_pages_in(_events(done.events), base, NPAGES)) >= NPAGES
    assert not [r for r in done.events if "stack" in r]
    assert [r for r in done.events if "user_faults" in r][-1]["user_faults"] >= NPAGES


def _cgroup2_dir() -> Path:
    """This process's cgroup2 directory (on a hybrid host under /sys/fs/cgroup/unified)."""
    path = next(l for l in Path("/proc/self/cgroup").read_text().splitlines()
                if l.startswith("0::")).split(":", 2)[2]
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mnt, fstype, *_ = line.split()
        if fstype == "cgroup2":
            return Path(mnt) / path.lstrip("/")
    raise AssertionError("no cgroup2 mount")


# A worker operation: map N anonymous pages (no huge pages), write each once, and leave the
# mapping's address range in <path>.<pid> for the test.
TOUCH_OPS = """
import builtins, ctypes, mmap  # builtins: the worker's own `open` op shadows open()
def touch(n):
    m = mmap.mmap(-1, n * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    v = ctypes.c_char.from_buffer(m); base = ctypes.addressof(v); del v
    for i in range(n):
        m[i * mmap.PAGESIZE] = 1
    m.close()
    with builtins.open(f"{path}.{os.getpid()}", "w") as f:
        f.write(str(base))
"""


def test_the_filter_counts_only_the_units_faults(home: Path, tmp_path: Path,
                                                  tree: dict[str, Path]) -> None:
    """Two processes fault the same number of fresh pages, one in the unit's child cgroup and
    one in another service: every event, count key, address window and stack is the first's,
    with label 1 where the record carries one."""
    where = tmp_path / "base"
    with unit_run(home, tree, "bpf/pagefault", tmp_path / "faults.jsonl", where,
                  ops=TOUCH_OPS) as (inside, outside, run):
        inside.do("touch", NPAGES)
        outside.do("touch", NPAGES)
    done = run.done
    assert done.rc == 0, done.stderr
    base = int(Path(f"{where}.{inside.pid}").read_text())
    events = _events(done.events)
    assert {(e["pid"], e["label"]) for e in events} == {(inside.pid, 1)}
    hits = _pages_in(events, base, NPAGES)
    assert {e["address"] & ~(PAGE - 1) for e in hits} == {base + i * PAGE for i in range(NPAGES)}
    counts = [r for r in done.events if "user_faults" in r]
    assert {(r["pid"], r["label"], r["cgroup"]) for r in counts} == \
        {(inside.pid, 1, tree["child"].stat().st_ino)}
    assert counts[-1]["user_faults"] >= NPAGES
    assert {(r["pid"], r["label"]) for r in done.events if "buckets" in r} == {(inside.pid, 1)}
    assert {r["pid"] for r in done.events if "stack" in r} == {inside.pid}
    assert received(done, "pagefault/pagefault_events") == (len(events), 0)
