"""bpf/lockstat in the running kernel, scoped to one child process with targ_tgid: a Python
child where one thread holds a threading.Lock while another waits for it (a futex wait of that
lock's address, at least the part of the hold it sat through; an uncontended lock never enters
the kernel), and a C child whose 8 threads mmap and munmap at once (kernel contention on its
mm's mmap_lock, named by the functions that waited). Under --unit, only the unit's futex waits."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kernel.conftest import Finished, Running
from tests.kernel.conftest import wait_for as _wait
from tests.kernel.monitor import received, workers

HOLD = 0.3                 # s the holder thread keeps the lock
MIN_WAIT_NS = 200_000_000  # the waiter sat through at least this much of it
KSYM = re.compile(r"^[A-Za-z_][\w.]*\+0x[0-9a-f]+$")  # "symbol+0xoff", never a bare address
ADDR = re.compile(r"^[0-9a-f]{16}$")
FLAGS = {"SPINLOCK", "RWSEM_READ", "RWLOCK_READ", "RWSEM_WRITE", "RWLOCK_WRITE", "RT_MUTEX",
         "RT_READ", "RT_WRITE", "PERCPU_RWSEM_READ", "PERCPU_RWSEM_WRITE", "MUTEX", "MUTEX_SPIN"}

# Two threads on one threading.Lock. CPython 3.11's lock object is PyObject_HEAD (16 bytes)
# then the PyThread_type_lock, a glibc sem_t* whose first word is the futex sem_wait sleeps
# on: that pointer is the uaddr the kernel sees.
FUTEX_CHILD = """
import ctypes, json, sys, threading, time
hold = float(sys.argv[1])
sys.stdin.readline()
lock, idle = threading.Lock(), threading.Lock()
sem = lambda l: ctypes.c_void_p.from_address(id(l) + 16).value
idle.acquire(); idle.release()  # uncontended: glibc takes it without a futex call
held, out = threading.Event(), {}
def holder():
    with lock:
        held.set()
        time.sleep(hold)
def waiter():
    held.wait()
    out["tid"] = threading.get_native_id()
    t0 = time.monotonic_ns()
    lock.acquire()
    out["measured"] = time.monotonic_ns() - t0
    lock.release()
threads = [threading.Thread(target=holder), threading.Thread(target=waiter)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"sem": sem(lock), "idle": sem(idle), **out}), flush=True)
"""

MMAP_CHILD = r"""
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
/* 8 threads map, touch and unmap 1 MiB for 1 s: each mmap and munmap takes the process's
 * mmap_lock for writing, so on 2 CPUs most of them find it taken */
static void *churn(void *arg)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		p[0] = 1;
		munmap(p, 1 << 20);
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while (t.tv_sec - t0.tv_sec < 1);
	return arg;
}

int main(void)
{
	pthread_t th[8];
	char line[8];

	if (!fgets(line, sizeof(line), stdin)) /* start once the tracer is attached */
		return 1;
	for (int i = 0; i < 8; i++)
		pthread_create(&th[i], NULL, churn, NULL);
	for (int i = 0; i < 8; i++)
		pthread_join(th[i], NULL);
	return 0;
}
"""






def _lost(stderr: str, channel: str) -> int:
    line = next(x for x in stderr.splitlines() if f"lockstat/{channel}" in x)
    return int(line.split()[2])


def _traced(home: Path, tmp_path: Path, child: subprocess.Popen,
            ready: Callable[[list[dict]], bool], what: str) -> tuple[Finished, str]:
    """Run lockstat for ``child`` only, let it go, wait for it and for ``ready``; (done, its
    stdout)."""
    out = tmp_path / "lockstat.jsonl"
    run = Running(home, "bpf/lockstat", out, extra=["--set", f"targ_tgid={child.pid}"])
    try:
        stdout, _ = child.communicate("go\n", timeout=30)
        assert child.returncode == 0
        _wait(out, ready, what)
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    for channel in ("futex_events", "futex_hists", "kernel_lock_hists"):
        assert _lost(done.stderr, channel) == 0, done.stderr
    return done, stdout


def test_a_held_python_lock_is_a_futex_wait_of_its_address(home: Path, tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", FUTEX_CHILD, str(HOLD)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    done, stdout = _traced(home, tmp_path, child,
                           lambda r: any(e.get("wait_ns", 0) >= MIN_WAIT_NS for e in r),
                           "the waiter's futex event")
    seen = json.loads(stdout)
    events = [e for e in done.events if "wait_ns" in e]
    hists = [h for h in done.events if "buckets" in h and "uaddr" in h]
    # targ_tgid: nothing of any other process
    assert events and hists and {r["pid"] for r in events + hists} == {child.pid}
    waited = [e for e in events if e["uaddr"] == seen["sem"]]
    assert len(waited) == 1, events
    w = waited[0]
    assert (w["tid"], w["op"], w["comm"]) == (seen["tid"], "FUTEX_WAIT_BITSET", "python3")
    # the kernel's wait lies inside the one the waiter measured around acquire()
    assert MIN_WAIT_NS <= w["wait_ns"] <= seen["measured"], (w, seen)
    assert set(w) == {"uaddr", "wait_ns", "pid", "tid", "op", "comm", "label"}
    assert w["label"] == 0  # no filter asked
    # the histogram of that address has the wait in a slot at or above 2^17 us (131 ms)
    mine = [h for h in hists if h["uaddr"] == seen["sem"]]
    assert sum(b["count"] for h in mine for b in h["buckets"]
               if b["le"] == "+Inf" or b["le"] >= (1 << 17) - 1) == 1, mine
    assert all(h["unit"] == "us" for h in mine)
    assert sum(h["sum"] for h in mine) == w["wait_ns"] // 1000
    # the lock taken without contention never slept
    assert not [r for r in events + hists if r["uaddr"] == seen["idle"]]


def test_threads_mapping_at_once_contend_on_the_mmap_lock(home: Path, tmp_path: Path) -> None:
    if not shutil.which("gcc"):
        pytest.skip("the contention subject is compiled with gcc")
    src, exe = tmp_path / "mmap_churn.c", tmp_path / "mmap_churn"
    src.write_text(MMAP_CHILD)
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(exe), str(src)], check=True)
    child = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def mmap_writers(records: list[dict]) -> list[dict]:
        return [r for r in records if r.get("flags") == "RWSEM_WRITE"
                and r["caller"].split("+")[0] in ("vm_mmap_pgoff", "__vm_munmap")]

    done, _ = _traced(home, tmp_path, child, lambda r: bool(mmap_writers(r)),
                      "mmap_lock contention from vm_mmap_pgoff / __vm_munmap")
    locks = [r for r in done.events if "caller" in r]
    writers = mmap_writers(locks)
    # one process, one mm: every waiter for it waited on the same lock
    assert len({r["lock"] for r in writers}) == 1, writers
    assert sum(r["count"] for r in writers) >= 1
    for r in locks:
        assert set(r) == {"lock", "caller", "flags", "unit", "buckets", "count", "sum",
                          "p50", "p90", "p99"}
        assert ADDR.match(r["lock"]) and KSYM.match(r["caller"]), r
        assert r["flags"] in FLAGS and r["unit"] == "ns", r
        assert r["count"] == sum(b["count"] for b in r["buckets"]) >= 1


# contend(n): n times, one thread holds a fresh threading.Lock for 0.2 s while another waits
# for it; the lock's futex address (as in FUTEX_CHILD) and the waiter's tid are appended to the
# file SEMS % pid (the tid too: a freed lock's address is soon another's, e.g. a joined thread's)
CONTEND = """
import ctypes, io, threading

def contend(n):
    for _ in range(n):
        lock, held, out = threading.Lock(), threading.Event(), {}
        def holder():
            with lock:
                held.set()
                time.sleep(0.2)
        def waiter():
            held.wait()
            out["tid"] = threading.get_native_id()
            lock.acquire()
            lock.release()
        threads = [threading.Thread(target=holder), threading.Thread(target=waiter)]
        for t in threads: t.start()
        for t in threads: t.join()
        with io.open(SEMS % os.getpid(), "a") as f:  # open is the worker's own op
            f.write(f"{ctypes.c_void_p.from_address(id(lock) + 16).value} {out['tid']}\\n")
"""


def test_the_filter_counts_the_units_futex_waits_only(home: Path, tmp_path: Path,
                                                      tree: dict[str, Path]) -> None:
    """The waiting thread decides, at futex entry: the unit's and the child's contended locks
    are one event each (label 1) and in their histograms; the other service's are in neither."""
    sems = str(tmp_path / "sems-%d")
    with workers("/dev/null", 3, ops=f"SEMS = {sems!r}\n" + CONTEND) as (unit, child, other):
        unit.move(tree["unit"])
        child.move(tree["child"])
        other.move(tree["other"])
        run = Running(home, "bpf/lockstat", tmp_path / "out.jsonl",
                      extra=["--unit", tree["unit"].name])
        try:
            unit.do("contend", 2)
            child.do("contend", 3)
            other.do("contend", 2)
            time.sleep(1.2)  # one more interval: the histograms read after the last waits
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    events = [e for e in done.events if "wait_ns" in e]
    hists = [h for h in done.events if "buckets" in h and "uaddr" in h]
    assert {r["pid"] for r in events + hists} == {unit.pid, child.pid}
    assert {r["label"] for r in events + hists} == {1}
    for worker, n in ((unit, 2), (child, 3)):
        mine = {tuple(map(int, line.split()))
                for line in Path(sems % worker.pid).read_text().splitlines()}
        waited = [e for e in events if (e["uaddr"], e["tid"]) in mine]
        assert len(waited) == n, events       # one wait per contended lock, of most of the hold
        assert all(e["wait_ns"] >= 100_000_000 and e["op"] == "FUTEX_WAIT_BITSET"
                   for e in waited), waited
        assert len(mine) == n and all(e["pid"] == worker.pid for e in waited)
    assert received(done, "lockstat/futex_events") == (len(events), 0)
