"""Stamp ``"labels": {...}`` into a batch of encoded JSON records, without decoding them.

The pipeline hands sinks batches of JSON lines made in C (``loader/pipeline.py``: nothing runs
per event in Python there). This adds the labels with one regex search and one splice per line:
the record's cgroup id (``cgroup_id`` or ``cgroup``, the names the catalog's structs use; the
first found anywhere in the line, map keys included) or, for a record without one, its process
(``tgid``, then ``pid``, looked up in /proc, so a process that already exited gets none), or a
filter label id (``label``, stamped by ``bpfdepot_monitored()``) through ``label_paths``. The
encoded fragment is cached per cgroup id and rebuilt when the resolver's labels change.

A line with no such field, or whose cgroup has no labels, is passed on unchanged (and counted
in ``unlabelled``); a line that already has ``"labels"`` is left alone.

:class:`FilterStamper` does the same for the process filter, with or without ``--labels``: a
record whose ``label`` is a filter label id (1, 2, …) gets ``"filter":"unit:NAME"`` (or
``cgroup:PATH``, ``pid:N``), the target it matched, so a reader needs no table of label ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping

from loader.labels.resolver import LabelResolver

_CGROUP = re.compile(rb'"(?:cgroup_id|cgroup)":(\d+)')
_PID = re.compile(rb'"(?:tgid|pid)":(\d+)')
_LABEL = re.compile(rb'"label":(\d+)')


class Stamper:
    """Adds labels to JSON-line batches; one per run, called from the pipeline's thread."""

    def __init__(self, resolver: LabelResolver, *, by_pid: bool = True,
                 label_paths: Callable[[int], str | None] | None = None) -> None:
        self.resolver = resolver
        self.by_pid = by_pid
        self.label_paths = label_paths  # filter label id → the cgroup path it stands for
        self._fragments: dict[int, tuple[Mapping[str, str], bytes]] = {}
        self.labelled = self.unlabelled = 0

    def _fragment(self, cg: int) -> bytes:
        labels = self.resolver.labels_for_cgroup_id(cg)
        cached = self._fragments.get(cg)
        if cached is not None and cached[0] is labels:
            return cached[1]
        frag = (b',"labels":' + json.dumps(dict(labels), separators=(",", ":")).encode()
                if labels else b"")
        if len(self._fragments) >= self.resolver.settings.max_entries:
            self._fragments.clear()  # bounded like the resolver; refilled from its cache
        self._fragments[cg] = (labels, frag)
        return frag

    def _cgroup_of(self, line: bytes) -> int | None:
        if m := _CGROUP.search(line):
            return int(m[1])
        if self.label_paths is not None and (m := _LABEL.search(line)) and int(m[1]):
            path = self.label_paths(int(m[1]))
            if path is not None:
                return self.resolver.index.cgroup_id(path)
        if self.by_pid and (m := _PID.search(line)):
            rel = self.resolver.cgroup_of_pid(int(m[1]))
            if rel is not None:
                return self.resolver.index.cgroup_id(rel)
        return None

    def stamp(self, lines: bytes) -> bytes:
        """The batch with ``,"labels":{…}`` before each labelled record's closing brace."""
        if not lines:
            return lines
        out = []
        # every line is kept, empty ones too, so the batch stays aligned with its keys
        for line in lines.removesuffix(b"\n").split(b"\n"):
            cg = None if b'"labels":' in line else self._cgroup_of(line)
            frag = self._fragment(cg) if cg else b""
            if frag and line.endswith(b"}"):
                out.append(line[:-1] + frag + b"}")
                self.labelled += 1
            else:
                out.append(line)
                self.unlabelled += 1
        return b"\n".join(out) + (b"\n" if lines.endswith(b"\n") else b"")


class FilterStamper:
    """Adds ``"filter":"<kind>:<value>"`` to records carrying a filter label id; ``names`` maps
    the id to that text (None: unknown id, the line is left alone)."""

    def __init__(self, names: Callable[[int], str | None]) -> None:
        self.names = names
        self._fragments: dict[int, bytes] = {}
        self.named = 0

    def _fragment(self, label: int) -> bytes:
        frag = self._fragments.get(label)
        if frag is None:
            name = self.names(label)
            if name is None:
                return b""  # not cached: a target added later by a filter file gets its name
            frag = self._fragments[label] = b',"filter":' + json.dumps(name).encode()
        return frag

    def stamp(self, lines: bytes) -> bytes:
        """The batch with ``,"filter":"…"`` before the closing brace of each filtered record."""
        if b'"label":' not in lines:
            return lines
        out = []
        for line in lines.split(b"\n"):
            m = _LABEL.search(line) if b'"filter":' not in line else None
            frag = self._fragment(int(m[1])) if m and int(m[1]) else b""
            if frag and line.endswith(b"}"):
                line = line[:-1] + frag + b"}"
                self.named += 1
            out.append(line)
        return b"\n".join(out)
