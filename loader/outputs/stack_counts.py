"""``type: stack_counts``: a map of counts keyed by stacks, read every ``interval`` (and once
after detach) into one symbolized record per entry: the input of flame graphs.

The channel's map is a hash whose key is a struct holding ``kern_stack_id`` and/or
``user_stack_id`` (what ``bpf_get_stackid`` returned: an id in a ``BPF_MAP_TYPE_STACK_TRACE``
map, or -errno) plus whatever else the program counts by (``pid``, ``comm``, ...), and whose
value is the count (samples, ns or bytes: ``unit:``)::

    channels:
      counts:
        type: stack_counts
        stacks: stacks        # the STACK_TRACE map (default: the object's only one)
        unit: samples         # samples | ns | us | ms | bytes | count (a label, default samples)
        interval: 5s          # read (and empty) the counts this often (default 5s)
        peek: 250ms           # how often new pids are looked for, to snapshot their
                              # /proc/PID/maps while they live (default 250ms; 0: never)
        reset: true           # false: read without deleting (entries and stack ids stay):
                              # for what is still outstanding (bpf/memleak), not per interval
        value: bytes          # a struct value: the member that weighs (record "value")
        age: ts_ms_sum        # a member summing CLOCK_MONOTONIC ms per counted item
        top: 20               # only the 20 heaviest records per read, plus one "[other]"

Each read deletes what it read (lookup-and-delete, atomic per bucket), resolves every stack id
in the stack map, then deletes those ids there too, so neither map fills however long the run.
A record holds the key's fields but the stack ids, plus::

    "kernel": ["do_nanosleep", "hrtimer_nanosleep", ...]    # innermost first
    "user":   ["burn_leaf", "burn_mid", "main", ...]         # innermost first
    "stack":  "burn;_start;...;main;burn_mid;burn_leaf"     # folded, root first: comm, user
                                                            # frames outer → inner, then kernel
                                                            # (kernel names without +0xOFF)
    "value": 198, "unit": "samples"

A stack id of -EFAULT means there is no such stack (a user-mode sample has no kernel stack, a
kernel thread no user stack): that list is empty. -ENOMEM (the stack map was full), -EEXIST (its
hash bucket held another stack) and an id whose stack is gone are lost stacks: the list is
``["[lost stack]"]`` and the channel's ``lost`` counts such records (shown in the run summary),
with the program's own ``<channel>_lost`` per-CPU counter (entries it could not add) on top.

The value may be a struct of integers (``struct {__u64 count, bytes, ts_ms_sum;}``): each
member becomes a record field, ``value:`` names the one that is the record's ``value`` (the
flame graph's weight, labelled by ``unit``), and ``age:`` names a member holding the sum of the
counted items' times (ms of CLOCK_MONOTONIC, bpf_ktime_get_ns() / 1e6) next to a ``count``
member: the record shows ``age_ms`` = now − sum / count (the mean age) instead of the sum.
Records with the same names merge member by member. With ``top: N`` each read emits the N
records with the largest ``value`` (largest first) and, when some were left out, one more,
``{"stack": "[other]", "left_out": K, ...}``, summing those K, so totals stay whole. With
``reset: false`` every read is a snapshot of everything still counted: a flame graph of the
run (``--flamegraph``) adds the snapshots up; draw one read's records for one picture.

User frames are named by the symbolizer (loader/symbols/) from a snapshot of the process's
``/proc/PID/maps`` taken while it lived: the pids in the counts map are looked for every
``peek`` (a plain batch lookup, nothing deleted) and snapshotted when new, so a process that
exits before the read still resolves. A process that lives and dies between two peeks cannot be
snapshotted: its user frames show as ``[unknown]`` (or ``binary+0xoffset`` when the symbolizer
still knows the mapping); lower ``peek`` for such workloads.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from loader.errors import ManifestError
from loader.outputs import ChannelContext, ChannelStats, OutputKind, register
from loader.outputs.hash_map import int_spans, parse_interval, positive_int
from loader.outputs.ring_buffer import kernel_lost

# The decoders and libbpf readers are imported where a run opens the channel (see hash_map).
if TYPE_CHECKING:
    from yaml.nodes import Node

    from loader.libbpf.readers import MapReader, Span, StackMap

    from loader.kernel.btf import Btf, MapDef
    from loader.model.yamldoc import YamlDoc

MAP_TYPES = ("hash", "lru_hash", "percpu_hash", "lru_percpu_hash")
PERCPU = frozenset(("percpu_hash", "lru_percpu_hash"))
UNITS = ("samples", "ns", "us", "ms", "bytes", "count")
STACK_FIELDS = ("kern_stack_id", "user_stack_id")
PID_FIELDS = ("pid", "tgid")
LOST_FRAME = "[lost stack]"
LOST_IDS = (-errno.ENOMEM, -errno.EEXIST)  # bpf_get_stackid: stack map full, bucket taken
DEFAULT_INTERVAL = 5.0
DEFAULT_PEEK = 0.25
OTHER_STACK = "[other]"
RESERVED = frozenset(("kernel", "user", "stack", "value", "unit", "age_ms", "left_out"))
DEFAULTS = {"interval": DEFAULT_INTERVAL, "unit": "samples", "stacks": None, "peek": DEFAULT_PEEK,
            "reset": True, "value": None, "age": None, "top": 0}


class Symbols(Protocol):
    """What this kind needs of loader.symbols.Symbolizer."""

    def seen(self, pid: int) -> None: ...
    def kernel(self, addrs: Sequence[int]) -> list[str]: ...
    def user(self, pid: int, addrs: Sequence[int]) -> list[str]: ...
    def forget(self, pid: int) -> None: ...
    def warm(self) -> object: ...   # load kernel symbols now, before the run attaches


_SHARED: list[Symbols] = []


def shared_symbolizer() -> Symbols:
    """One symbolizer per process (its caches serve every stack channel of the run); imported
    here, not at module load, so the output registry loads without it."""
    if not _SHARED:
        from loader.symbols import Symbolizer

        _SHARED.append(Symbolizer())
    return _SHARED[0]


# -- manifest options --------------------------------------------------------------------------

def parse_options(doc: YamlDoc, values: Mapping[str, Node], at: str) -> dict[str, Any]:
    out: dict[str, Any] = {"interval": DEFAULT_INTERVAL, "unit": "samples", "stacks": None,
                           "peek": DEFAULT_PEEK}
    if "interval" in values:
        out["interval"] = parse_interval(doc, values["interval"], at)
    if "unit" in values:
        out["unit"] = doc.choice(values["unit"], "unit", at, UNITS)
    if "stacks" in values:
        out["stacks"] = doc.c_identifier(values["stacks"], "stacks", at, what="stack-trace map")
    if "peek" in values:
        node = values["peek"]
        off = str(getattr(node, "value", "")).strip() in ("0", "off", "false")
        out["peek"] = 0.0 if off else parse_interval(doc, node, at)
    # the options added later appear only when written, so old channels parse as they did
    if "reset" in values:
        out["reset"] = doc.boolean(values["reset"], "reset", at)
    for key in ("value", "age"):
        if key in values:
            out[key] = doc.c_identifier(values[key], key, at, what="value member")
    if "top" in values:
        out["top"] = positive_int(doc, values["top"], "top", at)
    return out


# -- records -----------------------------------------------------------------------------------

_OFFSET = re.compile(r"\+0x[0-9a-f]+$")


def fold(root: str, user: Sequence[str], kernel: Sequence[str]) -> str:
    """The folded line's stack (flamegraph.pl): root, user frames outer → inner, then kernel
    frames outer → inner (both lists come innermost first). Kernel frames lose their
    ``+0xOFF`` (one box per function in a flame graph, not one per call site); ';' inside a
    name would split it."""
    frames = [root, *reversed(user), *(_OFFSET.sub("", k) for k in reversed(kernel))]
    return ";".join(f.replace(";", ":") for f in frames)


def monotonic_ms() -> int:
    """Now on bpf_ktime_get_ns()'s clock (CLOCK_MONOTONIC), in ms."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000_000


Value = int | Mapping[str, int]


class StackFolder:
    """Entries of a counts map (key as a dict, value) into records: stack ids resolved through
    ``lookup``, names from ``symbols``; what each read made is counted.

    A value is an int, or (a struct value) a dict of ``members`` with ``weight`` naming the
    one that is the record's ``value`` and ``age`` the one summing ms timestamps (see the
    module docstring); ``top`` keeps the N heaviest records and sums the rest into one."""

    def __init__(self, symbols: Symbols, lookup: Callable[[int], list[int] | None],
                 unit: str, *, weight: str | None = None, age: str | None = None,
                 members: Sequence[str] = (), top: int = 0,
                 clock: Callable[[], int] = monotonic_ms) -> None:
        self.symbols = symbols
        self.lookup = lookup
        self.unit = unit
        self.weight, self.age, self.top, self.clock = weight, age, top, clock
        self.members = tuple(members)  # a struct value's member names, in order
        self.lost = 0          # entries whose stack was lost, over the run
        self.records = 0
        self.left_out = 0      # records folded into "[other]" by top, over the run

    def records_of(self, entries: Iterable[tuple[dict[str, Any], Value]]) -> tuple[list[bytes], set[int]]:
        """JSON lines, one per distinct key and named stack with a non-zero value, and the
        stack ids they used (for the caller to delete from the stack map)."""
        entries = [(k, v) for k, v in entries if (any(v.values()) if isinstance(v, Mapping) else v)]
        ids = {k[f] for k, _ in entries for f in STACK_FIELDS if k.get(f, -1) >= 0}
        stacks = {i: self.lookup(i) for i in sorted(ids)}
        kernel_names: dict[int, list[str]] = {}
        user_names: dict[tuple[int, int], list[str]] = {}
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for key, value in entries:
            pid = next((key[f] for f in PID_FIELDS if isinstance(key.get(f), int)), 0)
            kid, uid = key.pop("kern_stack_id", None), key.pop("user_stack_id", None)
            kernel, lost_k = self._frames(kid, stacks, kernel_names, kid,
                                          lambda a: self.symbols.kernel(a))
            user, lost_u = self._frames(uid, stacks, user_names, (pid, uid),
                                        lambda a, pid=pid: self.symbols.user(pid, a))
            root = key.get("comm") if isinstance(key.get("comm"), str) else ""
            stack = fold(root or "[unknown]", user, kernel)
            # ids differ for stacks that differ only in addresses inside one function (a loop's
            # instructions): the same names and key are one record
            same = (json.dumps(key, sort_keys=True), stack)
            self.lost += lost_k or lost_u
            members = dict(value) if isinstance(value, Mapping) else {"value": value}
            if same in merged:
                for name, n in members.items():
                    merged[same][name] += n
                continue
            merged[same] = {**key, "kernel": kernel, "user": user, "stack": stack, **members}
        records = list(merged.values())
        if self.top:
            records = self._top(records)
        now = self.clock() if self.age else 0
        out = [json.dumps(self._finish(r, now), separators=(",", ":")).encode() + b"\n"
               for r in records]
        self.records += len(out)
        return out, ids

    def _top(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The ``top`` heaviest, largest first, then one record summing the others (if any)."""
        weight = self.weight or "value"
        records.sort(key=lambda r: r[weight], reverse=True)
        kept, rest = records[:self.top], records[self.top:]
        if not rest:
            return kept
        other: dict[str, Any] = {"stack": OTHER_STACK, "kernel": [], "user": [],
                                 "left_out": len(rest)}
        for name in self.members or ("value",):
            other[name] = sum(r[name] for r in rest)
        self.left_out += len(rest)
        return [*kept, other]

    def _finish(self, record: dict[str, Any], now_ms: int) -> dict[str, Any]:
        """The record as emitted: ``value`` and ``unit`` last, ``age_ms`` for the time sum."""
        if self.weight is None:
            value = record.pop("value")
        else:
            value = record[self.weight]
        if self.age and self.age in record:
            total, count = record.pop(self.age), record.get("count", 0)
            record["age_ms"] = max(0, now_ms - total // count) if count > 0 else None
        record["value"], record["unit"] = value, self.unit
        return record

    @staticmethod
    def _frames(stack_id: int | None, stacks: Mapping[int, list[int] | None],
                cache: dict, cache_key: object,
                name: Callable[[list[int]], list[str]]) -> tuple[list[str], bool]:
        """(names innermost first, lost?) of one stack id."""
        if stack_id is None or stack_id == -errno.EFAULT:
            return [], False
        if stack_id < 0:
            return [LOST_FRAME], True  # LOST_IDS, or an error of this kernel's own
        addrs = stacks.get(stack_id)
        if addrs is None:  # deleted between the count and the read: counted, not dropped
            return [LOST_FRAME], True
        if cache_key not in cache:
            cache[cache_key] = name(addrs) if addrs else []
        return cache[cache_key], False


# -- the map and its fields --------------------------------------------------------------------

def counts_map(ctx: ChannelContext) -> MapDef:
    """The channel's map, checked: a hash keyed by a struct with stack ids, counted by an int."""
    found = ctx.info.map(ctx.name)
    if found is None or found.type_name not in MAP_TYPES:
        what = f"a {found.type_name} map" if found else "not a map"
        raise ManifestError(f"channel '{ctx.name}' of '{ctx.program}' is {what}; type "
                            f"stack_counts reads {', '.join(MAP_TYPES)} maps",
                            hint="count stacks in a BPF_MAP_TYPE_HASH keyed by a struct with "
                                 "kern_stack_id / user_stack_id")
    btf = ctx.info.btf
    key = btf.strip(found.key_type_id) if found.key_type_id else None
    names = {m.name for m in key.members} if key is not None and key.kind == "struct" else set()
    if not names & set(STACK_FIELDS):
        raise ManifestError(f"channel '{ctx.name}' of '{ctx.program}': the map's key has no "
                            "kern_stack_id or user_stack_id member",
                            hint="key the counts by a struct holding __s32 kern_stack_id and/or "
                                 "__s32 user_stack_id from bpf_get_stackid(), plus pid and comm")
    return found


def value_layout(ctx: ChannelContext, mdef: MapDef,
                 options: Mapping[str, Any]) -> list[tuple[str, Span]] | None:
    """None for one integer count (read as ``value``), else the members of a struct of
    integers as (name, span), checked against ``value:`` and ``age:``."""
    btf, where = ctx.info.btf, f"channel '{ctx.name}' of '{ctx.program}'"
    spans = int_spans(btf, mdef.value_type_id)
    t = btf.strip(mdef.value_type_id)
    if len(spans) == 1 and options["value"] is None and options["age"] is None:
        return None
    if t.kind != "struct" or len(spans) != len(t.members) or not spans:
        raise ManifestError(f"{where}: the map's value is neither one integer count nor a "
                            "struct of integers",
                            hint="declare __type(value, __u64) (samples, ns or bytes), or a "
                                 "struct of __u64 members with value: MEMBER naming the weight")
    members = [(m.name, span) for m, span in zip(t.members, spans)]
    names = [n for n, _ in members]
    key = btf.strip(mdef.key_type_id)
    clash = sorted(set(names) & (RESERVED | {m.name for m in key.members}))
    if clash:
        raise ManifestError(f"{where}: value member {clash[0]!r} has the name of a key field "
                            "or of a record field the channel adds",
                            hint=f"rename it; records already hold {', '.join(sorted(RESERVED))} "
                                 "and the key's fields")
    if options["value"] is None:
        raise ManifestError(f"{where}: the map's value is a struct of {len(names)} integers and "
                            "the channel does not say which one weighs",
                            hint=f"add value: MEMBER, one of {', '.join(names)}")
    for opt in ("value", "age"):
        if options[opt] is not None and options[opt] not in names:
            raise ManifestError(f"{where}: {opt}: {options[opt]} is not a member of the map's "
                                "value", hint=f"its members: {', '.join(names)}")
    if options["age"] is not None and ("count" not in names or options["age"] == "count"):
        raise ManifestError(f"{where}: age: {options['age']} needs a count member beside it "
                            "(the age is now - sum / count)",
                            hint="add __u64 count to the value: the items the sum adds up")
    return members


def stack_map_name(ctx: ChannelContext, wanted: str | None) -> str:
    """The STACK_TRACE map the ids point into: ``stacks:`` or the object's only one."""
    traces = [m.name for m in ctx.info.maps if m.type_name == "stack_trace"]
    if wanted is not None:
        if wanted not in traces:
            raise ManifestError(f"channel '{ctx.name}' of '{ctx.program}': stacks: {wanted} is "
                                "not a BPF_MAP_TYPE_STACK_TRACE map of the object",
                                hint=f"its stack-trace maps: {', '.join(traces) or 'none'}")
        return wanted
    if len(traces) != 1:
        raise ManifestError(f"channel '{ctx.name}' of '{ctx.program}': the object has "
                            f"{len(traces) or 'no'} stack-trace maps"
                            + (f" ({', '.join(traces)})" if traces else ""),
                            hint="name one with stacks: MAP" if traces else
                            "declare a BPF_MAP_TYPE_STACK_TRACE map for bpf_get_stackid()")
    return traces[0]


def pid_offset(btf: Btf, mdef: MapDef) -> int | None:
    """Offset of the key's 4-byte pid (or tgid) member: what the peeks read."""
    key = btf.strip(mdef.key_type_id)
    for m in key.members:
        if m.name in PID_FIELDS and not m.bitfield_size and btf.size_of(m.type_id) == 4:
            return m.bit_offset // 8
    return None


# -- the reader --------------------------------------------------------------------------------

class StackCountsReader:
    def __init__(self, ctx: ChannelContext, symbols: Symbols | None = None) -> None:
        self.ctx = ctx
        self.mdef = mdef = counts_map(ctx)
        self.options = {**DEFAULTS, **ctx.options}
        self.stacks_name = stack_map_name(ctx, self.options["stacks"])
        self.members = value_layout(ctx, mdef, self.options)
        btf = ctx.info.btf
        spec = ctx.spec
        from loader.decoders.btf import encoder_for, record_decoder

        self.keys = encoder_for(record_decoder(
            btf, (("key", mdef.key_type_id, 0),), name=f"key of map {ctx.name}",
            overrides=dict(spec.decoders) if spec else None, enums=ctx.enums, channel=ctx.name))
        self.spans = ([span for _, span in self.members] if self.members is not None
                      else int_spans(btf, mdef.value_type_id)[:1])
        self.pid_at = pid_offset(btf, mdef)
        self.symbols = symbols if symbols is not None else shared_symbolizer()
        self.symbols.warm()  # kallsyms parsed before attach, not inside the profile
        self.deliver = ctx.pipeline.records(ctx.program, ctx.name)
        self.reader: MapReader | None = None
        self.peeker: MapReader | None = None
        self.stack_map: StackMap | None = None
        self.folder: StackFolder | None = None
        self.next_read: float | None = None
        self.next_peek: float | None = None
        self.known: set[int] = set()   # pids snapshotted
        self.gone: set[int] = set()    # pids found exited at the last read: forgotten at the next
        self.stacks_freed = 0

    def start(self) -> None:
        from loader.libbpf.readers import MAP_RESET, MapReader, StackMap, map_max_entries

        ctx, m = self.ctx, self.mdef
        percpu = m.type_name in PERCPU
        max_entries = map_max_entries(ctx.obj, ctx.name)
        self.reader = MapReader(ctx.obj.map_fd(ctx.name), label=f"{ctx.program}/{ctx.name}",
                                key_size=m.key_size, value_size=m.value_size,
                                max_entries=max_entries, percpu=percpu, array=False,
                                flags=MAP_RESET if self.options["reset"] else 0,
                                spans=self.spans)
        if self.pid_at is not None and self.options["peek"]:
            self.peeker = MapReader(ctx.obj.map_fd(ctx.name), label=f"{ctx.program}/{ctx.name}",
                                    key_size=m.key_size, value_size=m.value_size,
                                    max_entries=max_entries, percpu=percpu, array=False)
        self.stack_map = StackMap(ctx.obj, self.stacks_name)
        o = self.options
        self.folder = StackFolder(self.symbols, self.stack_map.lookup, o["unit"],
                                  weight=o["value"], age=o["age"], top=o["top"],
                                  members=[n for n, _ in self.members or ()])
        now = time.monotonic()
        self.next_read = now + self.options["interval"]
        self.next_peek = now + self.options["peek"] if self.peeker is not None else None

    def fds(self) -> Sequence[int]:
        return []

    def due(self) -> float | None:
        dues = [d for d in (self.next_read, self.next_peek) if d is not None]
        return min(dues) if dues else None

    def read(self, now: float) -> None:
        if self.next_peek is not None and now >= self.next_peek:
            self.next_peek = max(self.next_peek + self.options["peek"], now)
            self._peek()
        if self.next_read is not None and now >= self.next_read:
            self.next_read = max(self.next_read + self.options["interval"], now)
            self._read()

    def final(self) -> None:
        if self.reader is not None:
            self._read()

    def _peek(self) -> None:
        """Snapshot the maps of pids new in the counts map while they (likely) live."""
        raw = self.peeker.read_raw()
        size, at = self.peeker.record_size, self.pid_at
        for i in range(0, len(raw), size):
            pid = int.from_bytes(raw[i + at:i + at + 4], "little")
            if pid and pid not in self.known:
                self._seen(pid)

    def _seen(self, pid: int) -> None:
        self.known.add(pid)
        try:
            self.symbols.seen(pid)
        except OSError:
            pass  # exited in between: frames fall back to what the symbolizer still knows

    def _read(self) -> None:
        raw = self.reader.read_raw()
        if not raw:
            return
        size, ks = self.reader.record_size, self.mdef.key_size
        n = len(raw) // size
        self.keys.encode(b"".join(raw[i * size:i * size + ks] for i in range(n)), ks)
        keys = [json.loads(line) for line in self.keys.take().splitlines()]
        values = [self._value(raw[i * size + ks:(i + 1) * size]) for i in range(n)]
        pids = {next((k[f] for f in PID_FIELDS if isinstance(k.get(f), int)), 0) for k in keys}
        exited = {pid for pid in pids if pid and not os.path.exists(f"/proc/{pid}")}
        for pid in pids - exited - {0}:
            self._seen(pid)  # also re-reads the maps of known ones: new mmaps since
        lines, ids = self.folder.records_of(zip(keys, values))
        # resolved: free the slots (records_of looked them all up); entries kept (reset:
        # false) still point at theirs
        for stack_id in ids if self.options["reset"] else ():
            self.stacks_freed += self.stack_map.delete(stack_id)
        if lines:
            self.deliver(b"".join(lines), len(lines))
        # the snapshots of processes found exited at the read before: their samples are out
        for pid in self.gone - pids:
            self.symbols.forget(pid)
            self.known.discard(pid)
        self.gone = (self.gone & pids) | exited

    def _value(self, data: bytes) -> Value:
        """One entry's value (per-CPU values already summed in C): an int, or by member."""
        def get(span: Span, signed: bool) -> int:
            return int.from_bytes(data[span.offset:span.offset + span.size], "little",
                                  signed=signed)
        if self.members is None:
            return get(self.spans[0], False)  # as read before struct values came
        return {name: get(span, span.signed) for name, span in self.members}

    def stats(self) -> ChannelStats:
        r, f = self.reader, self.folder
        return ChannelStats(program=self.ctx.program, channel=self.ctx.name,
                            received=r.entries if r else 0,
                            lost=(r.lost if r else 0) + (f.lost if f else 0)
                            + kernel_lost(self.ctx))

    def close(self) -> None:
        self.reader = self.peeker = None


register(OutputKind(type="stack_counts", summary="counts keyed by kernel/user stack ids, read "
                    "every interval into symbolized, folded stacks", map_types=MAP_TYPES,
                    open=StackCountsReader, events=False,
                    options=("interval", "unit", "stacks", "peek", "reset", "value", "age",
                             "top"), parse=parse_options))
