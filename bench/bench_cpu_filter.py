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
import os
import sys
from pathlib import Path

import harness
from bench_cpustate import PINGPONG_C, ROUNDS
from bench_probes import start, stop
from harness import ROOT, Row, median, paired

PROGRAMS = ("cpustate", "offcpu")


def pingpong(exe: Path) -> float:
    """Both ends pinned to one CPU: every hop is a switch there, and the time does not swing
    with where the scheduler happens to place the two (same CPU or not)."""
    return float(harness.run(["taskset", "-c", "1", str(exe)]).stdout)


def measure(args: argparse.Namespace) -> list[Row]:
    from loader.attach.cgroup import cgroup2_mounts

    mounts = cgroup2_mounts()
    if not mounts:
        return [Row(metric="filtered sched_switch", value="skipped: no cgroup2 mount")]
    unit = mounts[0] / f"bpfdepot-bench-cpu-filter-{os.getpid()}.service"  # empty: nobody matches
    unit.mkdir()
    try:
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
    finally:
        unit.rmdir()

    base = f"{median(plain) * 1e3:.0f} ms untraced"
    rows = []
    for program in PROGRAMS:
        cost_all = paired(every[program], plain) - 1
        cost_filtered = paired(filtered[program], plain) - 1
        rows += [
            Row(metric=f"{ROUNDS:,} pipe round trips, {program} counting every process",
                value=f"{median(every[program]) * 1e3:.0f} ms", baseline=base,
                ratio=paired(every[program], plain)),
            Row(metric=f"same, {program} filtered to a unit the loop is not in (--unit)",
                value=f"{median(filtered[program]) * 1e3:.0f} ms", baseline=base,
                ratio=paired(filtered[program], plain)),
            Row(metric=f"{program}: filtered slowdown / counting slowdown",
                value=f"{cost_filtered * 100:.1f}% vs {cost_all * 100:.1f}%",
                ratio=cost_filtered / cost_all if cost_all > 0 else None),
        ]
    return rows


if __name__ == "__main__":
    sys.exit(harness.main("bench_cpu_filter", measure, reps=5))
