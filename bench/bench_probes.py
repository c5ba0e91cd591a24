"""What the new attach kinds cost the traced process: a uprobe + uretprobe pair per call
(``bpf/ufunc`` on a C function, events to a file) and perf_event sampling at 99 Hz on every
CPU (``bpf/cpu_sample``), each against the same C program untraced, interleaved in one run.

uprobe: ``calls`` runs ``bpfdepot_target(i)`` N times and prints its own CLOCK_MONOTONIC
seconds; bpfdepot is attached (uprobe and uretprobe on that function, filtered by nothing) and
the events file must hold 2 N records of its pid. perf_event: ``burn`` spins a fixed loop and
prints its seconds, with cpu_sample attached (frequency 99 on all CPUs) or not.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import harness
from harness import ROOT, Row, median, paired

CALLS = 50_000
CALLS_C = r"""
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int __attribute__((noinline)) bpfdepot_target(int x) { __asm__ volatile("" ::: "memory"); return x * 2; }
int main(int argc, char **argv) {
	char c;
	struct timespec a, b;
	long n = %d, sum = 0;
	if (read(0, &c, 1) != 1) return 1;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++) sum += bpfdepot_target((int)i);
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%%.6f %%ld\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9, sum);
	return 0;
}
""" % CALLS
BURN_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
	struct timespec a, b;
	volatile unsigned long x = 0;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (unsigned long i = 0; i < 400000000UL; i++) x += i;
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
	return 0;
}
"""
UFUNC_MANIFEST = """kind: ebpfprogram
name: ufunc
spec:
  programs:
    - name: ufunc
      path: file://./ufunc.bpf.c
      type: ebpf_object
      attach:
        on_call: {{uprobe: {{binary: {binary}, function: bpfdepot_target}}}}
        on_return: {{uretprobe: {{binary: {binary}, function: bpfdepot_target}}}}
  channels:
    ufunc_events: {{type: ring_buffer, event: ufunc_event}}
"""


def start(home: Path, bundle: Path, out: Path, *extra: str) -> subprocess.Popen:
    """``bpfdepot run BUNDLE -o OUT EXTRA...`` in the background, once it has attached."""
    p = subprocess.Popen([*harness.bpfdepot_exe(), "run", str(bundle), "-o", str(out), *extra],
                         stderr=subprocess.PIPE, text=True, env=harness.env_for(home), cwd=ROOT)
    harness.wait_for_line(p, p.stderr, "attached", "bpfdepot run")
    return p


def stop(p: subprocess.Popen) -> str:
    """SIGINT the run and wait; its stderr (the summary with each channel's lost count)."""
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    if p.returncode != 0:
        raise SystemExit(f"bench: bpfdepot run failed ({p.returncode}):\n{err}")
    return err


def calls_once(exe: Path) -> tuple[float, int]:
    p = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate("x", timeout=120)
    return float(out.split()[0]), p.pid


def measure(args: argparse.Namespace) -> list[Row]:
    with harness.scratch("probes") as tmp:
        home = tmp / "home"
        calls = tmp / "calls.c"
        calls.write_text(CALLS_C)
        calls_exe = harness.gcc(calls, tmp / "calls")
        burn = tmp / "burn.c"
        burn.write_text(BURN_C)
        burn_exe = harness.gcc(burn, tmp / "burn")
        ufunc = tmp / "ufunc"
        ufunc.mkdir()
        for name in ("ufunc.bpf.c", "ufunc.h"):
            (ufunc / name).write_bytes((ROOT / "bpf" / "ufunc" / name).read_bytes())
        (ufunc / "manifest.yaml").write_text(UFUNC_MANIFEST.format(binary=calls_exe))
        harness.run([*harness.bpfdepot_exe(), "build", str(ufunc)], env=harness.env_for(home), cwd=ROOT)
        harness.run([*harness.bpfdepot_exe(), "build", str(ROOT / "bpf" / "cpu_sample")],
                    env=harness.env_for(home), cwd=ROOT)
        plain, traced, plain_burn, sampled = [], [], [], []
        for i in range(args.reps):
            plain.append(calls_once(calls_exe)[0])
            out = tmp / f"calls-{i}.jsonl"
            p = start(home, ufunc, out)
            seconds, pid = calls_once(calls_exe)
            stop(p)
            got = sum(1 for line in out.read_text().splitlines() if json.loads(line)["pid"] == pid)
            if got != 2 * CALLS:
                raise SystemExit(f"bench: {got} uprobe records for {2 * CALLS} calls and returns")
            traced.append(seconds)
            plain_burn.append(float(harness.run([str(burn_exe)]).stdout))
            p = start(home, ROOT / "bpf" / "cpu_sample", tmp / f"samples-{i}.jsonl")
            sampled.append(float(harness.run([str(burn_exe)]).stdout))
            stop(p)
    per_call = (median(traced) - median(plain)) / CALLS
    print(f"  uprobe+uretprobe: {per_call * 1e9:.0f} ns added per call (entry and return "
          f"event, {2 * CALLS:,} records checked per repetition)")
    return [
        Row(metric=f"{CALLS:,} calls, uprobe+uretprobe attached", value=f"{median(traced) * 1e3:.1f} ms",
            baseline=f"{median(plain) * 1e3:.1f} ms untraced", ratio=paired(traced, plain)),
        Row(metric="CPU-bound loop, perf_event 99 Hz on all CPUs", value=f"{median(sampled) * 1e3:.1f} ms",
            baseline=f"{median(plain_burn) * 1e3:.1f} ms unsampled", ratio=paired(sampled, plain_burn),
            goal="≤ 1.02×", met=paired(sampled, plain_burn) <= 1.02),
    ]


if __name__ == "__main__":
    sys.exit(harness.main("bench_probes", measure, reps=3))
