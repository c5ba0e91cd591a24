"""What the in-kernel process filter saves: a C loop of open()+close() on a cached file, run
untraced, under ``bpf/opensnoop`` emitting every open (no filter: each call is stashed, then a
312-byte ring-buffer event decoded and written by the loader), and under the same program
filtered to a unit the loop is not in (``--unit``: the ancestor-cgroup lookups at entry, then
nothing). Interleaved in one run; each ratio is against untraced.

Issue 13's goal: the filtered slowdown is at most half the emitting one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import harness
from bench_probes import start, stop
from harness import ROOT, Row, median, paired

CALLS = 200_000
OPEN_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < @CALLS@; i++) {
		int fd = open(argv[1], O_RDONLY);
		if (fd < 0) return 1;
		close(fd);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%.6f\n", (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	return 0;
}
""".replace("@CALLS@", str(CALLS))


OPENSNOOP = ROOT / "bpf" / "opensnoop"


def loop(exe: Path, data: Path) -> float:
    return float(harness.run([str(exe), str(data)]).stdout)


def measure(args: argparse.Namespace) -> list[Row]:
    from loader.attach.cgroup import cgroup2_mounts

    mounts = cgroup2_mounts()
    if not mounts:
        return [Row(metric="filtered open loop", value="skipped: no cgroup2 mount")]
    unit = mounts[0] / f"bpfdepot-bench-filter-{os.getpid()}.service"  # empty: nobody matches
    unit.mkdir()
    try:
        with harness.scratch("filter") as tmp:
            home = tmp / "home"
            src = tmp / "open.c"
            src.write_text(OPEN_C)
            exe = harness.gcc(src, tmp / "open_loop")
            data = tmp / "data"
            data.write_text("x")
            harness.run([*harness.bpfdepot_exe(), "build", str(ROOT / "bpf" / "opensnoop")],
                        env=harness.env_for(home), cwd=ROOT)
            loop(exe, data)  # warm the cache and the binary
            plain, emitting, filtered = [], [], []
            for i in range(args.reps):
                plain.append(loop(exe, data))
                p = start(home, OPENSNOOP, tmp / f"all-{i}.jsonl")
                emitting.append(loop(exe, data))
                stop(p)
                p = start(home, OPENSNOOP, tmp / f"filtered-{i}.jsonl", "--unit", unit.name)
                filtered.append(loop(exe, data))
                stop(p)
                kept = (tmp / f"filtered-{i}.jsonl").read_text().count("\n")
                if kept:
                    raise SystemExit(f"bench: the filtered run emitted {kept} events")
    finally:
        unit.rmdir()

    def per_call(xs: list[float]) -> float:
        return (median(xs) - median(plain)) / CALLS * 1e9

    base = f"{median(plain) * 1e3:.0f} ms untraced"
    emit_cost, filter_cost = paired(emitting, plain) - 1, paired(filtered, plain) - 1
    return [
        Row(metric=f"{CALLS:,} × open+close, opensnoop emitting every open",
            value=f"{median(emitting) * 1e3:.0f} ms (+{per_call(emitting):.0f} ns/call)",
            baseline=base, ratio=paired(emitting, plain)),
        Row(metric="same, filtered out in the kernel (--unit, loop not in it)",
            value=f"{median(filtered) * 1e3:.0f} ms (+{per_call(filtered):.0f} ns/call)",
            baseline=base, ratio=paired(filtered, plain)),
        Row(metric="filtered slowdown / emitting slowdown",
            value=f"{filter_cost * 100:.1f}% vs {emit_cost * 100:.1f}%",
            ratio=filter_cost / emit_cost if emit_cost > 0 else None,
            goal="≤ 0.5×", met=filter_cost <= 0.5 * emit_cost),
    ]


if __name__ == "__main__":
    sys.exit(harness.main("bench_filter", measure, reps=5))
