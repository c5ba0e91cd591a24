"""What leak tracing costs an allocation-heavy program: a C loop of malloc(64) + free, run
untraced, under ``bpf/memleak`` (uprobes limited to its pid: malloc entry and return, free; a
block tracked by {pid, address} with its user stack, outstanding count/bytes/age per stack), and
under bpftrace 0.17 running the equivalent script (``-p PID``: malloc's size per thread, at
return the block's size and ``ustack`` per address, deleted at free), interleaved in one run.
Each ratio is against untraced; the last row compares the two overheads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import harness
from bench_probes import start, stop
from harness import ROOT, Row, median, paired

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")

LOOP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
__attribute__((noinline)) void *alloc(size_t n) { return malloc(n); }
int main(int argc, char **argv) {
	long calls = atol(argv[1]);
	struct timespec t0, t1;
	char c;
	if (read(0, &c, 1) != 1) return 1;        /* start once the tracer attached */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < calls; i++) {
		void *p = alloc(64);
		*(volatile char *)p = 1;
		free(p);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%.6f\n", (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	return 0;
}
"""

# The same tracking in bpftrace: size per thread at entry; at return the block's size and user
# stack by address; both deleted at free. bpftrace keeps no per-stack totals: less work.
BPFTRACE = """\
uprobe:{libc}:malloc {{ @size[tid] = arg0; }}
uretprobe:{libc}:malloc /@size[tid]/ {{
	@bytes[retval] = @size[tid]; @stack[retval] = ustack; delete(@size[tid]);
}}
uprobe:{libc}:free {{ delete(@bytes[arg0]); delete(@stack[arg0]); }}
"""
# The floor: the same three probes doing nothing, so what is left is the uprobe traps' cost.
EMPTY = """\
uprobe:{libc}:malloc {{ @n = count(); }}
uretprobe:{libc}:malloc {{ @r = count(); }}
uprobe:{libc}:free {{ @f = count(); }}
"""


def libc_path() -> str:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"\slibc\.so\.6 \(libc6,x86-64\) => (\S+)", out) or \
        re.search(r"\slibc\.so\.6 .*=> (\S+)", out)
    if not found:
        raise SystemExit("bench_memleak: libc.so.6 is not in ld.so.cache")
    return found.group(1)


def launch(exe: Path, calls: int) -> subprocess.Popen:
    return subprocess.Popen([str(exe), str(calls)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def go(p: subprocess.Popen) -> float:
    """Let the waiting loop run; its own timing of the loop, in seconds."""
    out, _ = p.communicate("x", timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"bench_memleak: the loop failed ({p.returncode})")
    return float(out)


def bundle_for(tmp: Path, pid: int) -> Path:
    """bpf/memleak with each uprobe limited to ``pid`` (as bpftrace -p does)."""
    out = tmp / f"memleak-{pid}"
    out.mkdir()
    for f in (ROOT / "bpf" / "memleak").iterdir():
        if f.suffix in (".c", ".h"):
            shutil.copy(f, out / f.name)
    text = (ROOT / "bpf" / "memleak" / "manifest.yaml").read_text()
    (out / "manifest.yaml").write_text(re.sub(r"(function: \w+)\}", rf"\1, pid: {pid}}}", text))
    return out


After = Callable[[], None]


def with_memleak(home: Path, tmp: Path, exe: Path, calls: int, after: After = lambda: None) -> float:
    loop = launch(exe, calls)
    try:
        run = start(home, bundle_for(tmp, loop.pid), tmp / f"memleak-{loop.pid}.jsonl")
        time.sleep(0.5)  # as for bpftrace: the tracer's own start-up is not the loop's cost
        seconds = go(loop)
        after()
        stop(run)
        return seconds
    finally:
        loop.kill()


def with_bpftrace(exe: Path, calls: int, script: Path, after: After = lambda: None) -> float:
    loop = launch(exe, calls)
    try:
        with harness.bpftrace(script, "-p", str(loop.pid)):
            seconds = go(loop)
            after()
        return seconds
    finally:
        loop.kill()


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    """kernel.bpf_stats_enabled on for the block (run_time_ns / run_cnt per program)."""
    before = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    try:
        yield
    finally:
        BPF_STATS.write_text(before)


def program_ns() -> dict[str, float]:
    """Mean ns per run of each loaded program named for malloc or free (ours: malloc_enter,
    malloc_exit, free_enter; bpftrace's are cut to "malloc" and "free" and share names, so
    theirs are keyed by id)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {f"{p['name']}#{p['id']}": p["run_time_ns"] / p["run_cnt"]
            for p in json.loads(out or "[]")
            if p.get("run_cnt") and re.search(r"malloc|free", p.get("name", ""))}


def bpf_ns_per_pair(run: Callable[[After], float]) -> float:
    """Time inside the BPF programs per malloc + free (their mean run times summed, read while
    they are loaded): what is left of a traced pair's cost is the uprobe traps themselves."""
    seen: dict[str, float] = {}
    with bpf_stats():
        run(lambda: seen.update(program_ns()))
    return sum(seen.values())


def measure(args: argparse.Namespace) -> list[Row]:
    have_bpftrace = shutil.which("bpftrace") is not None
    calls = args.calls
    with harness.scratch("memleak") as tmp:
        home = tmp / "home"
        src = tmp / "loop.c"
        src.write_text(LOOP_C)
        exe = harness.gcc(src, tmp / "malloc_loop")
        script = tmp / "memleak.bt"
        script.write_text(BPFTRACE.format(libc=libc_path()))
        empty = tmp / "empty.bt"
        empty.write_text(EMPTY.format(libc=libc_path()))
        harness.run([*harness.bpfdepot_exe(), "build", str(ROOT / "bpf" / "memleak")],
                    env=harness.env_for(home), cwd=ROOT)
        go(launch(exe, calls))  # warm the binary and the page cache
        plain, ours, theirs, floor = [], [], [], []
        for _ in range(args.reps):
            plain.append(go(launch(exe, calls)))
            ours.append(with_memleak(home, tmp, exe, calls))
            if have_bpftrace:
                theirs.append(with_bpftrace(exe, calls, script))
                floor.append(with_bpftrace(exe, calls, empty))
        ours_bpf = bpf_ns_per_pair(lambda after: with_memleak(home, tmp, exe, calls // 4, after))
        theirs_bpf = (bpf_ns_per_pair(lambda after: with_bpftrace(exe, calls // 4, script, after))
                      if have_bpftrace else None)
    per_call = lambda xs: (median(xs) - median(plain)) / calls * 1e9  # ns per pair
    rows = [Row(metric=f"{calls:,} × malloc(64) + free, memleak attached to the pid",
                value=f"{median(ours) * 1e3:.0f} ms (+{per_call(ours):.0f} ns/pair)",
                baseline=f"{median(plain) * 1e3:.0f} ms untraced", ratio=paired(ours, plain))]
    if theirs:
        ours_cost, their_cost = paired(ours, plain) - 1, paired(theirs, plain) - 1
        rows.append(Row(metric="same, bpftrace equivalent script (-p PID)",
                        value=f"{median(theirs) * 1e3:.0f} ms (+{per_call(theirs):.0f} ns/pair)",
                        baseline=f"{median(plain) * 1e3:.0f} ms untraced",
                        ratio=paired(theirs, plain)))
        rows.append(Row(metric="memleak overhead / bpftrace overhead",
                        value=f"{ours_cost * 100:.0f}% vs {their_cost * 100:.0f}%",
                        ratio=ours_cost / their_cost if their_cost > 0 else None,
                        goal="≤ 1× (aim 0.5×)", met=ours_cost <= their_cost))
        rows.append(Row(metric="floor: the same 3 probes counting only (bpftrace)",
                        value=f"{median(floor) * 1e3:.0f} ms (+{per_call(floor):.0f} ns/pair)",
                        baseline=f"{median(plain) * 1e3:.0f} ms untraced",
                        ratio=paired(floor, plain)))
        above = lambda xs: (median(xs) - median(floor)) / calls * 1e9  # ns per pair
        rows.append(Row(metric="cost above the floor (what the tracer's programs add)",
                        value=f"{above(ours):.0f} ns/pair", baseline=f"{above(theirs):.0f} ns "
                        "bpftrace", ratio=above(ours) / above(theirs) if above(theirs) > 0 else None))
        rows.append(Row(metric="time in the BPF programs per pair (bpf_stats)",
                        value=f"{ours_bpf:.0f} ns", baseline=f"{theirs_bpf:.0f} ns bpftrace",
                        ratio=ours_bpf / theirs_bpf if theirs_bpf else None))
    else:
        rows.append(Row(metric="bpftrace equivalent", value="skipped: bpftrace not installed"))
    return rows


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calls", type=int, default=200_000,
                   help="malloc + free pairs per loop (default 200,000: each traced pair costs "
                        "several µs of uprobe traps)")


if __name__ == "__main__":
    sys.exit(harness.main("bench_memleak", measure, reps=5, add_args=add_args))
