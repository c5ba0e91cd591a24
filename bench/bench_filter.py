"""What the in-kernel process filter saves: a C loop of open()+close() on a cached file, run
untraced, under ``bpf/opensnoop`` emitting every open (no filter: each call is stashed, then a
312-byte ring-buffer event decoded and written by the loader), and under the same program
filtered to a unit the loop is not in (``--unit``: the ancestor-cgroup lookups at entry, then
nothing). Interleaved in one run; each ratio is against untraced.

Issue 13's goal: the filtered slowdown is at most half the emitting one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import harness
from bench_probes import start, stop
from harness import ROOT, Row

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
    with harness.empty_unit("filter") as unit:
        if unit is None:
            return [Row(metric="filtered open loop", value="skipped: no cgroup2 mount")]
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
    return harness.filter_rows(
        loop=f"{CALLS:,} × open+close", per="call", count=CALLS,
        traced="opensnoop emitting every open",
        filtered="filtered out in the kernel (--unit, loop not in it)",
        ratio="filtered slowdown / emitting slowdown",
        plain=plain, traced_xs=emitting, filtered_xs=filtered)


if __name__ == "__main__":
    sys.exit(harness.main("bench_filter", measure, reps=5))
