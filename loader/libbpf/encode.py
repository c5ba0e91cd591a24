"""Event bytes → JSON lines or processor frames, in C: the encoder's ops and name tables (built by
loader/decoders/btf.py), the per-channel dispatcher with its routes, and the processor side
(result frames, the host loop) so Python only moves whole buffers."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from loader._libbpf import ffi, lib


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
                    slot.key_text = 1
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

    def key_text(self, route: int, on: bool) -> None:
        """Whether route number ``route`` frames its hash field as text for the record keys
        (on by default); off, the field still picks the worker."""
        self.c.routes[route].key_text = int(on) if self.c.routes[route].key.nops else 0

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
    wrote into its pipe, and nothing after that point can be trusted.

    The output is read straight into the parser's own buffer (``read_from``), where only a
    frame cut by the read is moved, to the front: no chunk is copied or joined on its way."""

    READ_BYTES = 1 << 20  # read at a time; the buffer holds that after the largest partial frame

    def __init__(self, routes: int, *, keys: bool) -> None:
        self.c = ffi.new("struct bpfdepot_results *")
        self._outs = ffi.new("struct bpfdepot_route_out[]", routes)
        self.c.routes, self.c.nroutes, self.c.keys = self._outs, routes, int(keys)
        self._buf = bytearray(self.READ_BYTES + RESULT_CAP + KEY_MAX + 64)
        self._cbuf = ffi.from_buffer(self._buf)  # fixed size from here on: the buffer is exported
        self._have = 0                           # bytes of a partial frame at its start
        self._taken = [0] * routes               # kept records handed out by take_records

    def feed(self, data: bytes) -> int:
        """Parse whole frames (keeping a partial one for the next call); return frames parsed.

        After a violation nothing more is parsed and ``data`` is dropped."""
        before, at = self.c.frames, 0
        while at < len(data) and not self.c.violation:
            n = min(len(data) - at, len(self._buf) - self._have)
            self._buf[self._have:self._have + n] = data[at:at + n]
            self._have, at = self._have + n, at + n
            self._parse()
        return self.c.frames - before

    def read_from(self, fd: int) -> int:
        """Read what ``fd`` holds (up to READ_BYTES) into the parser and parse its whole frames;
        return the bytes read, 0 at the end of the output. Raises BlockingIOError when there is
        nothing to read yet. After a violation what is read is dropped."""
        with memoryview(self._buf) as view:
            n = os.readv(fd, [view[self._have:]])
        if n and not self.c.violation:
            self._have += n
            self._parse()
        return n

    def _parse(self) -> None:
        used = lib.bpfdepot_results_feed(self.c, self._cbuf, self._have)
        if used == ffi.cast("size_t", -1):
            raise MemoryError("result parser")
        if self.c.violation:
            self._have = 0
            return
        if used:
            ffi.memmove(self._cbuf, self._cbuf + used, self._have - used)
            self._have -= used

    @property
    def frames(self) -> int:
        """Valid frames parsed: the events this worker incarnation answered."""
        return self.c.frames

    @property
    def partial(self) -> int:
        return self._have

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
        lines, keys, _ = self.take_records(route)
        return lines, keys

    def take_records(self, route: int) -> tuple[bytes, bytes, int]:
        """``take``, and how many records the lines hold (no need to count the newlines)."""
        o = self._outs[route]
        count, self._taken[route] = o.kept - self._taken[route], o.kept
        if not count:
            return b"", b"", 0
        lines = ffi.unpack(o.lines.buf, o.lines.len)
        keys = ffi.unpack(o.keys.buf, o.keys.len) if o.keys.len else b""
        o.lines.len = o.keys.len = 0
        return lines, keys, count

    def close(self) -> None:
        for o in self._outs:
            lib.bpfdepot_wbuf_free(ffi.addressof(o, "lines"))
            lib.bpfdepot_wbuf_free(ffi.addressof(o, "keys"))


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
