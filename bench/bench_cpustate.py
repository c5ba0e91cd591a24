"""What counting on/off-CPU time per process costs a context-switch-heavy workload: a C
ping-pong (two processes bouncing one byte over two pipes, every hop a voluntary switch) run
untraced, under ``bpf/cpustate`` (every process, tp_btf sched_switch, per-process hash map),
and under bpftrace 0.17 running the equivalent script (the same accounting in bpftrace maps,
tracepoint sched:sched_switch), interleaved in one run. Each ratio is against untraced.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import harness
from bench_probes import start, stop
from harness import ROOT, Row, median, paired

ROUNDS = 100_000
PINGPONG_C = r"""
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
int main(void) {
	int ab[2], ba[2];
	char c = 'x';
	struct timespec t0, t1;
	if (pipe(ab) || pipe(ba)) return 1;
	if (fork() == 0) {
		for (long i = 0; i < %d; i++) {
			if (read(ab[0], &c, 1) != 1 || write(ba[1], &c, 1) != 1) return 1;
		}
		return 0;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < %d; i++) {
		if (write(ab[1], &c, 1) != 1 || read(ba[0], &c, 1) != 1) return 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	wait(NULL);
	printf("%%.6f\n", (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	return 0;
}
""" % (ROUNDS, ROUNDS)

# The same accounting as bpf/cpustate, in bpftrace: per thread last switch time, on/off time
# and voluntary/involuntary counts per process.
BPFTRACE = r"""
tracepoint:sched:sched_switch {
	$now = nsecs;
	if (@last[args->prev_pid]) { @on[pid] = sum($now - @last[args->prev_pid]); }
	@last[args->prev_pid] = $now;
	if (args->prev_state == 0) { @involuntary[pid] = count(); } else { @voluntary[pid] = count(); }
	if (@last[args->next_pid]) { @off[args->next_pid] = sum($now - @last[args->next_pid]); }
	@last[args->next_pid] = $now;
}
interval:s:1 { print(@on); print(@off); print(@voluntary); print(@involuntary); }
"""


def pingpong(exe: Path) -> float:
    return float(harness.run([str(exe)]).stdout)


def with_bpftrace(exe: Path, script: Path) -> float:
    with harness.bpftrace(script):
        return pingpong(exe)


def measure(args: argparse.Namespace) -> list[Row]:
    have_bpftrace = shutil.which("bpftrace") is not None
    with harness.scratch("cpustate") as tmp:
        home = tmp / "home"
        src = tmp / "pingpong.c"
        src.write_text(PINGPONG_C)
        exe = harness.gcc(src, tmp / "pingpong")
        script = tmp / "cpustate.bt"
        script.write_text(BPFTRACE)
        bundle = ROOT / "bpf" / "cpustate"
        harness.run([*harness.bpfdepot_exe(), "build", str(bundle)], env=harness.env_for(home), cwd=ROOT)
        plain, ours, theirs = [], [], []
        for i in range(args.reps):
            plain.append(pingpong(exe))
            p = start(home, bundle, tmp / f"cpustate-{i}.jsonl")
            ours.append(pingpong(exe))
            stop(p)
            if have_bpftrace:
                theirs.append(with_bpftrace(exe, script))
    rows = [Row(metric=f"{ROUNDS:,} pipe round trips, cpustate attached",
                value=f"{median(ours) * 1e3:.0f} ms", baseline=f"{median(plain) * 1e3:.0f} ms untraced",
                ratio=paired(ours, plain))]
    rows += harness.anchor_rows("cpustate", plain, ours, theirs)
    return rows


if __name__ == "__main__":
    sys.exit(harness.main("bench_cpustate", measure, reps=5))
