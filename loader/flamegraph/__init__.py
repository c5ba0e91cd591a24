"""Flame graphs a person opens: folded stacks, speedscope JSON and our own SVG.

    folded.py      ``a;b;c 42`` lines (flamegraph.pl's input), merge and parse
    speedscope.py  speedscope's "sampled" JSON profile
    svg.py         the SVG flame graph, searchable and zoomable, no web fetch

A stack is ``(frames root first, value)``. Stack channels (loader/outputs/stack_counts.py)
emit records holding a folded ``stack`` string (root first, the comm as the root frame) and a
``value`` in ``unit``; ``stacks_from_records`` turns such records into stacks, and
``StackCollector`` gathers them from a running pipeline (``bpfdepot run --flamegraph``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from loader.flamegraph.folded import Stack, merge, parse_folded, read_folded, write_folded
from loader.flamegraph.speedscope import write_speedscope
from loader.flamegraph.svg import write_svg

__all__ = ["Stack", "merge", "parse_folded", "read_folded", "write_folded", "write_speedscope",
           "write_svg", "Filters", "StackSet", "stacks_from_records", "is_stack_record",
           "StackCollector"]


def is_stack_record(record: Any) -> bool:
    """A record of a stack channel: a folded ``stack`` string and a numeric ``value``."""
    return (isinstance(record, dict) and isinstance(record.get("stack"), str)
            and isinstance(record.get("value"), (int, float)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Filters:
    """Which stacks to keep: ``grep`` searches the folded stack; pid/comm match the record."""

    grep: re.Pattern[str] | None = None
    pid: int | None = None
    comm: str | None = None

    def keep(self, record: Mapping[str, Any]) -> bool:
        if self.pid is not None and record.get("pid") != self.pid:
            return False
        if self.comm is not None and record.get("comm") != self.comm:
            return False
        return self.grep is None or self.grep.search(record["stack"]) is not None


@dataclass(slots=True)
class StackSet:
    """Stacks summed by their folded text, with the unit they are counted in and the names
    of the kernel frames seen (so the SVG can colour them)."""

    totals: dict[str, int] = field(default_factory=dict)
    units: set[str] = field(default_factory=set)
    kernel: set[str] = field(default_factory=set)
    records: int = 0

    def add(self, record: Mapping[str, Any]) -> None:
        stack = record["stack"]
        self.totals[stack] = self.totals.get(stack, 0) + int(record["value"])
        self.units.add(str(record.get("unit") or "samples"))
        kernel = record.get("kernel")
        if isinstance(kernel, list):
            # the folded stack names kernel frames without their +0xOFF
            self.kernel.update(k.partition("+0x")[0] for k in kernel if isinstance(k, str))
        self.records += 1

    def stacks(self) -> list[Stack]:
        return merge((text.split(";"), value) for text, value in self.totals.items())

    @property
    def unit(self) -> str:
        """The one unit of these stacks (``samples`` when none was said)."""
        return sorted(self.units)[0] if len(self.units) == 1 else "samples"


def stacks_from_records(records: Iterable[Mapping[str, Any]], filters: Filters = Filters()) -> StackSet:
    """The stack records among ``records`` that ``filters`` keeps, summed. Stack channels emit
    per-interval counts (their map is cleared after each read), so summing is the total."""
    out = StackSet()
    for record in records:
        if is_stack_record(record) and filters.keep(record):
            out.add(record)
    return out


class StackCollector:
    """A pipeline tap (``Outlets.taps``) that keeps the stack records of a run, per stream.

    A stream is judged by its first record: streams of other channels are ignored from then on
    at the cost of one dict lookup per batch, so a busy event channel is not parsed twice."""

    def __init__(self) -> None:
        self.streams: dict[str, StackSet | None] = {}
        self.bad = 0  # lines of a stack stream that were not JSON (counted, never hidden)

    def tap(self, stream: str, lines: bytes, count: int) -> None:
        if self.streams.get(stream, 0) is None:
            return
        for line in lines.splitlines():
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                self.bad += 1
                continue
            found = self.streams.get(stream, 0)
            if found == 0:
                found = self.streams[stream] = StackSet() if is_stack_record(record) else None
            if found is None:
                return
            if is_stack_record(record):
                found.add(record)

    def stack_streams(self) -> dict[str, StackSet]:
        """The streams that carried stack records, by name."""
        return {name: s for name, s in sorted(self.streams.items()) if s is not None}
