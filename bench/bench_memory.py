"""What the memory catalog costs the traced workload: (1) a C loop that maps 64 MiB anonymous,
writes every page and unmaps it, 8 times (131,072 user faults), untraced, under
``bpf/pagefault`` (an event per fault, counts, address histogram, user stacks) and under
bpftrace 0.17 running the equivalent script; (2) a C loop of 200,000 eventfd()+close() (a
kmalloc, a kmem_cache_alloc or three and their frees each), untraced, under ``bpf/kmemleak``
and under the equivalent bpftrace script (outstanding map by address, sums by site and pid).
Interleaved in one run; each ratio is against untraced."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import harness
from bench_probes import start, stop
from harness import ROOT, Row, median, paired

FAULT_C = r"""
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
int main(void) {
	struct timespec t0, t1;
	long n = 64L << 20;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int r = 0; r < 8; r++) {
		char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		madvise(p, n, MADV_NOHUGEPAGE);
		for (long i = 0; i < n; i += 4096) p[i] = 1;
		munmap(p, n);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%.6f\n", (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	return 0;
}
"""
EFD_C = r"""
#include <stdio.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
int main(void) {
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < 200000; i++) close(eventfd(0, 0));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%.6f\n", (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	return 0;
}
"""
# What bpf/pagefault does, in bpftrace: an event per user fault (printf), counts per pid/comm
# for user and kernel faults, a linear histogram of the offset in the 1 GiB window, user stacks.
PF_BT = r"""
tracepoint:exceptions:page_fault_user {
  printf("%lu %lu %lu %d %d %s\n", args->address, args->ip, args->error_code, pid, tid, comm);
  @user[pid, comm, cgroup] = count();
  @addr[pid, args->address >> 30] = lhist((args->address >> 20) & 1023, 0, 1024, 16);
  @stacks[pid, comm, ustack] = count();
}
tracepoint:exceptions:page_fault_kernel { @kernel[pid, comm, cgroup] = count(); }
"""
KMEM_BT = r"""
tracepoint:kmem:kmalloc, tracepoint:kmem:kmem_cache_alloc {
  @sz[args->ptr] = args->bytes_alloc; @cs[args->ptr] = args->call_site; @owner[args->ptr] = pid;
  @site_bytes[args->call_site] = sum(args->bytes_alloc); @site_n[args->call_site] = sum(1);
  @pid_bytes[pid] = sum(args->bytes_alloc); @pid_n[pid] = sum(1);
}
tracepoint:kmem:kfree, tracepoint:kmem:kmem_cache_free /@sz[args->ptr]/ {
  $p = args->ptr; $b = (int64)@sz[$p];
  @site_bytes[@cs[$p]] = sum(-$b); @site_n[@cs[$p]] = sum(-1);
  @pid_bytes[@owner[$p]] = sum(-$b); @pid_n[@owner[$p]] = sum(-1);
  delete(@sz[$p]); delete(@cs[$p]); delete(@owner[$p]);
}
"""


def loop(exe: Path) -> float:
    return float(harness.run([str(exe)]).stdout)


def with_bpftrace(exe: Path, script: Path) -> float:
    with harness.bpftrace(script, env=dict(os.environ, BPFTRACE_MAP_KEYS_MAX="131072")):
        return loop(exe)


def case(tmp: Path, home: Path, name: str, src: str, bt: str, reps: int, what: str) -> list[Row]:
    c = tmp / f"{name}.c"
    c.write_text(src)
    exe = harness.gcc(c, tmp / name)
    script = tmp / f"{name}.bt"
    script.write_text(bt)
    bundle = ROOT / "bpf" / name
    harness.run([*harness.bpfdepot_exe(), "build", str(bundle)], env=harness.env_for(home), cwd=ROOT)
    loop(exe)
    plain, ours, theirs = [], [], []
    for i in range(reps):
        plain.append(loop(exe))
        p = start(home, bundle, tmp / f"{name}-{i}.jsonl")
        ours.append(loop(exe))
        stop(p)
        theirs.append(with_bpftrace(exe, script))
    return [Row(metric=f"{what}, {name} attached", value=f"{median(ours) * 1e3:.0f} ms",
                baseline=f"{median(plain) * 1e3:.0f} ms untraced", ratio=paired(ours, plain)),
            *harness.anchor_rows(name, plain, ours, theirs)]


def measure(args: argparse.Namespace) -> list[Row]:
    if not shutil.which("bpftrace"):
        return [Row(metric="memory catalog vs bpftrace", value="skipped: bpftrace not installed")]
    with harness.scratch("memory") as tmp:
        home = tmp / "home"
        return (case(tmp, home, "pagefault", FAULT_C, PF_BT, args.reps,
                     "8 × (map 64 MiB, write each page, unmap): 131,072 faults")
                + case(tmp, home, "kmemleak", EFD_C, KMEM_BT, args.reps,
                       "200,000 × close(eventfd())"))


if __name__ == "__main__":
    sys.exit(harness.main("bench_memory", measure, reps=5))
