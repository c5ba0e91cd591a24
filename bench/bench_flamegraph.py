"""Flame-graph outputs on a profile the size of a busy machine's: 10,000 distinct stacks (about
20,000 frames once merged into a tree), as ``bpfdepot run --flamegraph`` writes them at stop.

    svg         render_svg + write, against writing the same stacks folded (the cheapest
                output: merge, sort, one line each) in the same run
    speedscope  the JSON profile, against the same folded baseline
    tap         StackCollector.tap over 100,000 stack records (JSON lines in batches of 1,000,
                as the pipeline delivers them), against a bare ``json.loads`` of each line: the
                least any Python consumer of the records pays

Pure Python, no BPF; runs as root only because harness.main checks for it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import harness
from harness import Row, median, paired

from loader.flamegraph import StackCollector, write_folded, write_speedscope, write_svg


def profile(n: int = 10_000) -> list[tuple[list[str], int]]:
    """``n`` distinct stacks: 8 comms, 50 mid frames, 25 leaves each, kernel tails on some."""
    out = []
    for i in range(n):
        frames = [f"comm{i % 8}", "main", f"mid_{i // 200 % 50}", f"leaf_{i % 25}_{i // 5000}"]
        if i % 3 == 0:
            frames += ["entry_SYSCALL_64", "do_syscall_64", f"sys_call_{i % 40}"]
        out.append((frames, 1 + i % 13))
    return out


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(args: argparse.Namespace) -> list[Row]:
    stacks = profile()
    batches = []
    for b in range(100):
        lines = "".join(json.dumps({"pid": 100 + i % 50, "comm": f"comm{i % 8}", "kernel": [],
                                    "user": ["main", f"f{i}"], "stack": f"comm{i % 8};main;f{i}",
                                    "value": 1, "unit": "samples"}) + "\n" for i in range(1000))
        batches.append(lines.encode())
    svg, spd, fold, tap, loads = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bpfdepot-bench-flame-") as tmp:
        out = Path(tmp)
        for _ in range(args.reps):
            fold.append(timed(lambda: write_folded(out / "p.folded", stacks)))
            svg.append(timed(lambda: write_svg(out / "p.svg", stacks, title="bench")))
            spd.append(timed(lambda: write_speedscope(out / "p.json", stacks, name="bench")))

            def run_tap() -> None:
                c = StackCollector()
                for data in batches:
                    c.tap("cpu_profile.counts", data, 1000)

            def run_loads() -> None:
                for data in batches:
                    for line in data.splitlines():
                        json.loads(line)

            tap.append(timed(run_tap))
            loads.append(timed(run_loads))
        svg_size = (out / "p.svg").stat().st_size
        frames = (out / "p.svg").read_text().count('<g class="f">')
        spd_size = (out / "p.json").stat().st_size
    return [
        Row(metric=f"SVG of 10,000 stacks ({frames:,} frames, {svg_size / 1e6:.1f} MB)",
            value=harness.ms(median(svg)), baseline=f"{harness.ms(median(fold))} folded",
            ratio=paired(svg, fold), goal="< 1 s", met=median(svg) < 1.0),
        Row(metric=f"speedscope JSON of 10,000 stacks ({spd_size / 1e6:.1f} MB)",
            value=harness.ms(median(spd)), baseline=f"{harness.ms(median(fold))} folded",
            ratio=paired(spd, fold)),
        Row(metric="run --flamegraph tap, 100,000 stack records",
            value=harness.ms(median(tap)), baseline=f"{harness.ms(median(loads))} json.loads",
            ratio=paired(tap, loads), goal="≤ 1.5×", met=paired(tap, loads) <= 1.5),
    ]


if __name__ == "__main__":
    raise SystemExit(harness.main("bench_flamegraph", measure, reps=5))
