"""What the in-kernel process filter costs, and saves, on sched_switch, the hottest hook of the
CPU catalog: the C pipe ping-pong of bench_cpustate (every hop a voluntary switch) run
untraced (pinned to CPU 1), under ``bpf/cpustate`` and ``bpf/offcpu`` counting every process, and under the same
programs filtered to an empty unit (``--unit``: the loop is not in it). Filtered, each switch
still pays the current task's ancestor-cgroup lookups (cpustate also walks the next task's
cgroup through CO-RE), then skips the clocks, the maps and (offcpu) the two stack walks.
Interleaved in one run; each ratio is against untraced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import harness
from bench_cpustate import PINGPONG_C, ROUNDS
from bench_probes import start, stop
from harness import ROOT, Row

PROGRAMS = ("cpustate", "offcpu")


def pingpong(exe: Path) -> float:
    """Both ends pinned to one CPU: every hop is a switch there, and the time does not swing
    with where the scheduler happens to place the two (same CPU or not)."""
    return float(harness.run(["taskset", "-c", "1", str(exe)]).stdout)


def measure(args: argparse.Namespace) -> list[Row]:
    with harness.empty_unit("cpu-filter") as unit:
        if unit is None:
            return [Row(metric="filtered sched_switch", value="skipped: no cgroup2 mount")]
        with harness.scratch("cpu_filter") as tmp:
            home = tmp / "home"
            src = tmp / "pingpong.c"
            src.write_text(PINGPONG_C)
            exe = harness.gcc(src, tmp / "pingpong")
            for program in PROGRAMS:
                harness.run([*harness.bpfdepot_exe(), "build", str(ROOT / "bpf" / program)],
                            env=harness.env_for(home), cwd=ROOT)
            pingpong(exe)  # warm the binary
            plain: list[float] = []
            every = {p: [] for p in PROGRAMS}
            filtered = {p: [] for p in PROGRAMS}
            for i in range(args.reps):
                plain.append(pingpong(exe))
                for program in PROGRAMS:
                    p = start(home, ROOT / "bpf" / program, tmp / f"{program}-all-{i}.jsonl")
                    every[program].append(pingpong(exe))
                    stop(p)
                    out = tmp / f"{program}-filtered-{i}.jsonl"
                    p = start(home, ROOT / "bpf" / program, out, "--unit", unit.name)
                    filtered[program].append(pingpong(exe))
                    stop(p)
                    kept = out.read_text().count("\n") if out.exists() else 0
                    if kept:
                        raise SystemExit(f"bench: the filtered {program} run kept {kept} records")
    rows = []
    for program in PROGRAMS:
        rows += harness.filter_rows(
            loop=f"{ROUNDS:,} pipe round trips", per="round", count=ROUNDS,
            traced=f"{program} counting every process",
            filtered=f"{program} filtered to a unit the loop is not in (--unit)",
            ratio=f"{program}: filtered slowdown / counting slowdown",
            plain=plain, traced_xs=every[program], filtered_xs=filtered[program])
    return rows


if __name__ == "__main__":
    sys.exit(harness.main("bench_cpu_filter", measure, reps=5))
