"""``fields:`` on a bpftrace program: what splitting printed lines costs the loader.

bpftrace -f json hands every printf() to the loader as one JSON message. A script can print its
record as a JSON object (the baseline: the loader decodes it as it is), or print plain words and
let ``fields: [pid, comm, latency_ns]`` in the manifest name them. Both are measured in the same
run on the same 100,000 records, from the message bpftrace prints to the encoded line the sinks
get (``route`` + the child's encoding, loader/programs/bpftrace.py), interleaved repetitions.
"""

from __future__ import annotations

import argparse
import json
import time

import harness
from harness import Row, median, paired

from loader.programs.bpftrace import _lines, route

N = 100_000
FIELDS = ("pid", "comm", "latency_ns")


def messages(as_json: bool) -> list[dict]:
    """One printf message per record, as bpftrace 0.17 prints them (already JSON-decoded)."""
    out = []
    for i in range(N):
        pid, latency = 4000 + i % 500, 1000 + i
        text = (json.dumps({"pid": pid, "comm": "bash", "latency_ns": latency}) if as_json
                else f"{pid} bash {latency}") + "\n"
        out.append({"type": "printf", "data": text})
    return out


def once(batch: list[dict], fields: tuple[str, ...]) -> float:
    started = time.perf_counter()
    events = []
    for message in batch:
        events.extend(route(message, fields).events)
    data, count = _lines(events)
    seconds = time.perf_counter() - started
    assert count == N and b'"latency_ns":' in data
    return seconds


def measure(args: argparse.Namespace) -> list[Row]:
    plain, as_json = messages(False), messages(True)
    split, decoded = [], []
    for _ in range(args.reps):
        split.append(once(plain, FIELDS))
        decoded.append(once(as_json, ()))
    ratio = paired(split, decoded)
    return [Row(metric=f"{N:,} printed lines → records, fields: [pid, comm, latency_ns]",
                value=f"{N / median(split):,.0f} lines/s",
                baseline=f"{N / median(decoded):,.0f} lines/s, the script printing JSON",
                ratio=ratio, goal="≤ 1.5× the JSON time", met=ratio <= 1.5)]


if __name__ == "__main__":
    raise SystemExit(harness.main("bench_bpftrace_fields", measure, reps=7))
