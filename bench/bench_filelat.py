"""What file-latency tracing costs a syscall-heavy workload: a C loop of 4 KiB pread()s on a
cached regular file, run untraced, under ``bpf/filelat`` (every process, the 16 syscall
tracepoints, fd → file type and filesystem on each call, a log2 histogram per {op, ftype, fs,
dev}), and under bpftrace 0.17 running the equivalent script (the same tracepoints, a start
time per thread and a hist per op), interleaved in one run. Each ratio is against untraced.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import harness
from bench_probes import start, stop
from harness import ROOT, Row, median, paired

CALLS = 1_000_000
PREAD_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
	char buf[4096];
	struct timespec t0, t1;
	int fd = open(argv[1], O_RDONLY);
	if (fd < 0) return 1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < @CALLS@; i++) {
		if (pread(fd, buf, sizeof(buf), (i % 256) * 4096) != sizeof(buf)) return 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%.6f\n", (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	return 0;
}
""".replace("@CALLS@", str(CALLS))

OPS = ("read", "write", "pread64", "pwrite64", "readv", "writev", "fsync", "fdatasync")
# The same measurement in bpftrace: entry time per thread, a log2 histogram of microseconds per
# op (bpftrace's hist() is log2 as ours). It keeps no file type or filesystem: less work.
BPFTRACE = (
    ",".join(f"tracepoint:syscalls:sys_enter_{op}" for op in OPS)
    + " { @start[tid] = nsecs; }\n"
    + ",".join(f"tracepoint:syscalls:sys_exit_{op}" for op in OPS)
    + " /@start[tid]/ { @us[probe] = hist((nsecs - @start[tid]) / 1000); delete(@start[tid]); }\n"
)


def loop(exe: Path, data: Path) -> float:
    return float(harness.run([str(exe), str(data)]).stdout)


def with_bpftrace(exe: Path, data: Path, script: Path) -> float:
    with harness.bpftrace(script):
        return loop(exe, data)


def measure(args: argparse.Namespace) -> list[Row]:
    have_bpftrace = shutil.which("bpftrace") is not None
    with harness.scratch("filelat") as tmp:
        home = tmp / "home"
        src = tmp / "pread.c"
        src.write_text(PREAD_C)
        exe = harness.gcc(src, tmp / "pread_loop")
        data = tmp / "data.bin"
        data.write_bytes(b"x" * (256 * 4096))  # 1 MiB, in the page cache after the first loop
        script = tmp / "filelat.bt"
        script.write_text(BPFTRACE)
        bundle = ROOT / "bpf" / "filelat"
        harness.run([*harness.bpfdepot_exe(), "build", str(bundle)], env=harness.env_for(home), cwd=ROOT)
        loop(exe, data)  # warm the cache and the binary
        plain, ours, theirs = [], [], []
        for i in range(args.reps):
            plain.append(loop(exe, data))
            p = start(home, bundle, tmp / f"filelat-{i}.jsonl")
            ours.append(loop(exe, data))
            stop(p)
            if have_bpftrace:
                theirs.append(with_bpftrace(exe, data, script))
    def per_call(xs: list[float]) -> float:
        """What tracing added to one call, ns (difference of medians)."""
        return (median(xs) - median(plain)) / CALLS * 1e9

    rows = [Row(metric=f"{CALLS:,} × pread 4 KiB (cached), filelat attached",
                value=f"{median(ours) * 1e3:.0f} ms (+{per_call(ours):.0f} ns/call)",
                baseline=f"{median(plain) * 1e3:.0f} ms untraced", ratio=paired(ours, plain))]
    rows += harness.anchor_rows("filelat", plain, ours, theirs,
                                lambda xs: f" (+{per_call(xs):.0f} ns/call)")
    return rows


if __name__ == "__main__":
    sys.exit(harness.main("bench_filelat", measure, reps=5))
