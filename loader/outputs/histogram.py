"""``type: histogram``: a map whose value holds an array of counters (slots), one histogram per
key, read every ``interval`` (and once more after detach) through the same C batch read as
``hash_map`` (per-CPU slots summed in C), then made into records here: a histogram map is
small and read once a second, so Python is cheap enough.

    channels:
      hists:
        type: histogram
        buckets: log2         # slot i counts values in [2^i, 2^(i+1)); slot 0 holds 0 and 1
                              # (libbpf-tools bits.bpf.h log2l) | linear: slot i counts
                              # [min + i*step, min + (i+1)*step)
        step: 10              # linear only (required there); min: 0 (linear, optional)
        unit: us              # a label: us, ns, ms, bytes, ...
        field: slots          # the value member holding the slots (default: its only array)
        interval: 1s
        reset: true           # as hash_map: each record is that interval's histogram
        per_cpu: sum          # | keep: one histogram per CPU, with "cpu"

Per key and read, one record: the key's fields, "unit", "buckets": [{"le": N, "count": n}, ...]
through the last non-empty slot (``le`` is the largest integer value the slot holds; the map's
last slot also holds everything above it, as libbpf-tools programs clamp there, so its ``le``
is "+Inf"), "count" (the total), "sum" when the value has an integer ``sum`` member, and "p50",
"p90", "p99": the value below which that share of the counts lies, by linear interpolation
inside the bucket where the rank falls (as Prometheus' histogram_quantile does: rank q*count,
the bucket spanning [lo, hi) and holding n of them with c before it gives lo + (hi-lo)*(rank-c)/n;
in the clamped last slot, its lower bound). Keys with an empty histogram give no record.

With ``--metrics`` the channel is a Prometheus histogram ``bpfdepot_<program>_<channel>`` with
cumulative ``_bucket{le=...}`` over every slot's bound (le in the record's unit, which the HELP
line names), ``_sum`` when known and ``_count``; a reset map adds each read, a cumulative one
sets it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loader.errors import ManifestError
from loader.outputs import ChannelContext, ChannelStats, OutputKind, Periodic, register
from loader.outputs.hash_map import (COMMON_OPTIONS, PERCPU, int_spans, key_fields,
                                     map_def, open_reader, parse_common, positive_int)
from loader.outputs.ring_buffer import kernel_lost

# The decoders and libbpf readers are imported where a run opens the channel (see hash_map).
if TYPE_CHECKING:
    from loader.libbpf.readers import MapReader
    from yaml.nodes import Node

    from loader.kernel.btf import Btf, MapDef
    from loader.model.yamldoc import YamlDoc

QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))

INF = "+Inf"


@dataclass(frozen=True, slots=True, kw_only=True)
class Buckets:
    """What slot i of a histogram counts: values in [lower(i), lower(i+1))."""

    kind: str            # log2 | linear
    step: int = 1        # linear
    min: int = 0         # linear

    def lower(self, i: int) -> int:
        if self.kind == "log2":
            return 0 if i == 0 else 1 << i
        return self.min + i * self.step

    def le(self, i: int, nslots: int) -> int | str:
        """The largest (integer) value slot i holds; the last slot holds all above it."""
        return INF if i == nslots - 1 else self.lower(i + 1) - 1


def summarize(counts: Sequence[int], buckets: Buckets) -> dict[str, Any]:
    """The record's "buckets", "count" and quantile estimates from one key's slot counts."""
    n = len(counts)
    last = max((i for i, c in enumerate(counts) if c), default=-1)
    total = sum(counts)
    out: dict[str, Any] = {
        "buckets": [{"le": buckets.le(i, n), "count": counts[i]} for i in range(last + 1)],
        "count": total,
    }
    for name, q in QUANTILES:
        out[name] = quantile(counts, buckets, q) if total else None
    return out


def quantile(counts: Sequence[int], buckets: Buckets, q: float) -> float:
    """Linear interpolation inside the bucket where rank q*total falls (histogram_quantile)."""
    rank = q * sum(counts)
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            lo = buckets.lower(i)
            if i == len(counts) - 1:
                return float(lo)  # the clamped last slot has no upper bound
            hi = buckets.lower(i + 1)
            return round(lo + (hi - lo) * (rank - seen) / c, 3)
        seen += c
    return float(buckets.lower(len(counts) - 1))


def parse_options(doc: YamlDoc, values: Mapping[str, Node], at: str) -> dict[str, Any]:
    out = parse_common(doc, values, at)
    out["buckets"] = (doc.choice(values["buckets"], "buckets", at, ("log2", "linear"))
                      if "buckets" in values else "log2")
    for key in ("step", "min"):
        if key in values and out["buckets"] != "linear":
            raise doc.error(values[key], f"{key} in {at} is for buckets: linear",
                            hint="drop it, or set buckets: linear")
    if out["buckets"] == "linear" and "step" not in values:
        raise doc.error(values.get("buckets"), f"buckets: linear in {at} needs step: N "
                        "(the width of a slot)", hint="e.g. step: 10")
    out["step"] = positive_int(doc, values["step"], "step", at) if "step" in values else 1
    out["min"] = 0
    if "min" in values:
        node = values["min"]
        if not str(getattr(node, "value", "")).lstrip("-").isdigit():
            raise doc.error(node, f"min in {at} must be a whole number", hint="e.g. min: 0")
        out["min"] = int(node.value)
    out["unit"] = doc.string(values["unit"], "unit", at) if "unit" in values else ""
    out["field"] = (doc.c_identifier(values["field"], "field", at, what="value member")
                    if "field" in values else None)
    return out


def slots_of(btf: Btf, mdef: MapDef, field: str | None, channel: str) -> tuple[int, int, int]:
    """(offset in the value, slot bytes 4 or 8, number of slots) of the counters array."""
    t = btf.strip(mdef.value_type_id)
    if t.kind == "array":
        candidates = {"": (0, t)}
    elif t.kind == "struct":
        candidates = {m.name: (m.bit_offset // 8, btf.strip(m.type_id)) for m in t.members
                      if btf.strip(m.type_id).kind == "array"}
    else:
        candidates = {}
    if field is not None:
        if field not in candidates:
            raise ManifestError(f"channel '{channel}': field: {field} is not an array member of "
                                "the map's value", hint=f"its arrays: {', '.join(candidates) or 'none'}")
        offset, arr = candidates[field]
    elif len(candidates) == 1:
        offset, arr = next(iter(candidates.values()))
    else:
        raise ManifestError(f"channel '{channel}': the map's value has "
                            f"{len(candidates) or 'no'} arrays of slots",
                            hint="name the counters with field: MEMBER (a __u32 or __u64 array)"
                            if candidates else "its value must hold an array of __u32/__u64 slots")
    elem = btf.strip(arr.elem_type_id)
    size = btf.size_of(arr.elem_type_id)
    if elem.kind != "int" or size not in (4, 8):
        raise ManifestError(f"channel '{channel}': the slots are not __u32 or __u64 counters",
                            hint="declare them e.g. __u32 slots[27]")
    return offset, size, arr.nelems


class HistogramReader(Periodic):
    def __init__(self, ctx: ChannelContext) -> None:
        self.ctx = ctx
        self.mdef = mdef = map_def(ctx, "histogram")
        self.options = {"interval": 1.0, "reset": False, "per_cpu": "sum", "buckets": "log2",
                        "step": 1, "min": 0, "unit": "", "field": None, **ctx.options}
        btf = ctx.info.btf
        self.buckets = Buckets(kind=self.options["buckets"], step=self.options["step"],
                               min=self.options["min"])
        self.slot_offset, self.slot_size, self.nslots = slots_of(btf, mdef, self.options["field"],
                                                                 ctx.name)
        self.keep = mdef.type_name in PERCPU and self.options["per_cpu"] == "keep"
        spec = ctx.spec
        extra = (("cpu", mdef.key_size, 4),) if self.keep else ()
        self.key_size = mdef.key_size + (4 if self.keep else 0)  # cpu rides with the key
        from loader.decoders.btf import encoder_for, record_decoder

        self.keys = encoder_for(record_decoder(
            btf, (("key", mdef.key_type_id, 0),), name=f"key of map {ctx.name}", extra=extra,
            overrides=dict(spec.decoders) if spec else None, enums=ctx.enums, channel=ctx.name))
        self.sum_offset = self._sum_member(btf)
        self.spans = int_spans(btf, mdef.value_type_id)
        self.deliver = ctx.pipeline.records(ctx.program, ctx.name)
        self.interval = self.options["interval"]
        self.reader: MapReader | None = None
        self.records = 0
        self.export = None
        registry = ctx.pipeline.metrics
        if registry is not None:
            from loader.sinks.prometheus import metric_name

            self.labels = [(metric_name(k), k) for k in key_fields(btf, mdef)]
            self.labels += [("cpu", "cpu")] if self.keep else []
            # le stays in the record's unit, so the name carries none: promtool's lint wants
            # a unit in a name to be a base unit (seconds, bytes); the HELP line says which
            name = metric_name("bpfdepot", ctx.program, ctx.name)
            bounds = tuple(float(self.buckets.le(i, self.nslots)) for i in range(self.nslots - 1))
            self.export = registry.family(name) or registry.histogram(
                name, f"histogram {ctx.name} of {ctx.program}, le in "
                f"{self.options['unit'] or 'the values the program counts'}",
                tuple(label for label, _ in self.labels), bounds)

    def _sum_member(self, btf: Btf) -> tuple[int, int] | None:
        t = btf.strip(self.mdef.value_type_id)
        for m in t.members if t.kind == "struct" else ():
            if m.name == "sum" and btf.strip(m.type_id).kind == "int":
                return m.bit_offset // 8, btf.size_of(m.type_id)
        return None

    def start(self) -> None:
        self.reader = open_reader(self.ctx, self.mdef, self.options, spans=self.spans)
        self._begin()

    def final(self) -> None:
        if self.reader is not None:
            self._read()

    def _read(self) -> None:
        raw = self.reader.read_raw()
        size = self.reader.record_size
        lines = self.make_records(raw, size)
        if lines:
            self.deliver(b"".join(lines), len(lines))
            self.records += len(lines)

    def make_records(self, raw: bytes, size: int) -> list[bytes]:
        """One JSON line per key with a non-empty histogram, from records of ``size`` bytes."""
        ks, vs = self.mdef.key_size, self.mdef.value_size
        n = len(raw) // size
        # the key (and cpu) of every record, decoded by the key encoder in one call
        keys = b"".join(raw[i * size:i * size + ks] + raw[i * size + ks + vs:(i + 1) * size]
                        for i in range(n))
        self.keys.encode(keys, self.key_size)
        key_lines = self.keys.take().splitlines()
        fmt = f"<{self.nslots}{'I' if self.slot_size == 4 else 'Q'}"
        out = []
        for i, key_line in enumerate(key_lines):
            at = i * size + ks
            counts = struct.unpack_from(fmt, raw, at + self.slot_offset)
            if not any(counts):
                continue
            record = json.loads(key_line)
            record["unit"] = self.options["unit"]
            record.update(summarize(counts, self.buckets))
            total = None
            if self.sum_offset is not None:
                off, width = self.sum_offset
                total = int.from_bytes(raw[at + off:at + off + width], "little")
                record["sum"] = total
            out.append(json.dumps(record, separators=(",", ":")).encode() + b"\n")
            if self.export is not None:
                labels = {label: _label(record.get(key)) for label, key in self.labels}
                self.export.observe(labels, list(counts[:-1]), count=record["count"],
                                    total=total, add=bool(self.options["reset"]))
        return out

    def stats(self) -> ChannelStats:
        r = self.reader
        return ChannelStats(program=self.ctx.program, channel=self.ctx.name,
                            received=r.entries if r else 0,
                            lost=(r.lost if r else 0) + kernel_lost(self.ctx))

    def close(self) -> None:
        self.reader = None


def _label(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


register(OutputKind(type="histogram", summary="a map of slot arrays read every interval: one "
                    "histogram record per key", map_types=("hash", "lru_hash", "array",
                                                          "percpu_hash", "lru_percpu_hash",
                                                          "percpu_array"),
                    open=HistogramReader, events=False,
                    options=(*COMMON_OPTIONS, "buckets", "step", "min", "unit", "field"),
                    parse=parse_options))
