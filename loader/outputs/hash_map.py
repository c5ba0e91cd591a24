"""``type: hash_map``: a BPF map read whole every ``interval``, and once more after detach.

Hash, LRU hash, array and their per-CPU forms. Each read is C (loader/native/bpfdepot_maps.c):
batch lookups into buffers, then one record per entry, the key's bytes followed by the value's,
through the channel's C encoder (key and value fields flattened into one JSON object: a scalar
key is "key", a scalar value "value"; ``decoders:`` apply to these fields as to event fields)
or, with ``events:`` routes, framed for the processors as those raw bytes. Array slots whose
value is all zero were never written and are left out.

    channels:
      counts:
        type: hash_map
        interval: 1s          # ms, s or m; a bare number is seconds (default 1s)
        reset: true           # delete what was read (hash maps: lookup-and-delete, atomic per
                              # bucket; arrays are zeroed, which can miss an increment racing it)
        per_cpu: sum          # per-CPU values: integer fields summed (default) | keep: one
                              # record per CPU with a "cpu" field (CPUs with all-zero values left out)
        top: 10               # only the 10 largest ...
        sort: count           # ... by this integer field of the value (largest first)
        delta: true           # integer fields as their change since the last read (a counter
                              # that went down restarted: all of it counts); unchanged entries dropped
        metric: counter       # --metrics: value fields as counters (default) | gauge

Stats: received = entries read, lost = entries that could not be read, plus the program's own
``<map>_lost`` per-CPU counter when it keeps one (as ring buffers do). With ``--metrics`` each
integer value field is exported as ``bpfdepot_<program>_<channel>_<field>_total`` (counters; a
cumulative map sets the total, a reset or delta map adds each read) or without ``_total`` as a
gauge, labelled by the key's fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from loader.errors import ManifestError
from loader.model.yamldoc import TAG
from loader.outputs import ChannelContext, ChannelStats, OutputKind, Periodic, register
from loader.outputs.ring_buffer import kernel_lost

# The libbpf readers (cffi) are imported where a run opens a channel: every manifest names its
# output kinds, and a build reads it without loading anything.
if TYPE_CHECKING:
    from yaml.nodes import Node

    from loader.libbpf.encode import Channel
    from loader.libbpf.readers import MapReader, Span

    from loader.kernel.btf import Btf, MapDef
    from loader.model.yamldoc import YamlDoc
    from loader.sinks.prometheus import Metrics

MAP_TYPES = ("hash", "lru_hash", "array", "percpu_hash", "lru_percpu_hash", "percpu_array")
PERCPU = frozenset(("percpu_hash", "lru_percpu_hash", "percpu_array"))
ARRAYS = frozenset(("array", "percpu_array"))
COMMON_OPTIONS = ("interval", "reset", "per_cpu")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}
MIN_INTERVAL_S = 0.01


# -- manifest options --------------------------------------------------------------------------

def parse_interval(doc: YamlDoc, node: Node, at: str) -> float:
    """``1s``, ``500ms``, ``2m`` or a number of seconds."""
    text = getattr(node, "value", "")
    match = _DURATION.fullmatch(str(text).strip())
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)] if match else 0.0
    if seconds < MIN_INTERVAL_S:
        raise doc.error(node, f"interval {text!r} in {at} is not a duration of at least 10 ms",
                        hint="write e.g. interval: 1s, 500ms or 2m")
    return seconds


def positive_int(doc: YamlDoc, node: Node, key: str, at: str) -> int:
    if not (getattr(node, "tag", "") == TAG + "int" and int(node.value) >= 1):
        raise doc.error(node, f"{key} in {at} must be a whole number of at least 1, got "
                        f"{getattr(node, 'value', node)!r}", hint=f"e.g. {key}: 10")
    return int(node.value)


def parse_common(doc: YamlDoc, values: Mapping[str, Node], at: str) -> dict[str, Any]:
    """``interval``, ``reset`` and ``per_cpu``, which map snapshots and histograms share."""
    out: dict[str, Any] = {"interval": 1.0, "reset": False, "per_cpu": "sum"}
    if "interval" in values:
        out["interval"] = parse_interval(doc, values["interval"], at)
    if "reset" in values:
        out["reset"] = doc.boolean(values["reset"], "reset", at)
    if "per_cpu" in values:
        out["per_cpu"] = doc.choice(values["per_cpu"], "per_cpu", at, ("sum", "keep"))
    return out


def parse_options(doc: YamlDoc, values: Mapping[str, Node], at: str) -> dict[str, Any]:
    out = parse_common(doc, values, at)
    out["delta"] = doc.boolean(values["delta"], "delta", at) if "delta" in values else False
    if out["delta"] and out["reset"]:
        raise doc.error(values["delta"], f"delta and reset in {at} both ask for what changed "
                        "since the last read", hint="keep one: reset: true empties the map, "
                        "delta: true keeps it and subtracts")
    out["top"] = positive_int(doc, values["top"], "top", at) if "top" in values else 0
    out["sort"] = (doc.c_identifier(values["sort"], "sort", at, what="value field")
                   if "sort" in values else None)
    out["metric"] = (doc.choice(values["metric"], "metric", at, ("counter", "gauge"))
                     if "metric" in values else "counter")
    return out


# -- the map and its fields --------------------------------------------------------------------

def map_def(ctx: ChannelContext, kind: str) -> MapDef:
    """The channel's map, checked to be one this kind reads."""
    found = ctx.info.map(ctx.name)
    if found is None or found.type_name not in MAP_TYPES:
        what = found.type_name if found else "not a map"
        raise ManifestError(f"channel '{ctx.name}' of '{ctx.program}' is {what}; type {kind} "
                            f"reads {', '.join(MAP_TYPES)} maps",
                            hint="use ring_buffer / perf_buffer for event maps")
    if not found.key_type_id or not found.value_type_id:
        raise ManifestError(f"channel '{ctx.name}' of '{ctx.program}': the map has no BTF key "
                            "and value types", hint="declare them with __type(key, ...) and "
                            "__type(value, ...)")
    return found


def int_spans(btf: Btf, type_id: int, base: int = 0) -> list[Span]:
    """Every integer field (not bool, not char text, not big-endian) of a value, in order:
    what per-CPU sums add up and deltas subtract."""
    from loader.libbpf.readers import Span

    t = btf.strip(type_id)
    if t.kind == "int":
        size = btf.size_of(type_id)
        plain = not t.int_bool and size in (1, 2, 4, 8) and t.name != "char"
        return [Span(offset=base, size=size, signed=t.int_signed)] if plain else []
    if t.kind == "struct":
        return [s for m in t.members if not m.bitfield_size
                for s in int_spans(btf, m.type_id, base + m.bit_offset // 8)]
    if t.kind == "array":
        step = btf.size_of(t.elem_type_id)
        return [s for i in range(t.nelems) for s in int_spans(btf, t.elem_type_id, base + i * step)]
    return []  # enums are names, pointers addresses, unions ambiguous: never summed


def value_fields(btf: Btf, mdef: MapDef) -> dict[str, Span]:
    """The value's top-level integer fields by the name records give them."""
    t = btf.strip(mdef.value_type_id)
    if t.kind != "struct":
        spans = int_spans(btf, mdef.value_type_id)
        return {"value": spans[0]} if len(spans) == 1 else {}
    key = btf.strip(mdef.key_type_id)
    key_names = {m.name for m in key.members} if key.kind in ("struct", "union") else {"key"}
    out = {}
    for m in t.members:
        spans = [] if m.bitfield_size or m.name.startswith("__") else \
            int_spans(btf, m.type_id, m.bit_offset // 8)
        if len(spans) == 1 and btf.strip(m.type_id).kind == "int":
            out[m.name if m.name not in key_names else f"value_{m.name}"] = spans[0]
    return out


def key_fields(btf: Btf, mdef: MapDef) -> list[str]:
    """The key's top-level field names in records ("key" for a scalar key)."""
    key = btf.strip(mdef.key_type_id)
    if key.kind in ("struct", "union"):
        return [m.name for m in key.members if m.name and not m.name.startswith("__")]
    return ["key"]


def open_reader(ctx: ChannelContext, mdef: MapDef, options: Mapping[str, Any], *,
                spans: Sequence[Span], sort_span: int = -1, top: int = 0,
                delta: bool = False) -> MapReader:
    from loader.libbpf.readers import MAP_DELTA, MAP_KEEP_CPU, MAP_RESET, MAP_SKIP_ZERO, MapReader

    percpu = mdef.type_name in PERCPU
    array = mdef.type_name in ARRAYS
    flags = (MAP_RESET if options.get("reset") else 0) | (MAP_DELTA if delta else 0)
    flags |= MAP_KEEP_CPU if percpu and options.get("per_cpu") == "keep" else 0
    flags |= MAP_SKIP_ZERO if array else 0
    return MapReader(ctx.obj.map_fd(ctx.name), label=f"{ctx.program}/{ctx.name}",
                     key_size=mdef.key_size, value_size=mdef.value_size,
                     max_entries=mdef.max_entries, percpu=percpu, array=array, flags=flags,
                     spans=spans, sort_span=sort_span, top=top)


# -- the reader --------------------------------------------------------------------------------

class HashMapReader(Periodic):
    def __init__(self, ctx: ChannelContext) -> None:
        self.ctx = ctx
        self.mdef = mdef = map_def(ctx, "hash_map")
        self.options = {"interval": 1.0, "reset": False, "per_cpu": "sum", "delta": False,
                        "top": 0, "sort": None, "metric": "counter", **ctx.options}
        btf = ctx.info.btf
        keep = mdef.type_name in PERCPU and self.options["per_cpu"] == "keep"
        spec = ctx.spec
        decoder = ctx.info.map_decoder(ctx.name, overrides=spec.decoders if spec else (),
                                       enums=ctx.enums, keep_cpu=keep)
        self.channel: Channel = ctx.pipeline.channel(ctx.program, ctx.name, decoder)
        self.spans = int_spans(btf, mdef.value_type_id)
        self.sort_span = self._sort_span(value_fields(btf, mdef))
        self.interval = self.options["interval"]
        self.reader: MapReader | None = None
        registry = ctx.pipeline.metrics
        self.export = (MapExport(registry, ctx, key_fields(btf, mdef) + (["cpu"] if keep else []),
                                 list(value_fields(btf, mdef)), self.options)
                       if registry is not None and self.channel.encoder is not None else None)

    def _sort_span(self, fields: dict[str, Span]) -> int:
        sort, top = self.options["sort"], self.options["top"]
        if sort is None and top:
            if len(fields) != 1:
                raise ManifestError(f"channel '{self.ctx.name}': top: {top} needs sort: FIELD to "
                                    "say what is largest", hint=f"one of: {', '.join(fields)}")
            sort = next(iter(fields))
        if sort is None:
            return -1
        if sort not in fields:
            raise ManifestError(f"channel '{self.ctx.name}': sort: {sort} is not an integer field "
                                f"of the value of map '{self.ctx.name}'",
                                hint=f"its integer fields: {', '.join(fields) or 'none'}")
        return self.spans.index(fields[sort])

    def start(self) -> None:
        self.reader = open_reader(self.ctx, self.mdef, self.options, spans=self.spans,
                                  sort_span=self.sort_span, top=self.options["top"],
                                  delta=self.options["delta"])
        self._begin()

    def _read(self) -> None:
        self.reader.read(self.channel)
        self.ctx.pipeline.flush(self.channel, self.export.tap if self.export else None)

    def final(self) -> None:
        if self.reader is not None:
            self._read()

    def stats(self) -> ChannelStats:
        r = self.reader
        return ChannelStats(program=self.ctx.program, channel=self.ctx.name,
                            received=r.entries if r else 0,
                            lost=(r.lost if r else 0) + kernel_lost(self.ctx))

    def close(self) -> None:
        self.reader = None


class MapExport:
    """A map channel's records as Prometheus counters or gauges, one family per value field."""

    def __init__(self, registry: Metrics, ctx: ChannelContext, keys: list[str],
                 values: list[str], options: Mapping[str, Any]) -> None:
        from loader.sinks.prometheus import metric_name

        self.keys = keys
        self.labels = [metric_name(k) for k in keys]
        gauge = options["metric"] == "gauge"
        # a map that is emptied (reset) or reports changes (delta) gives increments to add
        self.adds = not gauge and (options.get("reset") or options.get("delta"))
        self.families = {}
        for field in values:
            name = metric_name("bpfdepot", ctx.program, ctx.name, field)
            if not gauge and not name.endswith("_total"):
                name += "_total"
            family = registry.family(name)
            if family is None:
                help_ = f"{field} of map {ctx.name} of {ctx.program}, by its key"
                family = (registry.gauge if gauge else registry.counter)(name, help_,
                                                                          tuple(self.labels))
            self.families[field] = family

    def tap(self, lines: bytes) -> None:
        for line in lines.splitlines():
            record = json.loads(line)
            labels = {label: _label_value(record.get(key))
                      for label, key in zip(self.labels, self.keys)}
            for field, family in self.families.items():
                value = record.get(field)
                if not isinstance(value, (int, float)):
                    continue
                child = family.labels(**labels)
                if self.adds:
                    if value > 0:
                        child.inc(value)
                else:
                    child.set(value)


def _label_value(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


register(OutputKind(type="hash_map", summary="a BPF map read whole every interval: one record "
                    "per entry", map_types=MAP_TYPES, open=HashMapReader,
                    options=(*COMMON_OPTIONS, "delta", "top", "sort", "metric"),
                    parse=parse_options))
