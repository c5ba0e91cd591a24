"""``bpfdepot query``: read the events the tsdb sink stored on this node.

    bpfdepot query tcp_connlat --since 10m --where comm=curl
    bpfdepot query tcp_connlat --group-by comm --stat delta_ns --json
    bpfdepot query opensnoop --group-by unit --where namespace=shop   # labels (run --labels)

A label a record carries (``run --labels``: unit, namespace, pod, container, image…) is queried
by its name like a field, or as ``labels.NAME``; a field of the record itself wins over a label
of the same name.

A table (plain aligned text) or, with --json, one JSON document with the rows. The store is
read while ``bpfdepot run`` writes it (loader/sinks/tsdb.py says why that holds).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from loader.errors import BpfDepotError
from loader.model.settings import Settings
from loader.sinks.tsdb import STATS, QueryResult, default_path, query

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_CELL = 48  # characters; longer cells (hex dumps, lists) are cut in the table, never in --json


def parse_duration(text: str, flag: str = "--since") -> float:
    """``30s``, ``10m``, ``2h``, ``1d``, ``1h30m``, ``500ms`` → seconds (``flag`` names the
    option in the error)."""
    cleaned = text.strip().lower()
    parts = _DURATION.findall(cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned or not (
            seconds := sum(float(n) * _UNITS[u] for n, u in parts)):
        raise BpfDepotError(f"{flag} {text!r} is not a duration",
                            hint=f"a number with a unit, for example: {flag} 30s, {flag} 10m, "
                                 f"{flag} 2h, {flag} 1d, {flag} 1h30m")
    return seconds


def parse_where(pairs: list[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field.strip():
            raise BpfDepotError(f"--where {pair!r} is not FIELD=VALUE",
                                hint="for example: --where comm=curl --where dport=8000")
        out.append((field.strip(), value))
    return out


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    since = parse_duration(args.since) if args.since else None
    result = query(Path(args.db) if args.db else default_path(settings), args.program,
                   since_s=since, where=parse_where(args.where), group_by=args.group_by,
                   limit=args.limit, stat=args.stat)
    if args.json:
        print(json.dumps({"program": args.program, "streams": list(result.streams),
                          "since_s": since, "group_by": result.group_by, "stat": result.stat,
                          "columns": list(result.columns), "rows": list(result.rows)}))
    elif result.rows:
        print(format_table(result), end="")
    else:
        window = f" in the last {args.since}" if args.since else ""
        print(f"no events of {args.program}{window} match")
    return 0


def format_table(result: QueryResult) -> str:
    """Plain aligned text: numbers right-aligned, text left; events get a local time column."""
    columns = list(result.columns)
    rows = [dict(r) for r in result.rows]
    if "ts_ns" in columns and not (result.group_by or result.stat):
        columns[columns.index("ts_ns")] = "time"
        for row in rows:
            row["time"] = _clock(row["ts_ns"])
        if len(result.streams) == 1 or len({r["stream"] for r in rows}) == 1:
            columns.remove("stream")
    if result.stat:  # name the field the statistics are of: "delta_ns p50"
        label = {c: f"{result.stat} {c}" for c in STATS}
        columns = [label.get(c, c) for c in columns]
        rows = [{label.get(k, k): v for k, v in r.items()} for r in rows]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    numeric = [all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows)
               for c in columns]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip() + "\n"

    return line(columns) + "".join(line(c) for c in cells)


def _clock(ts_ns: int) -> str:
    seconds, ns = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) + f".{ns // 1_000_000:03d}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:.1f}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(",", ":"))
    else:
        text = str(value)
    return text if len(text) <= _CELL else text[:_CELL - 1] + "…"


def register_commands(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("query", help="show or summarise the events stored by the tsdb sink")
    q.add_argument("program", help="a program name (all its channels) or PROGRAM.CHANNEL")
    q.add_argument("--since", metavar="DURATION", help="only events newer than this: 30s, 10m, 2h, 1d")
    q.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                   help="keep events whose field (or label: unit, pod, ...) equals the value "
                        "(repeatable; all must hold)")
    q.add_argument("--group-by", metavar="FIELD", help="one row per value of this field or label (unit, namespace, pod, "
                        "container, image, filter), with a count")
    q.add_argument("--stat", metavar="FIELD",
                   help="min, avg, max, p50, p90, p99 of this numeric field (per group with --group-by)")
    q.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    q.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    q.add_argument("--db", metavar="PATH", help="the store to read (default $BPFDEPOT_HOME/tsdb/events.sqlite)")
    q.set_defaults(func=cmd_query)
