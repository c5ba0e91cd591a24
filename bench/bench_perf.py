"""Perf-buffer throughput: 1M getppid() events through bpfdepot and a C libbpf perf_buffer consumer.

The same method as bench_flood.py (whose producer, checks and timing it reuses), with the
events sent by flood/perf_flood.bpf.c: one 64-byte event per call, a stack struct handed to
``bpf_perf_event_output`` (so flood/perf.yaml names it with ``event:``), into a perf buffer of
4096 pages (16 MiB) per CPU. Both consumers load the same object (the blob the store holds):

    bpfdepot    ``bpfdepot run bench/flood/perf.yaml --output FILE`` (default decoding to JSON)
    C libbpf    flood/perf_consumer.c: perf_buffer__new with the same pages, perf_buffer__poll
                (epoll), a sample callback that counts and reads ``seq``, a lost callback

    events/s = producer events received / seconds from the producer's start to the consumer's
               last producer event
    drops    = samples the kernel reported lost + producer events never received
    silent   = producer events neither received nor reported lost (must be 0 for bpfdepot,
               whose lost count is flushed at detach; C libbpf leaves the kernel's last lost
               count unread, so its silent column can be non-zero when it lost anything)
"""

from __future__ import annotations

import sys
from pathlib import Path

import bench_flood
import harness
from bench_flood import (C_IDLE_S, N, RATIO_GOAL, Run, _producer_seconds,
                         _start_producer, run_libbpf_consumer)
from harness import BENCH, Row, median, paired

FLOOD = BENCH / "flood"
MANIFEST = FLOOD / "perf.yaml"
MAP = "perf_flood_events"
PAGES = 4096  # as perf.yaml says


def run_bpfdepot(producer: Path, home: Path, output: Path) -> Run:
    """bench_flood.run_bpfdepot for the perf flood (its summary row has another name)."""
    return bench_flood.run_bpfdepot(producer, home, output, bundle=MANIFEST,
                                    channel=f"perf_flood/{MAP}")


def silent(r: Run) -> int:
    """Producer events neither received nor counted lost (foreign events are never lost here:
    a loss is counted per ring, so this is a bound when others' events were lost too)."""
    return max(0, N - r.ours - r.lost)


def measure(args) -> list[Row]:
    with harness.scratch("perf") as tmp:
        home = tmp / "home"
        blob = harness.build_blob(MANIFEST, home)
        producer = harness.gcc(FLOOD / "producer.c", tmp / "producer")
        consumer = harness.gcc(FLOOD / "perf_consumer.c", tmp / "perf_consumer", "-lbpf")
        harness.ensure_bpffs()
        harness.run([*harness.bpfdepot_exe(), "kernel"], env=harness.env_for(home))  # probe once
        runs: dict[str, list[Run]] = {"C libbpf": [], "bpfdepot": []}
        untraced = []
        for i in range(args.reps):  # interleaved, so drift hits both alike
            untraced.append(_producer_seconds(_start_producer(producer)[1]))
            runs["C libbpf"].append(run_libbpf_consumer(
                [str(consumer), "-i", str(C_IDLE_S), "-c", producer.name, "-p", str(PAGES),
                 str(blob), MAP, str(N)], producer))
            runs["bpfdepot"].append(run_bpfdepot(producer, home, tmp / f"perf-{i}.jsonl"))
    base = median(untraced)
    print(_details(runs, base))
    return _summary(runs, base)


def _details(runs: dict[str, list[Run]], untraced: float) -> str:
    out = [f"  producer untraced: {untraced:.3f} s for {N} getppid() (median); perf buffer of "
           f"{PAGES} pages per CPU",
           f"  {'consumer':<9} {'events/s':>10} {'received':>9} {'lost':>7} {'drops':>7} "
           f"{'silent':>6} {'producer':>9} {'slowdown':>8} {'CPU':>6}  check"]
    for name, rs in runs.items():
        for r in rs:
            foreign = f"; foreign: {r.received - r.ours}" if r.received != r.ours else ""
            out.append(f"  {name:<9} {r.rate:>10,.0f} {r.received:>9} {r.lost:>7} {r.drops:>7} "
                       f"{silent(r):>6} {r.producer_s:>8.3f}s {r.producer_s / untraced:>7.2f}× "
                       f"{r.consumer_cpu_s:>5.2f}s  {r.check or '—'}{foreign}")
    return "\n".join(out)


def _summary(runs: dict[str, list[Run]], untraced: float) -> list[Row]:
    def rates(name: str) -> list[float]:
        return [r.rate for r in runs[name]]

    def worst(name: str, f) -> int:
        return max(f(r) for r in runs[name])

    ratio = paired(rates("bpfdepot"), rates("C libbpf"))
    checks = [r.check for r in runs["bpfdepot"] if r.check != "ok"]
    slow = [r.producer_s / untraced for r in runs["bpfdepot"]]
    slow_c = [r.producer_s / untraced for r in runs["C libbpf"]]
    return [
        Row(metric="perf flood: events/s (vs C libbpf perf_buffer)",
            value=f"{median(rates('bpfdepot')):,.0f}", baseline=f"{median(rates('C libbpf')):,.0f}",
            ratio=ratio, goal=f"≥ {RATIO_GOAL:.2f}×", met=ratio >= RATIO_GOAL),
        Row(metric="perf flood: drops (lost), worst run",
            value=f"{worst('bpfdepot', lambda r: r.drops)} ({worst('bpfdepot', lambda r: r.lost)})",
            baseline=f"{worst('C libbpf', lambda r: r.drops)} ({worst('C libbpf', lambda r: r.lost)})"),
        Row(metric="perf flood: silent drops, worst run",
            value=str(worst("bpfdepot", silent)), baseline=str(worst("C libbpf", silent)),
            goal="0", met=worst("bpfdepot", silent) == 0),
        Row(metric="perf flood: output file check (lines, seq)",
            value=checks[0] if checks else "ok",
            goal="received lines, seq distinct", met=not checks),
        Row(metric="perf flood: producer slowdown vs untraced", value=f"{median(slow):.2f}×",
            baseline=f"{median(slow_c):.2f}× (C libbpf)", ratio=paired(slow, slow_c)),
    ]


if __name__ == "__main__":
    sys.exit(harness.main("bench_perf", measure, reps=3))
