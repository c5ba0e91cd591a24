"""The one module that talks to libbpf (through the cffi extension ``loader._libbpf``).

Lifecycle, as in libbpf-tools: open → set autoload → load → attach; every step that fails
raises LoadError with libbpf's own words, and attach failures roll back what was attached.
Events leave the kernel through ``RingReader``, whose sample callback is C code that encodes
each event to a JSON line (ops built by loader/decoders/btf.py), so Python only writes buffers.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loader._libbpf import ffi, lib
from loader.errors import LoadError

lib.bpfdepot_log_capture(0)  # from here on libbpf's messages go to our buffer, not stderr


def take_log() -> str:
    """Return and clear what libbpf printed since the last call (its tail, at most 4 MiB)."""
    size = lib.bpfdepot_log_size()
    if not size:
        return ""
    buf = ffi.new("char[]", size)
    n = lib.bpfdepot_log_take(buf, size)
    return ffi.unpack(buf, n).decode("utf-8", "replace")


def verifier_tail(log: str, lines: int = 25) -> str:
    """The last lines of the verifier log inside libbpf's output (where the reason is)."""
    match = re.search(r"-- BEGIN PROG LOAD LOG --\n(.*?)-- END PROG LOAD LOG --", log, re.S)
    body = match.group(1) if match else log
    kept = [line for line in body.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _err(code: int) -> str:
    return os.strerror(abs(code)) if code else "unknown error"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramRef:
    name: str
    section: str


class BpfObject:
    """An opened (and later loaded and attached) BPF object; close() releases everything."""

    def __init__(self, path: Path, *, label: str, btf_custom_path: Path | None = None) -> None:
        self.label = label
        self._links: list[object] = []
        take_log()
        btf = str(btf_custom_path).encode() if btf_custom_path else ffi.NULL
        obj = lib.bpfdepot_open(str(path).encode(), btf)
        if obj == ffi.NULL:
            code, log = ffi.errno, take_log()
            known = explain_open_failure(label, log)  # an intact object with a known fault
            if known is not None:
                raise LoadError(known[0], detail=log, hint=known[1])
            raise LoadError(
                f"cannot open BPF object '{label}' ({path}): {_err(code)}",
                detail=log,
                hint="run `bpfdepot inspect` on it; rebuild it if it is damaged",
            )
        self._obj = obj

    def programs(self) -> list[ProgramRef]:
        out, prog = [], lib.bpf_object__next_program(self._obj, ffi.NULL)
        while prog != ffi.NULL:
            out.append(ProgramRef(name=_str(lib.bpf_program__name(prog)),
                                  section=_str(lib.bpf_program__section_name(prog))))
            prog = lib.bpf_object__next_program(self._obj, prog)
        return out

    def set_autoload(self, name: str, on: bool) -> None:
        lib.bpf_program__set_autoload(self._program(name), on)

    def set_rodata(self, name: str, offset: int, size: int, value: int, signed: bool) -> None:
        """Write a knob into the object's .rodata (only before load: then it is frozen)."""
        rodata = None
        m = lib.bpf_object__next_map(self._obj, ffi.NULL)
        while m != ffi.NULL:
            if lib.bpf_map__is_internal(m) and _str(lib.bpf_map__name(m)).endswith(".rodata"):
                rodata = m
                break
            m = lib.bpf_object__next_map(self._obj, m)
        psize = ffi.new("size_t *")
        data = lib.bpf_map__initial_value(rodata, psize) if rodata is not None else ffi.NULL
        if data == ffi.NULL or offset + size > psize[0]:
            raise LoadError(f"'{self.label}' has no .rodata room for knob '{name}'",
                            hint="knobs are `const volatile` globals of the program")
        try:
            raw = value.to_bytes(size, "little", signed=signed)
        except OverflowError:
            raise LoadError(f"{value} does not fit knob '{name}' of '{self.label}' "
                            f"({'signed' if signed else 'unsigned'}, {size} bytes)") from None
        ffi.memmove(ffi.cast("char *", data) + offset, raw, size)

    def load(self) -> None:
        take_log()
        rc = lib.bpf_object__load(self._obj)
        if rc:
            log = take_log()
            failed = re.search(r"prog '([^']+)': BPF program load failed", log)
            known = None if failed else explain_load_failure(self, log)
            if known is not None:
                raise LoadError(known[0], detail=log.strip()[-4000:], hint=known[1])
            what = f"program '{failed.group(1)}'" if failed else "an object"
            raise LoadError(
                f"the kernel rejected {what} of '{self.label}': {_err(rc)}",
                detail=verifier_tail(log) if failed else log.strip()[-4000:],
                hint="the verifier's reason is on the last lines above; fix the source and rebuild"
                if failed else "see libbpf's message above",
            )

    def attach(self, plan: Sequence[tuple[str, Callable[[BpfObject, str], list] | None]]) -> None:
        """Attach programs in order: by libbpf's auto-attach (None), or by the given function,
        which returns the links it made. On failure, detach the ones before it."""
        for index, (name, how) in enumerate(plan):
            take_log()
            try:
                if how is not None:
                    self._links.extend(how(self, name))
                    continue
                link = lib.bpf_program__attach(self._program(name))
                if link == ffi.NULL:
                    code = ffi.errno
                    raise LoadError(
                        f"cannot attach program '{name}' of '{self.label}' "
                        f"({index + 1} of {len(plan)}): {_err(code)}",
                        detail=take_log().strip(),
                        hint="the attach point may not exist on this kernel: "
                             "`bpfdepot kernel` lists what loads here")
                self._links.append(LibbpfLink(link))
            except BaseException:
                self.detach()
                raise

    def program_handle(self, name: str) -> object:
        """The ``struct bpf_program *`` of ``name`` (for attach kinds, through this module)."""
        return self._program(name)

    def autoloaded(self) -> list[str]:
        """The programs that will load (autoload on)."""
        out, prog = [], lib.bpf_object__next_program(self._obj, ffi.NULL)
        while prog != ffi.NULL:
            if lib.bpf_program__autoload(prog):
                out.append(_str(lib.bpf_program__name(prog)))
            prog = lib.bpf_object__next_program(self._obj, prog)
        return out

    @property
    def attached_links(self) -> int:
        """Programs of this object attached now."""
        return len(self._links)

    def detach(self) -> None:
        while self._links:
            self._links.pop().destroy()

    def map_fd(self, name: str) -> int:
        return lib.bpf_map__fd(self._map(name))

    def has_map(self, name: str) -> bool:
        return self._find_map(name) is not None

    def percpu_u64_sum(self, name: str) -> int:
        """Sum of the per-CPU u64 values at key 0 of a per-CPU array (the loss counters)."""
        ncpu = lib.libbpf_num_possible_cpus()
        values = ffi.new("uint64_t[]", max(ncpu, 1))
        key = ffi.new("uint32_t *", 0)
        if lib.bpf_map_lookup_elem(self.map_fd(name), key, values):
            raise LoadError(f"cannot read map '{name}' of '{self.label}': {_err(ffi.errno)}")
        return sum(values[i] for i in range(ncpu))

    def close(self) -> None:
        self.detach()
        if self._obj is not None:
            lib.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _program(self, name: str) -> object:
        prog = lib.bpf_object__next_program(self._obj, ffi.NULL)
        while prog != ffi.NULL:
            if _str(lib.bpf_program__name(prog)) == name:
                return prog
            prog = lib.bpf_object__next_program(self._obj, prog)
        raise LoadError(f"no program '{name}' in '{self.label}'",
                        hint=f"programs there: {', '.join(p.name for p in self.programs())}")

    def _find_map(self, name: str) -> object | None:
        m = lib.bpf_object__next_map(self._obj, ffi.NULL)
        while m != ffi.NULL:
            if _str(lib.bpf_map__name(m)) == name:
                return m
            m = lib.bpf_object__next_map(self._obj, m)
        return None

    def _map(self, name: str) -> object:
        m = self._find_map(name)
        if m is None:
            raise LoadError(f"no map '{name}' in '{self.label}'")
        return m


class LibbpfLink:
    """A ``struct bpf_link *`` from libbpf; destroy() detaches it."""

    def __init__(self, link: object) -> None:
        self._link = link

    def destroy(self) -> None:
        if self._link is not None:
            lib.bpf_link__destroy(self._link)
            self._link = None


def _str(p: object) -> str:
    return ffi.string(p).decode() if p != ffi.NULL else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """One step of the C encoder: write ``prefix``, then the field's value by ``kind``."""

    kind: int
    offset: int = 0
    size: int = 0
    aux: int = 0
    aux_size: int = 0
    prefix: bytes = b""
    jump: int = 0      # OP_IFNE / OP_GOTO: ops skipped
    value: int = 0     # OP_IFNE: the discriminator value that selects the next ops


@dataclass(frozen=True, slots=True)
class NameTable:
    """Integer → name for OP_NAME (enum names from BTF, errno names)."""

    names: tuple[tuple[int, str], ...]   # (value, name), any order
    negated: bool = False                # errno style: look up -v for v < 0
    signed: bool = False


class _Tables:
    """The C tables of one encoder (kept alive as long as it)."""

    def __init__(self, names: Sequence[NameTable], syms: Sequence[tuple[int, str]] | None) -> None:
        self.keep: list[object] = []
        self.names = ffi.new("struct bpfdepot_names[]", max(1, len(names)))
        for slot, table in zip(self.names, names):
            rows = sorted(dict(table.names).items())
            texts = [json.dumps(name).encode() for _, name in rows]
            values = ffi.new("int64_t[]", [v for v, _ in rows] or [0])
            strs = [ffi.new("char[]", t) for t in texts]
            ptrs = ffi.new("char *[]", strs or [ffi.NULL])
            lens = ffi.new("uint32_t[]", [len(t) for t in texts] or [0])
            self.keep += [values, strs, ptrs, lens]
            slot.values, slot.names, slot.lens, slot.n = values, ptrs, lens, len(rows)
            slot.flags = lib.BPFDEPOT_NAMES_NEGATED if table.negated else 0
            slot.is_signed = int(table.signed)
        self.syms = ffi.NULL
        if syms is not None:
            rows = sorted(syms)
            blob = [ffi.new("char[]", name.encode()) for _, name in rows]
            addrs = ffi.new("uint64_t[]", [a for a, _ in rows] or [0])
            ptrs = ffi.new("char *[]", blob or [ffi.NULL])
            lens = ffi.new("uint32_t[]", [len(name.encode()) for _, name in rows] or [0])
            self.syms = ffi.new("struct bpfdepot_syms *")
            self.syms.addrs, self.syms.names, self.syms.lens, self.syms.n = addrs, ptrs, lens, len(rows)
            self.keep += [blob, addrs, ptrs, lens]


class Encoder:
    """Event bytes → JSON lines, in C; ``take()`` hands out what accumulated."""

    def __init__(self, ops: Sequence[Op], *, event_size: int, max_record: int,
                 names: Sequence[NameTable] = (), syms: Sequence[tuple[int, str]] | None = None) -> None:
        self._keep = [ffi.new("char[]", op.prefix) for op in ops]
        self._ops = ffi.new("struct bpfdepot_op[]", len(ops))
        for slot, op, prefix in zip(self._ops, ops, self._keep):
            slot.kind, slot.offset, slot.size = op.kind, op.offset, op.size
            slot.aux, slot.aux_size = op.aux, op.aux_size
            slot.prefix, slot.prefix_len = prefix, len(op.prefix)
            slot.jump, slot.value = op.jump, op.value
        self.c = ffi.new("struct bpfdepot_encoder *")
        self.c.ops, self.c.nops = self._ops, len(ops)
        self.c.event_size, self.c.max_record = event_size, max_record
        self._tables = _Tables(names, syms)
        self.c.names, self.c.nnames, self.c.syms = self._tables.names, len(names), self._tables.syms
        self._free = ffi.gc(self.c, lib.bpfdepot_encoder_free)

    @property
    def events(self) -> int:
        return self.c.events

    @property
    def short_events(self) -> int:
        return self.c.short_events

    def encode(self, raw: bytes, size: int) -> None:
        """Encode ``len(raw) // size`` events laid end to end."""
        if lib.bpfdepot_encode_batch(self.c, raw, size, len(raw) // size):
            raise MemoryError("event encoder")

    def pending(self) -> int:
        return self.c.len

    def take(self) -> bytes:
        data = ffi.unpack(self.c.out, self.c.len) if self.c.len else b""
        self.c.len = 0
        return data

    def write_to(self, fd: int) -> int:
        """Write what accumulated to ``fd`` (all of it, across short writes); return bytes."""
        total, view = self.c.len, ffi.buffer(self.c.out, self.c.len)
        done = 0
        while done < total:
            done += os.write(fd, view[done:total])
        self.c.len = 0
        return total


class WorkerBuffer:
    """Framed events bound for one processor worker, filled by the C dispatcher."""

    def __init__(self) -> None:
        self.c = ffi.gc(ffi.new("struct bpfdepot_wbuf *"), lib.bpfdepot_wbuf_free)

    def take(self) -> tuple[bytes, int]:
        """The frames gathered since the last call, and how many events they hold."""
        c = self.c
        if not c.len:
            return b"", 0
        data, events = ffi.unpack(c.buf, c.len), c.events
        c.len, c.events = 0, 0
        return data, events


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteKey:
    """The field a route hashes on: the C encoder op that prints it, and its bytes."""

    op: Op
    size: int


class Channel:
    """One ring-buffer channel in C: JSON lines by default decoding, or frames per route."""

    def __init__(self, *, encoder: Encoder | None = None, event_size: int = 0,
                 routes: Sequence[tuple[RouteKey | None, Sequence[WorkerBuffer], int]] = ()) -> None:
        """``routes``: per consumer, the key it hashes on (or None), its workers' buffers and the
        route number its frames carry (the processor's own numbering of its routes)."""
        self.encoder = encoder
        self.c = ffi.new("struct bpfdepot_channel *")
        self.c.enc = encoder.c if encoder is not None else ffi.NULL
        self.c.event_size = event_size
        self._keep: list[object] = []
        if routes:
            self._routes = ffi.new("struct bpfdepot_route[]", len(routes))
            for slot, (key, workers, index) in zip(self._routes, routes):
                slot.index, slot.nworkers = index, len(workers)
                bufs = ffi.new("struct bpfdepot_wbuf *[]", [w.c for w in workers])
                slot.workers = bufs
                self._keep += [bufs, *workers]
                if key is not None:
                    ops = ffi.new("struct bpfdepot_op[]", 1)
                    ops[0].kind, ops[0].offset, ops[0].size = key.op.kind, key.op.offset, key.op.size
                    ops[0].aux, ops[0].aux_size = key.op.aux, key.op.aux_size
                    ops[0].prefix, ops[0].prefix_len = ffi.NULL, 0
                    slot.key.ops, slot.key.nops = ops, 1
                    slot.key_bytes, slot.key_end = key.size, key.op.offset + key.size
                    self._keep.append(ops)
            self.c.routes, self.c.nroutes = self._routes, len(routes)

    @property
    def events(self) -> int:
        return self.c.events

    @property
    def short_events(self) -> int:
        """Events shorter than the fixed part (default decoding counts them in its encoder)."""
        enc = self.encoder.short_events if self.encoder is not None else 0
        return self.c.short_events + enc

    def feed(self, event: bytes) -> None:
        """Handle one event as if the ring buffer had delivered it (tests, replays of raw files)."""
        if lib.bpfdepot_channel_sample(self.c, event, len(event)):
            raise MemoryError("channel dispatch")

    def sent(self, route: int) -> int:
        """Events framed for the workers of route number ``route``."""
        return self.c.routes[route].sent


def frames_span(data: bytes, max_bytes: int, max_frames: int = 2**63) -> tuple[int, int]:
    """(bytes, frames) of the longest run of whole input frames within both limits."""
    frames = ffi.new("uint64_t *")
    used = lib.bpfdepot_frames_span(data, len(data), max_bytes, max_frames, frames)
    return used, frames[0]


RESULT_CAP: int = lib.BPFDEPOT_RESULT_CAP  # bytes of record a processor may write per event
KEY_MAX: int = lib.BPFDEPOT_KEY_MAX        # bytes of key


class ResultParser:
    """A worker's output frames → per route: records as lines, keys as lines, outcome counts.

    Each frame must carry the marker, the next sequence number and fields the host can write;
    the first that does not stops the parser for good (``violation`` says why): the processor
    wrote into its pipe, and nothing after that point can be trusted."""

    def __init__(self, routes: int, *, keys: bool) -> None:
        self.c = ffi.new("struct bpfdepot_results *")
        self._outs = ffi.new("struct bpfdepot_route_out[]", routes)
        self.c.routes, self.c.nroutes, self.c.keys = self._outs, routes, int(keys)
        self._pending = b""

    def feed(self, data: bytes) -> int:
        """Parse whole frames (keeping a partial one for the next call); return frames parsed.

        After a violation nothing more is parsed and ``data`` is dropped."""
        if self.c.violation:
            return 0
        if self._pending:
            data = self._pending + data
        before = self.c.frames
        used = lib.bpfdepot_results_feed(self.c, data, len(data))
        if used == ffi.cast("size_t", -1):
            raise MemoryError("result parser")
        self._pending = b"" if self.c.violation else data[used:]
        return self.c.frames - before

    @property
    def frames(self) -> int:
        """Valid frames parsed: the events this worker incarnation answered."""
        return self.c.frames

    @property
    def partial(self) -> int:
        return len(self._pending)

    @property
    def violation(self) -> str | None:
        """What the first frame that broke the rules held and at which byte, or None."""
        why = self.c.violation
        if why == lib.BPFDEPOT_FRAME_OK:  # the common case: read once per pipe read
            return None
        at, value = self.c.violation_at, self.c.violation_value
        if why == lib.BPFDEPOT_FRAME_MARKER:
            what = f"bad marker {value:#010x}"
        elif why == lib.BPFDEPOT_FRAME_SEQ:
            what = f"sequence number {value} where {self.c.frames & 0xFFFFFFFF} was due"
        elif why == lib.BPFDEPOT_FRAME_LEN:
            what = f"record length {value} over the {RESULT_CAP} bytes a worker can write"
        elif why == lib.BPFDEPOT_FRAME_KEY_LEN:
            what = f"key length {value} over the {KEY_MAX} bytes a worker can write"
        elif why == lib.BPFDEPOT_FRAME_ROUTE:
            what = f"route {value} (the worker has {self.c.nroutes})"
        else:
            what = f"outcome {value - (1 << 64) if value >> 63 else value} (not -1, 0 or 1)"
        return f"{what} at byte {at}"

    @property
    def violation_at(self) -> int | None:
        """The stream offset of the frame that broke the rules, or None."""
        return self.c.violation_at if self.c.violation else None

    def counts(self, route: int) -> tuple[int, int, int, int]:
        """(kept, dropped, errors, bad) so far for ``route``."""
        o = self._outs[route]
        return o.kept, o.dropped, o.errors, o.bad

    def take(self, route: int) -> tuple[bytes, bytes]:
        """The records (lines) and keys (lines) of ``route`` gathered since the last call."""
        o = self._outs[route]
        lines = ffi.unpack(o.lines.buf, o.lines.len) if o.lines.len else b""
        keys = ffi.unpack(o.keys.buf, o.keys.len) if o.keys.len else b""
        o.lines.len = o.keys.len = 0
        return lines, keys

    def close(self) -> None:
        for o in self._outs:
            lib.bpfdepot_wbuf_free(ffi.addressof(o, "lines"))
            lib.bpfdepot_wbuf_free(ffi.addressof(o, "keys"))


class RingReader:
    """Several ring-buffer maps polled through one libbpf ring_buffer manager."""

    def __init__(self, channels: Iterable[tuple[int, Channel]]) -> None:
        self._rb = ffi.NULL
        self._channels = []
        for fd, channel in channels:
            rb = lib.bpfdepot_ring_add_channel(self._rb, fd, channel.c)
            if rb == ffi.NULL:
                code = ffi.errno
                self.close()
                raise LoadError(f"cannot open ring buffer (map fd {fd}): {_err(code)}",
                                detail=take_log())
            self._rb = rb
            self._channels.append(channel)

    def poll(self, timeout_ms: int) -> int:
        """Consume what is ready (waiting up to ``timeout_ms``); return the events seen, or -errno."""
        return lib.ring_buffer__poll(self._rb, timeout_ms)

    def drain(self) -> int:
        return lib.ring_buffer__consume(self._rb)

    def fileno(self) -> int:
        """An epoll fd that is readable while any of the rings holds data."""
        return lib.ring_buffer__epoll_fd(self._rb)

    def close(self) -> None:
        if self._rb != ffi.NULL:
            lib.ring_buffer__free(self._rb)
            self._rb = ffi.NULL


@dataclass(frozen=True, slots=True, kw_only=True)
class HostArgs:
    """What a processor host process needs (loader/processors/host.py)."""

    label: str
    so_path: str
    initfile: str | None
    init: str
    pre: str | None
    post: str | None
    routes: tuple[tuple[str, str], ...]  # (channel, function) per route number
    abi: int
    in_fd: int
    out_fd: int
    shm_fd: int


def host_run(args: HostArgs) -> int:
    """Run the processor host loop in this process until its input closes; return the exit code."""
    keep = [ffi.new("char[]", text.encode()) for text in
            (args.label, args.so_path, args.init, *(c for c, _ in args.routes),
             *(f for _, f in args.routes))]
    n = len(args.routes)
    c = ffi.new("struct bpfdepot_host_args *")
    c.label, c.so_path, c.init = keep[0], keep[1], keep[2]
    channels = ffi.new("const char *[]", keep[3:3 + n])
    process = ffi.new("const char *[]", keep[3 + n:3 + 2 * n])
    c.channels, c.process, c.nroutes, c.abi = channels, process, n, args.abi
    optional = {}
    for name in ("initfile", "pre", "post"):
        value = getattr(args, name)
        optional[name] = ffi.new("char[]", value.encode()) if value is not None else ffi.NULL
    c.initfile, c.pre, c.post = optional["initfile"], optional["pre"], optional["post"]
    c.in_fd, c.out_fd, c.shm_fd = args.in_fd, args.out_fd, args.shm_fd
    return lib.bpfdepot_host_run(c)


def probe_prog(prog_type: int, attach_type: int = 0, attach_btf_id: int = 0) -> int:
    """Load a two-instruction program of this type; 0 when it loads, else -errno."""
    return lib.bpfdepot_probe_prog(prog_type, attach_type, attach_btf_id)


def probe_map(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    return lib.bpfdepot_probe_map(map_type, key_size, value_size, max_entries)


def vmlinux_btf_id(name: str, kind: int) -> int:
    """The id of a type in the running kernel's BTF, or -errno."""
    return lib.bpfdepot_vmlinux_btf_id(name.encode(), kind)


# --- Attach kinds (perf_event, uprobe) and program controls (map sizing, byte knobs) ---------
# Used by loader/attach/perf_event.py, loader/attach/uprobe.py and loader/session.py.

def num_possible_cpus() -> int:
    """CPUs the kernel may ever bring up (per-CPU maps are this wide); libbpf's count."""
    n = lib.libbpf_num_possible_cpus()
    if n <= 0:
        raise LoadError(f"cannot count the possible CPUs: {_err(n)}",
                        hint="check /sys/devices/system/cpu/possible")
    return n


def perf_event_open(type_: int, config: int, sample: int, *, freq: bool, cpu: int) -> int:
    """A sampling perf event on ``cpu`` for every task: its fd, or -errno."""
    return lib.bpfdepot_perf_event_open(type_, config, sample, int(freq), cpu)


def attach_perf_event(obj: BpfObject, program: str, pfd: int) -> LibbpfLink:
    """Attach ``program`` to the perf event ``pfd``; the link owns the fd from here on
    (libbpf's perf link closes it on destroy). On failure the fd is closed here."""
    take_log()
    link = lib.bpf_program__attach_perf_event(obj.program_handle(program), pfd)
    if link == ffi.NULL:
        code = ffi.errno
        os.close(pfd)
        raise LoadError(f"cannot attach program '{program}' of '{obj.label}' to a perf event: "
                        f"{_err(code)}", detail=take_log().strip(),
                        hint="is it a SEC(\"perf_event\") program?")
    return LibbpfLink(link)


def attach_uprobe(obj: BpfObject, program: str, *, pid: int, binary: str, function: str | None,
                  offset: int, retprobe: bool) -> tuple[LibbpfLink | None, int, str]:
    """Attach ``program`` as a u(ret)probe; (link, 0, "") or (None, errno, libbpf's log)."""
    take_log()
    func = ffi.new("char[]", function.encode()) if function else ffi.NULL
    link = lib.bpfdepot_attach_uprobe(obj.program_handle(program), pid, binary.encode(), func,
                                      offset, retprobe)
    if link == ffi.NULL:
        return None, ffi.errno, take_log().strip()
    return LibbpfLink(link), 0, ""


def size_map(obj: BpfObject, name: str, *, max_entries: int | None = None,
             value_size: int | None = None) -> None:
    """Set a map's max_entries and/or value_size (before load, as libbpf-tools do)."""
    m = obj._find_map(name)
    if m is None:
        raise LoadError(f"no map '{name}' in '{obj.label}' to size",
                        hint="name a map the program declares in SEC(\".maps\")")
    for what, value, setter in (("max_entries", max_entries, lib.bpf_map__set_max_entries),
                                ("value_size", value_size, lib.bpf_map__set_value_size)):
        if value is None:
            continue
        rc = setter(m, value)
        if rc:
            raise LoadError(f"cannot set {what} of map '{name}' of '{obj.label}' to {value}: "
                            f"{_err(rc)}", hint="maps are sized before load")


def write_rodata(obj: BpfObject, name: str, offset: int, raw: bytes) -> None:
    """Write a knob's bytes into the object's .rodata (before load: then it is frozen)."""
    m = lib.bpf_object__next_map(obj._obj, ffi.NULL)
    while m != ffi.NULL:
        if lib.bpf_map__is_internal(m) and _str(lib.bpf_map__name(m)).endswith(".rodata"):
            break
        m = lib.bpf_object__next_map(obj._obj, m)
    psize = ffi.new("size_t *")
    data = lib.bpf_map__initial_value(m, psize) if m != ffi.NULL else ffi.NULL
    if data == ffi.NULL or offset + len(raw) > psize[0]:
        raise LoadError(f"'{obj.label}' has no .rodata room for knob '{name}'",
                        hint="knobs are `const volatile` globals of the program")
    ffi.memmove(ffi.cast("char *", data) + offset, raw, len(raw))


# --- cgroup, socket filter and iterator attach kinds; plain words for objects that do not open ---
# Used by loader/attach/cgroup.py, socket_filter.py, iter.py and loader/outputs/iterator.py.

def program_fd(obj: BpfObject, program: str) -> int:
    """The fd of a loaded program (for setsockopt(SO_ATTACH_BPF) and the like)."""
    fd = lib.bpf_program__fd(obj.program_handle(program))
    if fd < 0:
        raise LoadError(f"program '{program}' of '{obj.label}' is not loaded",
                        hint="it may be kept out by autoload: false in the manifest")
    return fd


def attach_cgroup(obj: BpfObject, program: str, cgroup_fd: int, path: str) -> LibbpfLink:
    """Attach a cgroup program (cgroup_skb, sockops, cgroup/...) to the cgroup2 directory open
    at ``cgroup_fd``; the caller keeps the fd and closes it once the link is destroyed."""
    take_log()
    link = lib.bpf_program__attach_cgroup(obj.program_handle(program), cgroup_fd)
    if link == ffi.NULL:
        code = ffi.errno
        raise LoadError(f"cannot attach program '{program}' of '{obj.label}' to cgroup {path}: "
                        f"{_err(code)}", detail=take_log().strip(),
                        hint="is it a SEC(\"cgroup_skb/...\"), SEC(\"sockops\") or "
                             "SEC(\"cgroup/...\") program?")
    return LibbpfLink(link)


def attach_iter(obj: BpfObject, program: str, *, map_fd: int = 0, tid: int = 0,
                pid: int = 0) -> LibbpfLink:
    """Attach an iterator program (SEC("iter/...")): the link iterator fds are made from."""
    take_log()
    link = lib.bpfdepot_attach_iter(obj.program_handle(program), map_fd, tid, pid)
    if link == ffi.NULL:
        code = ffi.errno
        raise LoadError(f"cannot attach iterator '{program}' of '{obj.label}': {_err(code)}",
                        detail=take_log().strip(),
                        hint="is it a SEC(\"iter/...\") program, and does this kernel have "
                             "that iterator? (`bpftool btf dump file /sys/kernel/btf/vmlinux | "
                             "grep bpf_iter_`)")
    return LibbpfLink(link)


def iter_link_fd(obj: BpfObject, program: str) -> int | None:
    """The fd of the link that attached ``program`` (an iterator), found by program id among
    the object's links whatever attached it (libbpf's auto-attach or the ``iter`` kind)."""
    prog_id = lib.bpfdepot_prog_id(program_fd(obj, program))
    for link in obj._links:
        handle = getattr(link, "_link", None)
        if isinstance(link, LibbpfLink) and handle is not None:
            fd = lib.bpf_link__fd(handle)
            if fd >= 0 and lib.bpfdepot_link_prog_id(fd) == prog_id:
                return fd
    return None


def iter_read(link_fd: int, chunk: int = 1 << 16) -> bytes:
    """Run the iterator once: a fresh iterator fd from its link, read to EOF (the kernel walks
    its objects as we read, calling the program for each), closed."""
    fd = lib.bpf_iter_create(link_fd)
    if fd < 0:
        raise LoadError(f"cannot create an iterator from link fd {link_fd}: {_err(fd)}")
    parts = []
    try:
        while True:
            try:
                data = os.read(fd, chunk)
            except OSError as exc:
                raise LoadError(f"reading an iterator of link fd {link_fd} failed: "
                                f"{exc.strerror}") from None
            if not data:
                return b"".join(parts)
            parts.append(data)
    finally:
        os.close(fd)


_EXTERN = re.compile(r"(?:failed to find BTF for extern|extern \((?:kcfg|ksym)\)|"
                     r"unrecognized extern section)[^']*'([^']+)'[^\n]*")
_MAP_CREATE = re.compile(r"map '([^']+)': failed to create")


def explain_open_failure(label: str, log: str) -> tuple[str, str] | None:
    """(message, hint) for an object that is intact but cannot open: an extern nothing defines.
    None when libbpf's log holds nothing known (then the object may be damaged)."""
    match = _EXTERN.search(log)
    if match is None:
        return None
    return (f"'{label}' uses extern '{match.group(1)}', which libbpf cannot resolve "
            f"({match.group(0).removeprefix('libbpf: ').strip()})",
            "libbpf resolves only __kconfig externs (CONFIG_*, LINUX_KERNEL_VERSION) and __ksym "
            "kernel symbols: define the symbol in the program (static) or declare it __ksym/"
            "__kconfig; `bpfdepot build` refuses such an object")


def explain_load_failure(obj: BpfObject, log: str) -> tuple[str, str] | None:
    """(message, hint) for a map the kernel would not create because it has no size; None when
    the failure is something else."""
    match = _MAP_CREATE.search(log)
    m = obj._find_map(match.group(1)) if match else None
    if m is None:
        return None
    entries, value = lib.bpf_map__max_entries(m), lib.bpf_map__value_size(m)
    if entries and value:
        return None
    what = "max_entries 0" if not entries else "value_size 0"
    name = match.group(1)
    return (f"map '{name}' of '{obj.label}' has {what}: it is meant to be sized from user space, "
            "and nothing sized it",
            f"add maps: {{{name}: {{max_entries: N}}}} to the program in the manifest, or give "
            f"the map __uint({'max_entries' if not entries else 'value_size'}, N) in the source")


# --- Perf buffers (loader/outputs/perf_buffer.py) ---------------------------------------------

class PerfReader:
    """One BPF_MAP_TYPE_PERF_EVENT_ARRAY map read through libbpf's perf_buffer (a ring of
    ``pages`` pages per CPU). Samples go to ``channel`` in C (bpfdepot_perf.c); those the kernel
    could not write because a ring was full are counted in ``lost``."""

    def __init__(self, map_fd: int, channel: Channel, *, pages: int, label: str) -> None:
        self.channel = channel
        self.label = label
        self.c = ffi.new("struct bpfdepot_perf *")
        self.c.ch = channel.c
        take_log()
        rc = lib.bpfdepot_perf_open(self.c, map_fd, pages)
        if rc:
            raise LoadError(f"cannot open perf buffer {label} ({pages} pages per CPU): {_err(rc)}",
                            detail=take_log().strip(),
                            hint="is the map a BPF_MAP_TYPE_PERF_EVENT_ARRAY? pages must be a "
                                 "power of two, and pages × CPUs must fit the locked-memory limit")

    def drain(self) -> int:
        """Read every CPU's ring; 0, or -errno."""
        return lib.bpfdepot_perf_consume(self.c) if self.c.pb != ffi.NULL else 0

    def fileno(self) -> int:
        """An epoll fd that is readable while any CPU's ring holds data."""
        return lib.bpfdepot_perf_fd(self.c)

    def flush(self) -> None:
        """Once nothing sends any more and the rings are drained: bring out the lost count the
        kernel still holds (it writes one only with the next record that fits its ring)."""
        take_log()
        rc = lib.bpfdepot_perf_flush(self.c) if self.c.pb != ffi.NULL else 0
        if rc:
            raise LoadError(f"cannot read the last lost count of perf buffer {self.label}: "
                            f"{_err(rc)}", detail=take_log().strip(),
                            hint="the events received are all written; the lost count shown "
                                 "may miss samples dropped at the very end")

    @property
    def lost(self) -> int:
        return self.c.lost

    def feed(self, event: bytes, cpu: int = 0) -> None:
        """Handle one sample as libbpf would hand it over (tests)."""
        lib.bpfdepot_perf_sample(self.c, cpu, event, len(event))
        if self.c.err:
            self.c.err = 0
            raise MemoryError("perf sample")

    def feed_lost(self, count: int, cpu: int = 0) -> None:
        """Count ``count`` samples the kernel dropped, as a PERF_RECORD_LOST would (tests)."""
        lib.bpfdepot_perf_lost(self.c, cpu, count)

    def close(self) -> None:
        if self.c.pb != ffi.NULL:
            lib.bpfdepot_perf_free(self.c)

    @classmethod
    def detached(cls, channel: Channel) -> PerfReader:
        """A reader with no perf buffer behind it, fed by hand (unit tests of the callbacks)."""
        self = cls.__new__(cls)
        self.channel, self.label = channel, "(detached)"
        self.c = ffi.new("struct bpfdepot_perf *")
        self.c.ch = channel.c
        return self


# ---- map snapshots and histograms (loader/outputs/hash_map.py, histogram.py) -----------------

MAP_RESET: int = lib.BPFDEPOT_MAP_RESET
MAP_KEEP_CPU: int = lib.BPFDEPOT_MAP_KEEP_CPU
MAP_DELTA: int = lib.BPFDEPOT_MAP_DELTA
MAP_SKIP_ZERO: int = lib.BPFDEPOT_MAP_SKIP_ZERO


@dataclass(frozen=True, slots=True, kw_only=True)
class Span:
    """An integer field of a map's value: summed across CPUs, subtracted for deltas, sorted on."""

    offset: int
    size: int
    signed: bool = False


def possible_cpus() -> int:
    """CPUs a per-CPU map keeps a value for (libbpf's count of possible CPUs)."""
    return max(1, lib.libbpf_num_possible_cpus())


class MapReader:
    """A whole BPF map read in C (batch syscalls) into records: the key bytes, the value bytes
    (per-CPU values summed, or one record per CPU with a u32 cpu after them)."""

    def __init__(self, fd: int, *, label: str, key_size: int, value_size: int, max_entries: int,
                 percpu: bool, array: bool, flags: int = 0, spans: Sequence[Span] = (),
                 sort_span: int = -1, top: int = 0) -> None:
        self.label = label
        c = ffi.new("struct bpfdepot_mapread *")
        c.fd, c.key_size, c.value_size, c.max_entries = fd, key_size, value_size, max_entries
        c.percpu, c.is_array, c.flags = int(percpu), int(array), flags
        c.ncpu = possible_cpus() if percpu else 1
        self._spans = ffi.new("struct bpfdepot_span[]", max(1, len(spans)))
        for slot, span in zip(self._spans, spans):
            slot.offset, slot.size, slot.is_signed = span.offset, span.size, int(span.signed)
        c.spans, c.nspans, c.sort_span, c.top = self._spans, len(spans), sort_span, top
        c.batch = c.delete_batch = 1
        self.c = ffi.gc(c, lib.bpfdepot_map_free)
        self._raw = ffi.gc(ffi.new("struct bpfdepot_wbuf *"), lib.bpfdepot_wbuf_free)

    @property
    def record_size(self) -> int:
        return lib.bpfdepot_map_record_size(self.c)

    def read(self, channel: Channel) -> int:
        """Read the map; hand each record to ``channel``; return the records made."""
        return self._check(lib.bpfdepot_map_read(self.c, channel.c, ffi.NULL))

    def read_raw(self) -> bytes:
        """Read the map; return its records laid end to end (``record_size`` bytes each)."""
        self._check(lib.bpfdepot_map_read(self.c, ffi.NULL, self._raw))
        raw = self._raw
        data = ffi.unpack(raw.buf, raw.len) if raw.len else b""
        raw.len = raw.events = 0
        return data

    def _check(self, n: int) -> int:
        if n < 0:
            raise LoadError(f"cannot read map '{self.label}': {_err(-n)}",
                            hint="the map must stay loaded while its channel reads it")
        return n

    @property
    def entries(self) -> int:
        """Entries read so far."""
        return self.c.entries

    @property
    def lost(self) -> int:
        """Entries that could not be read."""
        return self.c.lost

    @property
    def batch(self) -> bool:
        """The kernel's batch ops serve this map (else it is read key by key)."""
        return bool(self.c.batch)
