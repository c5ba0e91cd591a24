"""Run every benchmark (each in its own process, as it runs standalone) and print one table.

    python bench/run_all.py [--quick] [--no-farm]

--quick: fewer repetitions, no naive Python row. --no-farm: leave out bench_farm (it starts
Redis, a Ceph cluster and a worker: ~70 s; it skips itself, with a row saying why, when those
or ../shared/kernels are missing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import BENCH, Row

SCRIPTS = ("bench_build", "bench_attach", "bench_flood", "bench_perf", "bench_maps", "bench_probes",
           "bench_iter", "bench_symbols", "bench_stacks", "bench_flamegraph", "bench_uprobe_follow",
           "bench_topology", "bench_l7", "bench_l7_http2", "bench_filelat", "bench_locks",
           "bench_cpustate", "bench_memory", "bench_memleak", "bench_bpftrace", "bench_filter",
           "bench_labels", "bench_pods", "bench_cpu_filter", "bench_mem_filter", "bench_net_filter", "bench_bpftrace_fields",
           "bench_agent", "bench_farm")
QUICK = {"bench_build": ["--reps", "3"], "bench_attach": ["--reps", "3"],
         "bench_flood": ["--reps", "1", "--no-naive"], "bench_perf": ["--reps", "1"],
         "bench_maps": ["--reps", "3", "--seconds", "10"], "bench_probes": ["--reps", "1"],
         "bench_iter": ["--reps", "3"], "bench_symbols": ["--reps", "1"],
         "bench_stacks": ["--reps", "1"], "bench_flamegraph": ["--reps", "3"],
         "bench_uprobe_follow": ["--reps", "1"], "bench_topology": ["--reps", "1", "--seconds", "15"],
         "bench_l7": ["--reps", "1"], "bench_l7_http2": ["--reps", "1"],
         "bench_filelat": ["--reps", "1"], "bench_locks": ["--reps", "1"],
         "bench_cpustate": ["--reps", "1"], "bench_memory": ["--reps", "1"],
         "bench_memleak": ["--reps", "1", "--calls", "50000"], "bench_bpftrace": ["--reps", "3"],
         "bench_filter": ["--reps", "1"], "bench_labels": ["--reps", "1"],
         "bench_pods": ["--reps", "1"], "bench_agent": ["--reps", "3"],
         "bench_cpu_filter": ["--reps", "1"], "bench_mem_filter": ["--reps", "1"],
         "bench_net_filter": ["--reps", "1"],
         "bench_bpftrace_fields": ["--reps", "3"],
         "bench_farm": ["--reps", "1"]}


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/run_all.py")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    p.add_argument("--no-farm", action="store_true",
                   help="leave out bench_farm (Redis + Ceph radosgw + a worker, ~70 s)")
    args = p.parse_args()
    scripts = [s for s in SCRIPTS if not (args.no_farm and s == "bench_farm")]
    rows: list[Row] = []
    failed = []
    started, load = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bpfdepot-bench-all-") as tmp:
        for name in scripts:
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(BENCH / f"{name}.py"), "--json", str(out),
                   *(QUICK[name] if args.quick else [])]
            print(f"\n$ {' '.join(cmd[1:])}", flush=True)
            t0 = time.monotonic()
            rc = subprocess.run(cmd).returncode
            print(f"({name}: {time.monotonic() - t0:.1f} s, exit {rc})", flush=True)
            if rc != 0 or not out.exists():
                failed.append(name)
                continue
            rows += [Row(**r) for r in json.loads(out.read_text())]
    print()
    # Other jobs on this 2-core machine move wall times by tens of percent: say how busy it was.
    title = (f"== bpfdepot benchmarks ({time.monotonic() - started:.0f} s; 1-min load average "
             f"{load:.2f} before, {os.getloadavg()[0]:.2f} after)")
    print(harness.table(rows, title=title))
    missed = [r.metric for r in rows if r.met is False]
    if missed:
        print(f"goals not met: {'; '.join(missed)}")
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
