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

from loader.decoders.btf import encoder_for, record_decoder
from loader.errors import ManifestError
from loader.libbpf.readers import MAP_RESET, MapReader, StackMap, map_max_entries
from loader.outputs import ChannelContext, ChannelStats, OutputKind, register
from loader.outputs.hash_map import int_spans, parse_interval
from loader.outputs.ring_buffer import kernel_lost

if TYPE_CHECKING:
    from yaml.nodes import Node

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


class StackFolder:
    """Entries of a counts map (key as a dict, value) into records: stack ids resolved through
    ``lookup``, names from ``symbols``; what each read made is counted."""

    def __init__(self, symbols: Symbols, lookup: Callable[[int], list[int] | None],
                 unit: str) -> None:
        self.symbols = symbols
        self.lookup = lookup
        self.unit = unit
        self.lost = 0          # entries whose stack was lost, over the run
        self.records = 0

    def records_of(self, entries: Iterable[tuple[dict[str, Any], int]]) -> tuple[list[bytes], set[int]]:
        """JSON lines, one per distinct key and named stack with a non-zero value, and the
        stack ids they used (for the caller to delete from the stack map)."""
        entries = [(k, v) for k, v in entries if v]
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
            if same in merged:
                merged[same]["value"] += value
                continue
            merged[same] = {**key, "kernel": kernel, "user": user, "stack": stack,
                            "value": value, "unit": self.unit}
        out = [json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in merged.values()]
        self.records += len(out)
        return out, ids

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
    if len(int_spans(btf, found.value_type_id)) != 1:
        raise ManifestError(f"channel '{ctx.name}' of '{ctx.program}': the map's value is not "
                            "one integer count", hint="declare __type(value, __u64): samples, "
                                                      "ns or bytes")
    return found


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
        self.options = {"interval": DEFAULT_INTERVAL, "unit": "samples", "stacks": None,
                        "peek": DEFAULT_PEEK, **ctx.options}
        self.stacks_name = stack_map_name(ctx, self.options["stacks"])
        btf = ctx.info.btf
        spec = ctx.spec
        self.keys = encoder_for(record_decoder(
            btf, (("key", mdef.key_type_id, 0),), name=f"key of map {ctx.name}",
            overrides=dict(spec.decoders) if spec else None, enums=ctx.enums, channel=ctx.name))
        self.span = int_spans(btf, mdef.value_type_id)[0]
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
        ctx, m = self.ctx, self.mdef
        percpu = m.type_name in PERCPU
        max_entries = map_max_entries(ctx.obj, ctx.name)
        self.reader = MapReader(ctx.obj.map_fd(ctx.name), label=f"{ctx.program}/{ctx.name}",
                                key_size=m.key_size, value_size=m.value_size,
                                max_entries=max_entries, percpu=percpu, array=False,
                                flags=MAP_RESET, spans=[self.span])
        if self.pid_at is not None and self.options["peek"]:
            self.peeker = MapReader(ctx.obj.map_fd(ctx.name), label=f"{ctx.program}/{ctx.name}",
                                    key_size=m.key_size, value_size=m.value_size,
                                    max_entries=max_entries, percpu=percpu, array=False)
        self.stack_map = StackMap(ctx.obj, self.stacks_name)
        self.folder = StackFolder(self.symbols, self.stack_map.lookup, self.options["unit"])
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
        off, width = ks + self.span.offset, self.span.size
        values = [int.from_bytes(raw[i * size + off:i * size + off + width], "little")
                  for i in range(n)]
        pids = {next((k[f] for f in PID_FIELDS if isinstance(k.get(f), int)), 0) for k in keys}
        exited = {pid for pid in pids if pid and not os.path.exists(f"/proc/{pid}")}
        for pid in pids - exited - {0}:
            self._seen(pid)  # also re-reads the maps of known ones: new mmaps since
        lines, ids = self.folder.records_of(zip(keys, values))
        for stack_id in ids:  # resolved: free the slots (records_of looked them all up)
            self.stacks_freed += self.stack_map.delete(stack_id)
        if lines:
            self.deliver(b"".join(lines), len(lines))
        # the snapshots of processes found exited at the read before: their samples are out
        for pid in self.gone - pids:
            self.symbols.forget(pid)
            self.known.discard(pid)
        self.gone = (self.gone & pids) | exited

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
                    options=("interval", "unit", "stacks", "peek"), parse=parse_options))
