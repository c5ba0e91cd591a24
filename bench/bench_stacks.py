"""What CPU profiling costs: ``bpf/cpu_profile`` (perf_event cpu-clock at 99 Hz on every CPU,
kernel + user stacks, stack_counts read every 5 s and symbolized) while a C busy loop runs
for ~10 s, against the same loop untraced, interleaved in one run.

    slowdown   = the loop's own CLOCK_MONOTONIC seconds profiled / untraced (goal ≤ 1.01×)
    loader CPU = utime + stime of the ``bpfdepot run`` process over the loop's wall time, in %
                 of one CPU (goal ≤ 1%); its baseline is the same loader running
                 ``bpf/cpu_sample`` (the same sampling, one ring-buffer event per sample), so
                 the ratio says what stacks cost over plain sampling
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import harness
from bench_probes import start, stop
from harness import ROOT, Row, median, paired

LOOP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
int main(int argc, char **argv) {
	struct timespec a, b;
	volatile unsigned long x = 0;
	unsigned long n = strtoul(argv[1], 0, 10);
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (unsigned long i = 0; i < n; i++) x += i;
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
	return 0;
}
"""
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/PID/stat fields 14 and 15), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def loop(exe: Path, n: int) -> float:
    return float(harness.run([str(exe), str(n)]).stdout)


def traced(home: Path, bundle: Path, out: Path, exe: Path, n: int,
           warm: float) -> tuple[float, float]:
    """(loop seconds, loader CPU share of one CPU) with ``bundle`` running, measured from
    ``warm`` s after attach (past start-up; with warm > 5 s, past the first read, which loads
    /proc/kallsyms into the symbolizer once per run)."""
    p = start(home, bundle, out)
    time.sleep(warm)
    cpu0, t0 = cpu_seconds(p.pid), time.monotonic()
    seconds = loop(exe, n)
    cpu1, t1 = cpu_seconds(p.pid), time.monotonic()
    stop(p)
    return seconds, (cpu1 - cpu0) / (t1 - t0)


def measure(args: argparse.Namespace) -> list[Row]:
    with harness.scratch("stacks") as tmp:
        home = tmp / "home"
        src = tmp / "loop.c"
        src.write_text(LOOP_C)
        exe = harness.gcc(src, tmp / "loop")
        for program in ("cpu_profile", "cpu_sample"):
            harness.run([*harness.bpfdepot_exe(), "build", str(ROOT / "bpf" / program)],
                        env=harness.env_for(home), cwd=ROOT)
        # calibrate the loop to about args.seconds untraced
        t = loop(exe, 200_000_000)
        n = int(200_000_000 * args.seconds / t)
        plain, profiled, prof_cpu, sample_cpu = [], [], [], []
        records = 0
        for i in range(args.reps):
            plain.append(loop(exe, n))
            out = tmp / f"stacks-{i}.jsonl"
            seconds, share = traced(home, ROOT / "bpf" / "cpu_profile", out, exe, n,
                                     args.warm)
            profiled.append(seconds)
            prof_cpu.append(share)
            records += sum(1 for line in out.read_text().splitlines() if json.loads(line)["stack"])
            _, share = traced(home, ROOT / "bpf" / "cpu_sample", tmp / f"samples-{i}.jsonl", exe, n,
                              args.warm)
            sample_cpu.append(share)
    print(f"  cpu_profile: {records} stack records over {args.reps} runs of "
          f"~{args.seconds:.0f} s; loop of {n:,} iterations")
    slow = paired(profiled, plain)
    cpu = median(prof_cpu)
    return [
        Row(metric=f"busy loop (~{args.seconds:.0f} s), cpu_profile 99 Hz all CPUs",
            value=f"{median(profiled):.3f} s", baseline=f"{median(plain):.3f} s untraced",
            ratio=slow, goal="≤ 1.01×", met=slow <= 1.01),
        Row(metric="loader CPU while profiling (% of one CPU)", value=f"{cpu * 100:.2f}%",
            baseline=f"{median(sample_cpu) * 100:.2f}% cpu_sample",
            ratio=cpu / median(sample_cpu) if median(sample_cpu) else None,
            goal="≤ 1%", met=cpu <= 0.01),
    ]


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=10.0, help="loop length untraced (default 10)")
    p.add_argument("--warm", type=float, default=0.5,
                   help="seconds after attach before measuring (default 0.5; 6 skips the first "
                        "read's one-time kallsyms load)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(harness.main("bench_stacks", measure, reps=3, add_args=_args))
