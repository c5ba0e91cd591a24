"""The tsdb sink alone, without a kernel: 1M flood-like records (the 64-byte flood event as
default decoding prints it, ~120 bytes of JSON) written in polls of 1024 as the pipeline hands
them over, and ``bpfdepot query`` over the store that made, against the sink of another git
revision (the baseline, schema 1 before issue 17) in the same run, repetitions interleaved.

    python bench/bench_tsdb.py --old REV           # default: the last revision of schema 1
    python bench/bench_tsdb.py --records 200000 --reps 5

The old revision's sink gets Records (its pipeline split each batch into them); the current one
gets what its pipeline hands over: ``write_lines`` of the batch (and ``write`` of Records, shown
too). Query times are in-process calls of each revision's ``query`` on its own store, plus the
current ``query`` on the old store (a schema-1 file a node keeps after the upgrade).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

from harness import Row, main, median, ms

from loader.sinks import Record
from loader.sinks import tsdb as new

REPO = Path(__file__).resolve().parents[1]
POLL = 1024
QUERIES = {"count by comm": {"group_by": "comm"}, "stat seq by pid": {"group_by": "pid", "stat": "seq"},
           "newest 20": {"limit": 20}}


def last_schema_1() -> str:
    """The parent of the commit that made loader/sinks/tsdb.py schema 2 (HEAD before it is in)."""
    found = subprocess.run(["git", "-C", str(REPO), "log", "--format=%H", "-S", "SCHEMA = 2", "--",
                            "loader/sinks/tsdb.py"], check=True, capture_output=True, text=True)
    first = found.stdout.split()[-1:]
    return f"{first[0][:12]}~1" if first else "HEAD"


def load_old(rev: str, folder: Path) -> types.ModuleType:
    """loader/sinks/tsdb.py at ``rev`` as a module of its own (not registered as a sink kind)."""
    text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:loader/sinks/tsdb.py"],
                          check=True, capture_output=True, text=True).stdout
    source = folder / "tsdb_old.py"
    source.write_text(text.split("\nregister(SinkKind(")[0])
    spec = importlib.util.spec_from_file_location("tsdb_old", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def batches(records: int) -> list[bytes]:
    """The pipeline's batches: POLL newline-terminated JSON lines each."""
    out, line = [], []
    for i in range(records):
        line.append(b'{"ts_ns":%d,"seq":%d,"pid":%d,"tid":%d,"comm":"producer","arg0":%d,'
                    b'"arg1":0,"arg2":18446744073709551615}\n' % (4_000_000_000_000 + i * 1000, i,
                                                                 4242, 4242, i * 3))
        if len(line) == POLL:
            out.append(b"".join(line))
            line = []
    if line:
        out.append(b"".join(line))
    return out


def write(module: types.ModuleType, path: Path, data: list[bytes], how: str) -> float:
    """Seconds to write and commit every batch; the store is left at ``path``."""
    sink = module.TsdbSink(path, retention_s=None, max_bytes=None)
    started = time.perf_counter()
    for batch in data:
        if how == "lines":
            sink.write_lines("flood.flood_events", batch, batch.count(b"\n"))
        else:  # as the pipeline does for a sink without write_lines
            sink.write("flood.flood_events", [Record(None, v) for v in batch.split(b"\n")[:-1]])
    stats = sink.flush()
    took = time.perf_counter() - started
    sink.close()
    total = sum(b.count(b"\n") for b in data)
    if (stats.delivered, stats.failed) != (total, 0):
        raise SystemExit(f"bench: {module.__name__} delivered {stats.delivered} of {total}: "
                         f"{sink.last_error}")
    return took


def ask(module: types.ModuleType, path: Path, kw: dict) -> float:
    started = time.perf_counter()
    module.query(path, "flood", since_s=None, where=[], group_by=kw.get("group_by"),
                 limit=kw.get("limit", 100), stat=kw.get("stat"))
    return time.perf_counter() - started


def measure(args: argparse.Namespace) -> list[Row]:
    data = batches(args.records)
    times: dict[str, list[float]] = {"old": [], "lines": [], "records": []}
    asked: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tsdb-", dir="/var/tmp") as tmp:
        args.old = args.old or last_schema_1()
        old = load_old(args.old, Path(tmp))
        for i in range(args.reps):  # interleaved, so load that comes and goes hits each alike
            for how, module in (("old", old), ("lines", new), ("records", new)):
                path = Path(tmp) / f"{how}-{i}.sqlite"
                times[how].append(write(module, path, data, "lines" if how == "lines" else "records"))
            for name, kw in QUERIES.items():
                for who, module, store in (("old", old, "old"), ("new", new, "lines"),
                                           ("new on old", new, "old")):
                    path = Path(tmp) / f"{store}-{i}.sqlite"
                    asked.setdefault((name, who), []).append(ask(module, path, kw))
            for how in times:
                for path in Path(tmp).glob(f"{how}-{i}.sqlite*"):
                    if i < args.reps - 1:
                        path.unlink()
    n = args.records
    base = median(times["old"])
    rows = [Row(metric=f"TsdbSink: {n:,} flood records in writes of {POLL}, schema 1 write() "
                       f"({args.old}): records/s", value=f"{n / base:,.0f}")]
    for how, label in (("lines", "write_lines()"), ("records", "write() of Records")):
        t = median(times[how])
        rows.append(Row(metric=f"TsdbSink: schema 2 {label}: records/s", value=f"{n / t:,.0f}",
                        baseline=f"{n / base:,.0f}", ratio=base / t))
    for name in QUERIES:
        was = median(asked[(name, "old")])
        for who in ("new", "new on old"):
            t = median(asked[(name, who)])
            label = "schema 2" if who == "new" else "schema-1 file read by the new query"
            rows.append(Row(metric=f"query {name}, {n:,} rows: {label}", value=ms(t),
                            baseline=f"{ms(was)} schema 1", ratio=t / was))
    return rows


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--old", default=None, help="the git revision to compare with (default: the "
                   "parent of the commit that brought schema 2)")
    p.add_argument("--records", type=int, default=1_000_000, help="records per run (default 1M)")


if __name__ == "__main__":
    sys.exit(main("bench_tsdb", measure, reps=3, add_args=add_args))
