"""``bpfdepot flamegraph`` and the ``--flamegraph`` / ``--folded`` / ``--speedscope`` flags of
``bpfdepot run``: stack records to pictures a person opens.

    bpfdepot run bpf/cpu_profile -d 10 --flamegraph cpu.svg --folded cpu.folded
    bpfdepot flamegraph cpu.folded -o cpu.svg                 a folded file
    bpfdepot flamegraph events.jsonl -o cpu.json --pid 1234   JSON lines of stack records (run -o)
    bpfdepot flamegraph cpu_profile --since 10m -o cpu.svg    the time-series store (run --tsdb)
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path

from loader.errors import BpfDepotError
from loader.flamegraph import (Filters, StackCollector, StackSet, parse_folded, stacks_from_records,
                               write_folded, write_speedscope, write_svg)
from loader.model.settings import Settings

FORMATS = ("svg", "folded", "speedscope")
_SUFFIX_FORMAT = {".svg": "svg", ".folded": "folded", ".txt": "folded", ".json": "speedscope"}
Say = Callable[[str], None]


def write_format(fmt: str, path: Path, stacks: StackSet, *, title: str) -> int:
    """Write ``stacks`` to ``path`` as ``fmt``; return how many distinct stacks it holds."""
    merged = stacks.stacks()
    if fmt == "folded":
        return write_folded(path, merged)
    if fmt == "speedscope":
        write_speedscope(path, merged, name=title, unit=stacks.unit)
    else:
        write_svg(path, merged, title=title, unit=stacks.unit, kernel=stacks.kernel)
    return len(merged)


# -- bpfdepot run --flamegraph ---------------------------------------------------------------


def add_run_flags(run: argparse.ArgumentParser) -> None:
    """The run command's flags that turn its stack channels into files at stop."""
    run.add_argument("--flamegraph", metavar="FILE.svg",
                     help="at stop, draw the stack channels' records as an SVG flame graph")
    run.add_argument("--folded", metavar="FILE", help="at stop, write them as folded stacks")
    run.add_argument("--speedscope", metavar="FILE.json",
                     help="at stop, write them as a speedscope profile")


def run_collector(args: argparse.Namespace) -> StackCollector | None:
    """A collector for the run's pipeline when any of the flags asks for a file."""
    wanted = [getattr(args, n, None) for n in FORMATS[1:] + ("flamegraph",)]
    return StackCollector() if any(wanted) else None


def write_run_outputs(args: argparse.Namespace, collector: StackCollector, say: Say) -> None:
    """Write each file asked for; one stack stream → the path as given, several → one file per
    stream (``cpu.svg`` → ``cpu.<program>.<channel>.svg``), since samples and nanoseconds do
    not add up in one picture."""
    streams = collector.stack_streams()
    if not streams:
        say("bpfdepot: no channel of this run gave stack records (records with 'stack' and "
            "'value'): the flame graph files are empty; run a program with a stack channel, "
            "e.g. bpf/cpu_profile")
    if collector.bad:
        say(f"bpfdepot: {collector.bad} stack record line(s) were not JSON and are not drawn")
    for fmt, given in (("svg", args.flamegraph), ("folded", args.folded),
                       ("speedscope", args.speedscope)):
        if not given:
            continue
        base = Path(given)
        for stream, stacks in (streams.items() if streams else [("", StackSet())]):
            path = base if len(streams) <= 1 else base.with_name(f"{base.stem}.{stream}{base.suffix}")
            title = f"{stream or 'no stacks'} ({stacks.unit})"
            n = write_format(fmt, path, stacks, title=title)
            total = sum(stacks.totals.values())
            say(f"bpfdepot: {fmt} of {stream or 'this run'}: {total:,} {stacks.unit} in {n} "
                f"stack(s) → {path.resolve()}")


# -- bpfdepot flamegraph ---------------------------------------------------------------------


def _filters(args: argparse.Namespace) -> Filters:
    try:
        grep = re.compile(args.grep) if args.grep else None
    except re.error as exc:
        raise BpfDepotError(f"--grep {args.grep!r} is not a regular expression: {exc}",
                            hint="for example: --grep 'burn_leaf' or --grep '^python;'") from exc
    return Filters(grep=grep, pid=args.pid, comm=args.comm)


def _from_file(path: Path, args: argparse.Namespace, filters: Filters) -> StackSet:
    text = path.read_text(encoding="utf-8", errors="replace")
    first = next((line.lstrip() for line in text.splitlines() if line.strip()), "")
    if args.since:
        raise BpfDepotError(f"--since reads the time-series store, and {path} is a file",
                            hint="drop --since, or name a program: bpfdepot flamegraph PROGRAM --since 10m")
    if not first.startswith("{"):  # folded: pid is gone, comm is the root frame
        if args.pid is not None:
            raise BpfDepotError(f"{path} holds folded stacks, which carry no pid",
                                hint="filter by --comm (the first frame), or render from the JSON "
                                     "records (bpfdepot run -o FILE) or the time-series store")
        records = [{"stack": ";".join(frames), "value": value, "comm": frames[0]}
                   for frames, value in parse_folded(text, str(path))]
        return stacks_from_records(records, filters)
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            raise BpfDepotError(f"{path}:{number}: not a JSON record ({exc})",
                                hint="pass JSON lines as bpfdepot run -o writes them, or a folded file") from exc
    found = stacks_from_records(records, filters)
    if not any(isinstance(r, dict) and "stack" in r for r in records):
        raise BpfDepotError(f"{path} holds {len(records)} record(s) and none is a stack record "
                            "(with 'stack' and 'value')",
                            hint="record a stack channel, e.g. bpfdepot run bpf/cpu_profile -o FILE")
    return found


def _from_tsdb(name: str, args: argparse.Namespace, settings: Settings, filters: Filters) -> StackSet:
    from builder.query import parse_duration
    from loader.sinks.tsdb import default_path, query

    since = parse_duration(args.since) if args.since else None
    db = Path(args.db) if args.db else default_path(settings)
    result = query(db, name, since_s=since, where=[], group_by=None, limit=1 << 62)
    found = stacks_from_records(result.rows, filters)
    if not any("stack" in row for row in result.rows):
        raise BpfDepotError(f"'{name}' in {db} has no stack records "
                            f"(streams: {', '.join(result.streams)})",
                            hint="name a program with a stack channel, e.g. cpu_profile, or "
                                 "PROGRAM.CHANNEL")
    return found


def cmd_flamegraph(args: argparse.Namespace, settings: Settings) -> int:
    fmt = args.format or _SUFFIX_FORMAT.get(Path(args.output).suffix.lower(), "svg")
    filters = _filters(args)
    path = Path(args.input)
    if path.is_file():
        stacks = _from_file(path, args, filters)
    elif path.suffix or "/" in args.input:
        raise BpfDepotError(f"{args.input} does not exist",
                            hint="pass a folded file, a JSON-lines file of stack records, or a "
                                 "program name stored in the time-series store")
    else:
        stacks = _from_tsdb(args.input, args, settings, filters)
    if len(stacks.units) > 1:
        raise BpfDepotError(f"the stacks of {args.input} are counted in several units "
                            f"({', '.join(sorted(stacks.units))}), which do not add up",
                            hint="pick one channel: PROGRAM.CHANNEL")
    title = args.title or f"{args.input} ({stacks.unit})"
    n = write_format(fmt, Path(args.output), stacks, title=title)
    total = sum(stacks.totals.values())
    print(f"{fmt}: {total:,} {stacks.unit} in {n} stack(s) from {stacks.records} record(s) → "
          f"{Path(args.output).resolve()}")
    return 0


def register_commands(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("flamegraph", help="render stack records as an SVG flame graph, folded "
                       "stacks or a speedscope profile")
    f.add_argument("input", help="a folded file, a JSON-lines file of stack records (bpfdepot run "
                   "-o), or a program (PROGRAM.CHANNEL) in the time-series store")
    f.add_argument("--output", "-o", required=True, metavar="FILE",
                   help="where to write (.svg, .folded, .json choose the format)")
    f.add_argument("--format", choices=FORMATS, help="svg, folded or speedscope (default: by -o's suffix)")
    f.add_argument("--title", help="the title of the graph (default: the input and the unit)")
    f.add_argument("--grep", metavar="REGEX", help="keep only stacks whose folded text matches")
    f.add_argument("--pid", type=int, help="keep only this pid's stacks")
    f.add_argument("--comm", help="keep only stacks of this command name")
    f.add_argument("--since", metavar="DURATION", help="store only: records newer than this (10m, 2h)")
    f.add_argument("--db", metavar="PATH", help="the store to read (default $BPFDEPOT_HOME/tsdb/events.sqlite)")
    f.set_defaults(func=cmd_flamegraph)
