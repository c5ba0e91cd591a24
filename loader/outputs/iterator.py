"""``type: iterator``: a BPF iterator program (``SEC("iter/tcp")``, ``SEC("iter/task")``, ...)
read on demand: once when the run starts, then every ``interval`` if one is given, never after
stop. The channel is named after the BPF program, not a map:

    channels:
      dump_tcp:                  # the iterator program's name
        type: iterator
        interval: 5s             # optional: 5, 5s, 500ms; without it, one read at start
        format: json             # optional: each line the program prints is a JSON object

Each read makes a fresh iterator fd from the program's link (``bpf_iter_create``) and reads it
to EOF: the kernel walks its objects (sockets, tasks, map elements) and calls the program for
each, and what the program writes with ``BPF_SEQ_PRINTF`` is the text read. One line is one
record: ``{"line": "..."}`` by default; with ``format: json`` the line is the record, passed
through as it is, and a line that is not a JSON object is counted as ``short`` (never dropped
unseen). Blank lines carry nothing and are skipped. Iterators lose nothing: ``lost`` stays 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from yaml.nodes import Node, ScalarNode

from loader.errors import LoadError
from loader.model.yamldoc import TAG, YamlDoc, kind_of
from loader.outputs import ChannelContext, ChannelStats, OutputKind, Periodic, register

FORMATS = ("text", "json")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m)?")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}
MIN_INTERVAL = 0.01  # s: each read walks every object of its kind; faster is a mistake


def parse_interval(doc: YamlDoc, node: Node, at: str) -> float:
    """``interval:`` as seconds: a number (s) or a string with ms, s or m."""
    text = node.value if isinstance(node, ScalarNode) else ""
    match = _DURATION.fullmatch(str(text).strip()) if node.tag in (
        TAG + "int", TAG + "float", TAG + "str") else None
    seconds = float(match.group(1)) * _UNIT[match.group(2)] if match else 0.0
    if seconds < MIN_INTERVAL:
        raise doc.error(node, f"interval in {at} must be a duration of at least 10ms, got "
                        f"{text if isinstance(node, ScalarNode) else kind_of(node)}",
                        hint="e.g. interval: 5s, interval: 500ms or interval: 2 (seconds)")
    return seconds


def parse(doc: YamlDoc, values: Mapping[str, Node], at: str) -> dict[str, Any]:
    out: dict[str, Any] = {"interval": None, "format": "text"}
    if "interval" in values:
        out["interval"] = parse_interval(doc, values["interval"], at)
    if "format" in values:
        out["format"] = doc.choice(values["format"], "format", at, FORMATS)
    return out


def records(data: bytes, as_json: bool) -> tuple[bytes, int, int]:
    """An iterator's text → (JSON lines, records, lines refused as not JSON objects)."""
    out, bad = [], 0
    for raw in data.split(b"\n"):
        line = raw.strip()
        if not line:
            continue
        if not as_json:
            out.append(json.dumps({"line": raw.rstrip(b"\r").decode("utf-8", "replace")},
                                  ensure_ascii=False).encode())
            continue
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:  # json.JSONDecodeError and bad UTF-8 alike
            ok = False
        if ok:
            out.append(line)
        else:
            bad += 1
    return b"".join(line + b"\n" for line in out), len(out), bad


class IteratorReader(Periodic):
    """One iterator program, read at start and every ``interval``."""

    def __init__(self, ctx: ChannelContext) -> None:
        self.ctx = ctx
        self.deliver = ctx.pipeline.records(ctx.program, ctx.name)
        self.interval: float | None = ctx.options.get("interval")
        self.as_json = ctx.options.get("format", "text") == "json"
        self.link_fd: int | None = None
        self.next: float | None = None
        self.received = self.short = self.reads = 0

    def start(self) -> None:
        from loader.libbpf.attach import iter_link_fd  # cffi: only where a run reads the iterator

        fd = iter_link_fd(self.ctx.obj, self.ctx.name)
        if fd is None:
            raise LoadError(f"iterator '{self.ctx.name}' of '{self.ctx.program}' is not attached",
                            hint=f"do not keep it out (autoload: false); attach it with "
                                 f"{self.ctx.name}: {{iter: {{}}}} or let libbpf auto-attach it")
        self.link_fd = fd
        self._read()  # at start: what exists before the run is seen at once
        self._begin()

    def _read(self) -> None:
        from loader.libbpf.attach import iter_read

        lines, count, bad = records(iter_read(self.link_fd), self.as_json)
        self.reads += 1
        self.received += count
        self.short += bad
        if count:
            self.deliver(lines, count)

    def final(self) -> None:
        self.next = None  # never read after stop: the link is gone

    def stats(self) -> ChannelStats:
        return ChannelStats(program=self.ctx.program, channel=self.ctx.name,
                            received=self.received, short=self.short,
                            short_means="lines that are not JSON objects")

    def close(self) -> None:
        self.next, self.link_fd = None, None


register(OutputKind(type="iterator", summary="an iterator program read at start and every interval",
                    map_types=(), open=IteratorReader, options=("interval", "format"), parse=parse,
                    events=False))
