"""Event throughput: 1M getppid() events through bpfdepot, a C libbpf consumer and naive Python.

The producer (flood/producer.c) makes N ``syscall(SYS_getppid)`` calls and prints its own
elapsed seconds; flood.bpf.c writes one 64-byte event per call into a 64 MiB ring buffer.
Every consumer loads the same object (the blob the store holds for bench/flood), signals
that it is attached, and only then the producer starts. For every consumer alike:

    events/s = producer events received / seconds from the producer's start to the consumer's
               last producer event
    drops    = the program's lost counter (failed reservations) + producer events never received

The flood program sees every process's getppid(), so a few events of other processes
("foreign") may arrive; consumers count them apart (by comm, or pid in bpfdepot's file) and
they are shown, not treated as errors. bpfdepot's last event is when its output file grew past
the producer's last line (st_mtime, polled every 10 ms; SIGINT once the file has rested 1 s).
Its file is then checked: one valid JSON object per line, N lines from the producer, seq
values 0..lines-1 each exactly once (so nothing was lost or repeated).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import harness
from harness import BENCH, Row, median, paired

FLOOD = BENCH / "flood"
N = 1_000_000
RATIO_GOAL = 0.8
BATCHED_GOAL = 0.9    # issue 17: default decoding with batched wakeups against the 2 ms drain
IDLE_S = 1.0          # bpfdepot's file / naive consumer: stopped for this long means done
C_IDLE_S = 3.0        # the C consumer's own stop rule
TIMEOUT_S = 60.0
BATCH_MS = 2          # the batched C consumer drains every 2 ms instead of being woken
# The same events through user_so processors (flood_user.c / .go): one worker, then the C
# processor sharded by `hash: seq` across 2 and 4 workers (what sharding buys, or costs).
PROCESSORS = {"C processor": FLOOD / "processor.yaml", "Go processor": FLOOD / "processor_go.yaml",
              "C proc hash×2": FLOOD / "processor_hash.yaml",
              "C proc hash×4": FLOOD / "processor_hash4.yaml"}
SHARDS = {1: "C processor", 2: "C proc hash×2", 4: "C proc hash×4"}  # workers → variant
SHARD_GOAL = 1.3      # issue 17: hash over 2 workers against 1 worker on this 2-core machine
TSDB_GOAL = 1.0       # issue 17: default decoding into the TSDB against the C libbpf consumer


@dataclass(slots=True, kw_only=True)
class Run:
    received: int         # every event the consumer got
    ours: int             # those of the producer
    lost: int             # the program's failed reservations (flood_events_lost)
    producer_s: float     # the producer's own elapsed seconds
    span_s: float         # producer start → the consumer's last producer event
    ready_to_last_s: float
    consumer_cpu_s: float  # user + sys of the consumer process, its start-up included
    check: str = ""       # the output file check (bpfdepot only)
    foreign_comms: str = ""

    @property
    def rate(self) -> float:
        return self.ours / self.span_s if self.span_s > 0 else 0.0

    @property
    def drops(self) -> int:
        return self.lost + max(0, N - self.ours)


def _start_producer(producer: Path) -> tuple[float, subprocess.Popen]:
    t0 = time.monotonic()
    return t0, subprocess.Popen([str(producer), str(N)], stdout=subprocess.PIPE, text=True)


def _producer_seconds(p: subprocess.Popen) -> float:
    out, _ = p.communicate(timeout=TIMEOUT_S)
    if p.returncode != 0:
        raise SystemExit(f"bench: the producer failed ({p.returncode})")
    return float(out.strip())


def _cpu() -> float:
    """User + system seconds of the children reaped so far (the consumer is reaped last)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _kv(line: str) -> dict[str, float]:
    words = line.split()
    return {k: float(v) for k, v in zip(words[::2], words[1::2])}


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
        p.wait()


def run_libbpf_consumer(cmd: list[str], producer: Path) -> Run:
    """consumer.c or naive_consumer.py: both print 'ready t', then one 'key value ...' line."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        harness.wait_for_line(p, p.stdout, "ready", cmd[0])
        t0, prod = _start_producer(producer)
        producer_s = _producer_seconds(prod)
        cpu = _cpu()
        out, err = p.communicate(timeout=TIMEOUT_S)
        cpu = _cpu() - cpu
    finally:
        _stop(p)
    if p.returncode != 0 or "received" not in out:
        raise SystemExit(f"bench: {' '.join(cmd)} failed ({p.returncode}):\n{out}{err}")
    got = _kv(out.strip().splitlines()[-1])
    return Run(received=int(got["received"]), ours=int(got["ours"]), lost=int(got["lost"]),
               producer_s=producer_s, span_s=got["last"] - t0, ready_to_last_s=got["ready_to_last"],
               consumer_cpu_s=cpu)


def run_bpfdepot(producer: Path, home: Path, output: Path, bundle: Path = FLOOD,
                 channel: str = "flood/flood_events") -> Run:
    """`bpfdepot run` of ``bundle`` into ``output`` while the producer floods; ``channel`` is
    the program/channel row of the run's summary that holds received and lost."""
    cmd = [*harness.bpfdepot_exe(), "run", str(bundle), "--output", str(output)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=harness.env_for(home))
    try:
        harness.wait_for_line(p, p.stderr, "attached", "bpfdepot run")
        ready = time.monotonic()
        t0, prod = _start_producer(producer)
        # (size, st_mtime_ns) every 10 ms while the producer runs and until the file rests
        samples, changed = [(-1, 0)], time.monotonic()
        while (prod.poll() is None or time.monotonic() - changed < IDLE_S) \
                and time.monotonic() - t0 < TIMEOUT_S:
            st = os.stat(output)
            if st.st_size != samples[-1][0]:
                samples.append((st.st_size, st.st_mtime_ns))
                changed = time.monotonic()
            time.sleep(0.010)
        producer_s = _producer_seconds(prod)
        cpu = _cpu()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=TIMEOUT_S)
        cpu = _cpu() - cpu
    finally:
        _stop(p)
    if p.returncode != 0:
        raise SystemExit(f"bench: bpfdepot run failed ({p.returncode}):\n{err}")
    row = re.search(rf"{re.escape(channel)}\s+(\d+)\s+(\d+)", err)
    if not row:
        raise SystemExit(f"bench: no summary for {channel} in:\n{err}")
    st = os.stat(output)
    samples.append((st.st_size, st.st_mtime_ns))  # the last events may come with the final drain
    got = verify(output, prod.pid)
    output.unlink()
    # The last producer event is in the file from the first sample that reaches the end of its
    # line; that sample's st_mtime (CLOCK_REALTIME, mapped onto the monotonic clock t0 was read
    # on) is when it was written. Later growth (other processes' events) does not count.
    written = next((mtime for size, mtime in samples if size >= got.end), samples[-1][1])
    last = (written - (time.time_ns() - time.monotonic_ns())) / 1e9
    return Run(received=int(row.group(1)), ours=got.ours, lost=int(row.group(2)),
               producer_s=producer_s, span_s=last - t0, ready_to_last_s=last - ready,
               consumer_cpu_s=cpu, check=got.problem or "ok", foreign_comms=got.foreign)


def run_bpfdepot_tsdb(producer: Path, home: Path, db: Path) -> Run:
    """Default decoding into the embedded TSDB: the last producer event is when the store
    last grew before it held N rows of the producer (read every 20 ms by a second reader, as
    WAL allows)."""
    import sqlite3

    env = {**harness.env_for(home), "BPFDEPOT_STDOUT": "0"}
    cmd = [*harness.bpfdepot_exe(), "run", str(FLOOD), "--tsdb", str(db)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        harness.wait_for_line(p, p.stderr, "attached", "bpfdepot run --tsdb")
        ready = time.monotonic()
        t0, prod = _start_producer(producer)
        pid, ours, rows, last = prod.pid, 0, 0, t0
        reader = None
        while ours < N and time.monotonic() - t0 < TIMEOUT_S:
            time.sleep(0.020)
            if reader is None and db.exists():
                reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            if reader is None:
                continue
            try:  # the chunks' record counts are a cheap progress mark; the exact count only once it can be N
                top = reader.execute("SELECT coalesce(sum(n), 0) FROM chunks").fetchone()[0]
                if top != rows:
                    rows, last = top, time.monotonic()
                if top >= N:
                    ours = reader.execute("SELECT count(*) FROM events WHERE "
                                          "json_extract(record, '$.pid') = ?", (pid,)).fetchone()[0]
            except sqlite3.OperationalError:
                continue  # tables not there yet
        producer_s = _producer_seconds(prod)
        cpu = _cpu()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=TIMEOUT_S)
        cpu = _cpu() - cpu
    finally:
        _stop(p)
    if p.returncode != 0:
        raise SystemExit(f"bench: bpfdepot run --tsdb failed ({p.returncode}):\n{err}")
    row = re.search(r"flood/flood_events\s+(\d+)\s+(\d+)", err)
    seqs = reader.execute("SELECT count(DISTINCT json_extract(record, '$.seq')) FROM events WHERE "
                          "json_extract(record, '$.pid') = ?", (pid,)).fetchone()[0]
    reader.close()
    return Run(received=int(row.group(1)), ours=ours, lost=int(row.group(2)), producer_s=producer_s,
               span_s=last - t0, ready_to_last_s=last - ready, consumer_cpu_s=cpu,
               check="ok" if seqs == ours == N else f"{ours} rows, {seqs} distinct seq")


@dataclass(slots=True, kw_only=True)
class FileCheck:
    lines: int
    ours: int             # lines of the producer
    end: int              # byte offset just past the producer's last line
    foreign: str          # "comm×count" of the other processes' lines
    problem: str          # empty when the file is right


def verify(path: Path, pid: int) -> FileCheck:
    """One flood event per line, N of them from ``pid``, seq values 0..lines-1 each once."""
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    seen, ours, end, offset, bad, foreign = bytearray(len(lines)), 0, 0, 0, [], Counter()
    for i, line in enumerate(lines):
        offset += len(line) + 1
        try:
            rec = json.loads(line)
            seq = rec["seq"]
        except (ValueError, KeyError, TypeError):
            bad.append(f"line {i + 1} is not a flood event: {line[:80]!r}")
            continue
        if not 0 <= seq < len(lines) or seen[seq]:
            bad.append(f"line {i + 1}: seq {seq} out of range or repeated")
            continue
        seen[seq] = 1
        if rec.get("pid") == pid:
            ours, end = ours + 1, offset
        else:
            foreign[rec.get("comm")] += 1
    if ours != N:
        bad.append(f"{ours} lines from the producer, expected {N}")
    if not bad and not all(seen):
        bad.append(f"seq values missing: {seen.count(0)}")
    return FileCheck(lines=len(lines), ours=ours, end=end, problem="; ".join(bad[:3]),
                     foreign=", ".join(f"{c}×{n}" for c, n in foreign.most_common(3)))


def measure(args: argparse.Namespace) -> list[Row]:
    with harness.scratch("flood") as tmp:
        home = tmp / "home"
        blob = harness.build_blob(FLOOD, home)
        producer = harness.gcc(FLOOD / "producer.c", tmp / "producer")
        consumer = harness.gcc(FLOOD / "consumer.c", tmp / "consumer", "-lbpf")
        harness.ensure_bpffs()
        harness.run([*harness.bpfdepot_exe(), "kernel"], env=harness.env_for(home))  # probe once
        for variant in PROCESSORS.values():  # the processors too, before anything is timed
            harness.run([*harness.bpfdepot_exe(), "build", str(variant)], env=harness.env_for(home))
        runs: dict[str, list] = {"untraced": [], "C libbpf": [], "C batched": [], "bpfdepot": [],
                                 **{name: [] for name in PROCESSORS}, "TSDB": [], "naive Python": []}
        for i in range(args.reps):  # interleaved, so drift hits every consumer alike
            runs["untraced"].append(_producer_seconds(_start_producer(producer)[1]))
            c_cmd = [str(consumer), "-i", str(C_IDLE_S), "-c", producer.name]
            runs["C libbpf"].append(run_libbpf_consumer(
                [*c_cmd, str(blob), "flood_events", str(N)], producer))
            runs["C batched"].append(run_libbpf_consumer(
                [*c_cmd, "-b", str(BATCH_MS), str(blob), "flood_events", str(N)], producer))
            runs["bpfdepot"].append(run_bpfdepot(producer, home, tmp / f"flood-{i}.jsonl"))
            # the processor variants in a turning order: load that comes and goes on the machine
            # does not always fall on the same one (the sharding rows compare them pairwise)
            variants = [(n, v) for n, v in PROCESSORS.items() if n not in args.skip]
            turn = i % len(variants) if variants else 0
            for name, variant in variants[turn:] + variants[:turn]:
                runs[name].append(run_bpfdepot(producer, home, tmp / f"flood-{i}.jsonl", variant))
            if "TSDB" not in args.skip:
                runs["TSDB"].append(run_bpfdepot_tsdb(producer, home, tmp / f"tsdb-{i}.sqlite"))
            if not args.no_naive:
                out = tmp / f"naive-{i}.jsonl"
                runs["naive Python"].append(run_libbpf_consumer(
                    [sys.executable, str(FLOOD / "naive_consumer.py"), str(blob), "flood_events",
                     str(N), str(out), str(IDLE_S), producer.name], producer))
                out.unlink()
    untraced = median(runs.pop("untraced"))
    runs = {name: rs for name, rs in runs.items() if rs}
    print(_details(runs, untraced))
    return _summary(runs, untraced)


def _details(runs: dict[str, list[Run]], untraced: float) -> str:
    head = (f"  {'consumer':<13} {'events/s':>10} {'received':>9} {'lost':>5} {'drops':>5} "
            f"{'producer':>9} {'slowdown':>8} {'start→last':>10} {'ready→last':>10} {'CPU':>6}"
            "  check")
    out = [f"  producer untraced: {untraced:.3f} s for {N} getppid() (median); CPU: the consumer "
           "process's user+sys, start-up included", head]
    for name, rs in runs.items():
        for r in rs:
            foreign = f"; foreign: {r.received - r.ours}" if r.received != r.ours else ""
            out.append(f"  {name:<13} {r.rate:>10,.0f} {r.received:>9} {r.lost:>5} {r.drops:>5} "
                       f"{r.producer_s:>8.3f}s {r.producer_s / untraced:>7.2f}× {r.span_s:>9.3f}s "
                       f"{r.ready_to_last_s:>9.3f}s {r.consumer_cpu_s:>5.2f}s  {r.check or '—'}"
                       f"{foreign}{f' ({r.foreign_comms})' if r.foreign_comms else ''}")
    return "\n".join(out)


def _summary(runs: dict[str, list[Run]], untraced: float) -> list[Row]:
    def rate(name: str) -> float:
        return median([r.rate for r in runs[name]])

    def slowdown(name: str) -> float:
        return median([r.producer_s for r in runs[name]]) / untraced

    def rates(name: str) -> list[float]:
        return [r.rate for r in runs[name]]

    def secs(name: str) -> list[float]:
        return [r.producer_s for r in runs[name]]

    def drops(name: str) -> int:
        return max(r.drops for r in runs[name])

    batched = f"C drained every {BATCH_MS} ms"
    ratio = paired(rates("bpfdepot"), rates("C libbpf"))
    batched_ratio = paired(rates("bpfdepot"), rates("C batched"))
    checks = [r.check for r in runs["bpfdepot"] if r.check != "ok"]
    rows = [
        Row(metric="flood: events/s (vs C libbpf)", value=f"{rate('bpfdepot'):,.0f}",
            baseline=f"{rate('C libbpf'):,.0f}", ratio=ratio, goal=f"≥ {RATIO_GOAL:.2f}×",
            met=ratio >= RATIO_GOAL),
        Row(metric="flood: drops, worst run (vs C libbpf)", value=str(drops("bpfdepot")),
            baseline=str(drops("C libbpf")), goal="0", met=drops("bpfdepot") == 0),
        Row(metric="flood: output file check", value=checks[0] if checks else "ok",
            goal=f"{N} producer lines, seq complete", met=not checks),
        Row(metric="flood: producer slowdown vs untraced", value=f"{slowdown('bpfdepot'):.2f}×",
            baseline=f"{slowdown('C libbpf'):.2f}× (C libbpf)",
            ratio=paired(secs("bpfdepot"), secs("C libbpf"))),
        Row(metric=f"flood: events/s (vs {batched})", value=f"{rate('bpfdepot'):,.0f}",
            baseline=f"{rate('C batched'):,.0f}", ratio=batched_ratio,
            goal=f"≥ {BATCHED_GOAL:.2f}×", met=batched_ratio >= BATCHED_GOAL),
        Row(metric=f"flood: producer slowdown (vs {batched})",
            value=f"{slowdown('bpfdepot'):.2f}×", baseline=f"{slowdown('C batched'):.2f}×",
            ratio=paired(secs("bpfdepot"), secs("C batched"))),
    ]
    for name in PROCESSORS:
        if name not in runs:
            continue
        ratio = paired(rates(name), rates("C libbpf"))
        bad = [r.check for r in runs[name] if r.check != "ok"]
        goal = name == "C processor"
        rows += [
            Row(metric=f"flood, {name} → file: events/s; producer slowdown (vs C libbpf)",
                value=f"{rate(name):,.0f}; {slowdown(name):.2f}×",
                baseline=f"{rate('C libbpf'):,.0f}; {slowdown('C libbpf'):.2f}×", ratio=ratio,
                goal=f"≥ {RATIO_GOAL:.2f}×" if goal else "—", met=ratio >= RATIO_GOAL if goal else None),
            Row(metric=f"flood, {name}: drops, worst run; file check", value=f"{drops(name)}; "
                f"{bad[0] if bad else 'ok'}", goal="0; ok", met=drops(name) == 0 and not bad),
        ]
    if "TSDB" in runs:
        bad = [r.check for r in runs["TSDB"] if r.check != "ok"]
        tsdb_ratio = paired(rates("TSDB"), rates("C libbpf"))
        rows += [
            Row(metric="flood, default decoding → TSDB: rows/s; producer slowdown (vs C libbpf)",
                value=f"{rate('TSDB'):,.0f}; {slowdown('TSDB'):.2f}×",
                baseline=f"{rate('C libbpf'):,.0f}; {slowdown('C libbpf'):.2f}×", ratio=tsdb_ratio,
                goal=f"≥ {TSDB_GOAL:.2f}×", met=tsdb_ratio >= TSDB_GOAL),
            Row(metric="flood → TSDB: drops, worst run; rows check", value=f"{drops('TSDB')}; "
                f"{bad[0] if bad else 'ok'}", goal="0; ok", met=drops("TSDB") == 0 and not bad),
        ]
    if SHARDS[1] in runs:  # each with the traced program's slowdown against untraced
        one = SHARDS[1]
        for workers, name in SHARDS.items():
            if name not in runs:
                continue
            ratio = paired(rates(name), rates(one))
            goal = workers == 2
            shape = f"hash: seq over {workers} workers" if workers > 1 else "1 worker, no hash"
            rows.append(Row(
                metric=f"flood, C processor, {shape}: events/s; producer slowdown (vs 1 worker)",
                value=f"{rate(name):,.0f}; {slowdown(name):.2f}×",
                baseline=f"{rate(one):,.0f}; {slowdown(one):.2f}×", ratio=ratio,
                goal=f"≥ {SHARD_GOAL:.2f}×" if goal else "—",
                met=ratio >= SHARD_GOAL if goal else None))
        # what any worker count could reach at most: the producer with a consumer that costs
        # next to nothing (on 2 cores the producer, spinning on one, sets the rate)
        rows.append(Row(metric=f"flood: ceiling for sharding, {batched} (vs 1 worker)",
                        value=f"{rate('C batched'):,.0f}; {slowdown('C batched'):.2f}×",
                        baseline=f"{rate(one):,.0f}; {slowdown(one):.2f}×",
                        ratio=paired(rates("C batched"), rates(one))))
    if "naive Python" in runs:
        rows += [
            Row(metric="flood: naive Python events/s (vs C libbpf)",
                value=f"{rate('naive Python'):,.0f}", baseline=f"{rate('C libbpf'):,.0f}",
                ratio=paired(rates("naive Python"), rates("C libbpf"))),
            Row(metric="flood: naive Python drops, worst run", value=str(drops("naive Python")),
                baseline=f"{drops('C libbpf')} (C libbpf)"),
        ]
    return rows


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-naive", action="store_true", help="skip the naive Python consumer")
    p.add_argument("--skip", action="append", default=[], choices=[*PROCESSORS, "TSDB"],
                   help="leave out a processor variant (repeatable)")


if __name__ == "__main__":
    sys.exit(harness.main("bench_flood", measure, reps=3, add_args=_args))
