"""bpfdepot ui over a store of 10 million records: each page's server time (p50/p95 over repeated
requests through real HTTP, from the Server-Timing header) against the same aggregation run
directly in SQLite over the store (the baseline), and the rollup cache's cold build and
incremental refresh.

    python bench/bench_ui.py                         # 10M records (fill ~3 min once, then cached)
    python bench/bench_ui.py --records 1000000 --reps 20

The store is filled once per (records, schema, generator version) under /var/tmp/bpfdepot-bench-ui
in the exact schema of loader/sinks/tsdb.py (the TsdbSink creates it; chunks of CHUNK records of
one stream, at their first record's time, go in as bulk inserts), spread over one hour: l7 HTTP
calls 40 %, tcp_connlat events 25 %, cpu_profile stacks 15 %, topology edge snapshots 10 %
(cumulative, 1,000 edges), skb_drops counts 5 % (cumulative), filelat events 5 %; 20 comms, 10 units, 10 pods. The cache is rebuilt cold each run (its time is
"first visit"); the baseline reads the store with json_extract over the page's time range
through the (stream_id, ts_ns) index, as a page without the cache would have to.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sqlite3
import time
import urllib.request
from pathlib import Path

from harness import Row, main, median, ms

from loader.sinks.tsdb import SCHEMA, TsdbSink
from loader.ui.data import Data
from loader.ui.live import OverSocket
from loader.ui.server import open_ui

FOLDER = Path("/var/tmp/bpfdepot-bench-ui")
GENERATOR = 2          # bump when the records written change
SPAN_S = 3600
CHUNK = 64             # records per chunk: a busy node's write() of one poll
GOAL_MS = 300.0
MIX = (("l7.l7_events", 0.40), ("tcp_connlat.tcp_connlat_events", 0.25), ("cpu_profile.counts", 0.15),
       ("topology.topology_edges", 0.10), ("skb_drops.drops", 0.05), ("filelat.filelat_events", 0.05))


def _labels(i: int) -> str:
    return f'"labels":{{"unit":"svc{i % 10}.service","pod":"pod-{i % 10}","namespace":"ns{i % 3}"}}'


def _rows(stream: int, name: str, n: int, t0: int, rnd: random.Random):
    """(ts_ns, stream_id, key, record) rows of one stream, in time order."""
    step = SPAN_S * 10**9 // n
    if name.startswith("l7"):
        for i in range(n):
            c = rnd.randrange(20)
            lat = rnd.lognormvariate(8, 1.2)
            status = 500 if rnd.random() < 0.01 else 200
            err = ',"error":"HTTP 500"' if status == 500 else ""
            yield (t0 + i * step, stream, None,
                   (f'{{"protocol":"http1","role":"client","tls":false,"pid":{1000 + c},"comm":"app{c}",'
                   f'"cgroup":{c},"peer":"10.0.{c % 5}.{c}:8080","latency_us":{lat:.3f},"req_size":73,'
                   f'"resp_size":111,"method":"GET","path":"/api/v1/items/{i % 50}","status":{status}{err},'
                   f'{_labels(c)}}}'))
    elif name.startswith("tcp_connlat"):
        for i in range(n):
            c = rnd.randrange(20)
            lat = rnd.lognormvariate(5, 1.0)
            yield (t0 + i * step, stream, None,
                   (f'{{"pid":{1000 + c},"comm":"app{c}","saddr":"10.0.9.9","daddr":"10.0.{c % 5}.{c}",'
                   f'"sport":{30000 + i % 30000},"dport":8080,"latency_us":{lat:.3f},{_labels(c)}}}'))
    elif name.startswith("cpu_profile"):
        for i in range(n):
            c, s = rnd.randrange(20), rnd.randrange(25)
            user = [f"fn{s}_{d}" for d in range(8)]
            kernel = ["do_syscall_64", "entry_SYSCALL_64"][: s % 3]
            stack = ";".join([f"app{c}", *reversed(user), *reversed(kernel)])
            yield (t0 + i * step, stream, None, json.dumps(
                {"pid": 1000 + c, "comm": f"app{c}", "kernel": [k + "+0x1a" for k in kernel],
                 "user": user, "stack": stack, "value": rnd.randrange(1, 20), "unit": "samples",
                 "labels": {"unit": f"svc{c % 10}.service", "pod": f"pod-{c % 10}", "namespace": f"ns{c % 3}"}},
                separators=(",", ":")))
    elif name.startswith("topology"):
        edges, totals = 1000, [[0, 0, 0] for _ in range(1000)]
        for i in range(n):
            e = i % edges
            tot = totals[e]
            tot[0] += rnd.randrange(1000, 100000)
            tot[1] += rnd.randrange(1000, 100000)
            tot[2] += rnd.random() < 0.1
            c = e % 20
            yield (t0 + i * step, stream, None,
                   (f'{{"cgroup":{c},"pid":{1000 + c},"comm":"app{c}","direction":"client","protocol":"TCP",'
                   f'"family":"AF_INET","laddr":"10.0.9.9","lport":0,"raddr":"10.{e // 250}.{e % 250}.1",'
                   f'"rport":{8000 + e % 7},"bytes_tx":{tot[0]},"bytes_rx":{tot[1]},"conns":{tot[2]},'
                   f'"closed":{tot[2]},{_labels(c)}}}'))
    elif name.startswith("skb_drops"):
        keys, counts = 139, [0] * 139
        for i in range(n):
            k = i % keys
            counts[k] += rnd.randrange(0, 5)
            yield (t0 + i * step, stream, None,
                   (f'{{"reason":"SKB_DROP_REASON_R{k % 23}","protocol":"{("TCP", "UDP")[k % 2]}",'
                   f'"ethertype":2048,"port":{k * 7},"location":"fn_{k % 11}+0x{k:x}","count":{counts[k]}}}'))
    else:
        for i in range(n):
            c = rnd.randrange(20)
            yield (t0 + i * step, stream, None,
                   (f'{{"pid":{1000 + c},"tid":{1000 + c},"comm":"app{c}","fd":3,"op":"write","bytes":4096,'
                   f'"latency_us":{rnd.lognormvariate(9.5, 0.5):.3f},"file":"data.log",{_labels(c)}}}'))


def _chunks(rows):
    """(ts_ns, stream_id, n, records) chunks of CHUNK consecutive rows, at the first one's time."""
    batch: list = []
    for row in rows:
        batch.append(row)
        if len(batch) == CHUNK:
            yield batch[0][0], batch[0][1], len(batch), "[" + ",".join(r[3] for r in batch) + "]"
            batch = []
    if batch:
        yield batch[0][0], batch[0][1], len(batch), "[" + ",".join(r[3] for r in batch) + "]"


def filled(records: int) -> tuple[Path, float, int]:
    """The store with ``records`` rows (made once; cached by size, schema and generator), the
    seconds filling took (0 when cached) and its first second."""
    path = FOLDER / f"tsdb-schema{SCHEMA}-gen{GENERATOR}-{records}.sqlite"
    t0_s = 1_700_000_000
    if path.is_file():
        with sqlite3.connect(path) as db:  # a run killed while measuring the tail leaves its rows
            db.execute("DELETE FROM chunks WHERE id > ?",
                       (sum(-(-int(records * s) // CHUNK) for _, s in MIX),))
        return path, 0.0, t0_s
    FOLDER.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    for old in FOLDER.glob(partial.name + "*"):
        old.unlink()
    began = time.perf_counter()
    TsdbSink(partial, retention_s=None, max_bytes=None).close()  # the real schema
    db = sqlite3.connect(partial, isolation_level=None)
    db.execute("PRAGMA journal_mode = OFF")
    db.execute("PRAGMA synchronous = OFF")
    rnd = random.Random(16)
    for sid, (name, _) in enumerate(MIX, 1):
        db.execute("INSERT INTO streams(id, name, created_ns) VALUES (?, ?, ?)", (sid, name, t0_s * 10**9))
    # in time order across streams, as a node's writer commits them
    chunks = heapq.merge(*(_chunks(_rows(sid, name, int(records * share), t0_s * 10**9, rnd))
                           for sid, (name, share) in enumerate(MIX, 1)), key=lambda c: c[0])
    db.execute("BEGIN")
    db.executemany("INSERT INTO chunks(ts_ns, stream_id, n, records) VALUES (?, ?, ?, ?)", chunks)
    db.execute("COMMIT")
    db.close()
    partial.rename(path)
    return path, time.perf_counter() - began, t0_s


# the same aggregation as each page, straight from the store: what a page without the cache runs
def _baseline(db: sqlite3.Connection, page: str, lo: int, hi: int) -> None:
    sid = {n.partition(".")[0]: i for i, (n, _) in enumerate(MIX, 1)}
    rng = "ts_ns >= ? AND ts_ns < ?"
    sql = {
        "servicemap": ((f"SELECT json_extract(record, '$.comm'), json_extract(record, '$.raddr'), "
                       "json_extract(record, '$.rport'), max(json_extract(record, '$.bytes_tx')) - "
                       "min(json_extract(record, '$.bytes_tx')), max(json_extract(record, '$.bytes_rx')) - "
                       "min(json_extract(record, '$.bytes_rx')) FROM events WHERE stream_id = ? AND "
                       f"{rng} GROUP BY 1, 2, 3"), sid["topology"]),
        "latency": ((f"SELECT (ts_ns - ?) / 60000000000, json_extract(record, '$.comm'), "
                    "CAST(floor(4 * log2(json_extract(record, '$.latency_us') * 1000)) AS INT), count(*) "
                    f"FROM events WHERE stream_id = ? AND {rng} GROUP BY 1, 2, 3"), sid["tcp_connlat"]),
        "latency_http": ((f"SELECT (ts_ns - ?) / 60000000000, CAST(floor(4 * log2(json_extract(record, "
                         "'$.latency_us') * 1000)) AS INT), count(*), sum(json_type(record, '$.error') IS "
                         f"NOT NULL) FROM events WHERE stream_id = ? AND {rng} GROUP BY 1, 2"), sid["l7"]),
        "drops": ((f"SELECT json_extract(record, '$.reason'), max(json_extract(record, '$.count')) - "
                  "min(json_extract(record, '$.count')) FROM events WHERE stream_id = ? AND "
                  f"{rng} GROUP BY json_extract(record, '$.reason'), json_extract(record, '$.port')"),
                  sid["skb_drops"]),
        "flamegraph": ((f"SELECT json_extract(record, '$.stack'), sum(json_extract(record, '$.value')) "
                       f"FROM events WHERE stream_id = ? AND {rng} GROUP BY 1"), sid["cpu_profile"]),
        # an edge's detail: its client's connect latencies to its server (the l7 part alike)
        "edge": ((f"SELECT CAST(floor(4 * log2(json_extract(record, '$.latency_us') * 1000)) AS INT), "
                  f"count(*) FROM events WHERE stream_id = ? AND {rng} AND json_extract(record, '$.comm') "
                  "= 'app0' AND json_extract(record, '$.daddr') = '10.0.0.0' GROUP BY 1"), sid["tcp_connlat"]),
    }[page]
    text, stream = sql
    params = ([lo] if text.startswith("SELECT (ts_ns") else []) + [stream, lo, hi]
    db.execute(text, params).fetchall()


def _server_ms(url: str) -> float:
    with urllib.request.urlopen(url, timeout=120) as r:
        r.read()
        timing = r.headers["Server-Timing"]
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status}")
    return float(timing.partition("dur=")[2])


def _p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, round(0.95 * len(xs)) - 1)]


def measure(args: argparse.Namespace) -> list[Row]:
    db, fill_s, t0 = filled(args.records)
    print(f"store: {db} ({db.stat().st_size / 2**30:.2f} GiB); "
          + (f"filled in {fill_s:.0f} s" if fill_s else "cached (fill skipped)"), flush=True)
    cache = FOLDER / "bench.ui-cache"
    for old in FOLDER.glob("bench.ui-cache*"):
        old.unlink()
    began = time.perf_counter()
    data = Data(db, cache)
    data.refresh()
    cold = time.perf_counter() - began
    data.close()
    rows = [Row(metric=f"cold rollup of {args.records:,} records (first visit)", value=f"{cold:.1f} s",
                baseline=f"{args.records / cold / 1e6:.2f} M rows/s")]
    server = open_ui(db, OverSocket(FOLDER / "no-agent.sock"), "127.0.0.1:0", cache=cache, say=print)
    raw = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        hour = f"from={t0}&to={t0 + SPAN_S}"
        quarter = f"from={t0 + SPAN_S - 900}&to={t0 + SPAN_S}"
        edge = json.loads(urllib.request.urlopen(f"{server.url}/api/servicemap?{hour}").read())["edges"][0]["id"]
        pages = [("servicemap", f"/api/servicemap?{hour}", "servicemap", SPAN_S),
                 ("servicemap 15 min", f"/api/servicemap?{quarter}", "servicemap", 900),
                 ("edge detail", f"/api/servicemap/edge?id={edge}&{hour}", "edge", SPAN_S),
                 ("latency connect by comm", f"/api/latency?metric=connect&by=comm&{hour}", "latency", SPAN_S),
                 ("latency http", f"/api/latency?metric=http&{hour}", "latency_http", SPAN_S),
                 ("drops", f"/api/drops?{hour}", "drops", SPAN_S),
                 ("flamegraph", f"/api/flamegraph?{hour}", "flamegraph", SPAN_S)]
        for label, path, base, span in pages:
            times = [_server_ms(server.url + path) for _ in range(args.reps)]
            p50, p95 = median(times), _p95(times)
            baseline = ratio = None
            if base:
                lo = (t0 + SPAN_S - span) * 10**9
                b = []
                for _ in range(max(1, min(3, args.reps // 10))):
                    start = time.perf_counter()
                    _baseline(raw, base, lo, (t0 + SPAN_S) * 10**9)
                    b.append((time.perf_counter() - start) * 1000)
                baseline, ratio = median(b), p50 / median(b)
            rows.append(Row(metric=f"{label}: server p50 (p95 {p95:.1f} ms)", value=f"{p50:.1f} ms",
                            baseline=f"{baseline:.0f} ms raw SQL" if baseline else "—", ratio=ratio,
                            goal=f"≤ {GOAL_MS:.0f} ms", met=p95 <= GOAL_MS))
        # the tail: rows a running writer adds, summed by the next refresh
        more = sqlite3.connect(db)
        try:
            (top,) = more.execute("SELECT max(id) FROM chunks").fetchone()
            rows.append(_tail_row(db, cache, more, top))
        finally:
            more.close()
    finally:
        raw.close()
        server.stop()
    return rows


def _tail_row(db: Path, cache: Path, more: sqlite3.Connection, top: int) -> Row:
    """10,000 new rows (a second of a busy writer) summed into a warm cache; then removed."""
    sample = more.execute("SELECT ts_ns, stream_id, n, records FROM chunks WHERE id > ?",
                          (top - 10_000 // CHUNK,)).fetchall()
    more.execute("BEGIN")
    more.executemany("INSERT INTO chunks(ts_ns, stream_id, n, records) VALUES (?, ?, ?, ?)", sample)
    more.execute("COMMIT")
    try:
        data = Data(db, cache)
        start = time.perf_counter()
        data.refresh()
        took = time.perf_counter() - start
        data.close()
    finally:
        more.execute("DELETE FROM chunks WHERE id > ?", (top,))
        for old in FOLDER.glob("bench.ui-cache*"):
            old.unlink()  # its watermark passed rows that are gone now
    return Row(metric="refresh: 10,000 new rows into a warm cache", value=ms(took))


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", type=int, default=10_000_000, help="rows in the store (default 10M)")


if __name__ == "__main__":
    raise SystemExit(main("bench_ui", measure, reps=30, add_args=add_args))
