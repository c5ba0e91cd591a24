"""Reading what programs produce: ring buffers and perf buffers through libbpf's managers (their
sample callbacks are C that encodes or frames each event), and whole maps through batch
syscalls (loader/native/bpfdepot_maps.c)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from loader._libbpf import ffi, lib
from loader.errors import LoadError
from loader.libbpf.core import BpfObject, _err, num_possible_cpus, take_log
from loader.libbpf.encode import Channel


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


# --- Perf buffers (loader/outputs/perf_buffer.py) ---------------------------------------------

class PerfReader:
    """One BPF_MAP_TYPE_PERF_EVENT_ARRAY map read through libbpf's perf_buffer (a ring of
    ``pages`` pages per CPU). Samples go to ``channel`` in C (bpfdepot_perf.c); those the kernel
    could not write because a ring was full are counted in ``lost``."""

    def __init__(self, map_fd: int, channel: Channel, *, pages: int, label: str,
                 wakeup_bytes: int = 0) -> None:
        self.channel = channel
        self.label = label
        self.c = ffi.new("struct bpfdepot_perf *")
        self.c.ch = channel.c
        take_log()
        rc = lib.bpfdepot_perf_open(self.c, map_fd, pages, wakeup_bytes)
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
        c.ncpu = num_possible_cpus() if percpu else 1
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


# --- Stack-trace maps (loader/outputs/stack_counts.py) ----------------------------------------

class StackMap:
    """A loaded BPF_MAP_TYPE_STACK_TRACE map: stack id → instruction pointers (innermost
    first), looked up and deleted one id at a time (the kernel has no batch ops for it)."""

    def __init__(self, obj: BpfObject, name: str) -> None:
        m = obj._map(name)  # this package owns BpfObject's internals
        self.name = name
        self.fd = lib.bpf_map__fd(m)
        self.max_entries = lib.bpf_map__max_entries(m)
        self.depth = lib.bpf_map__value_size(m) // 8
        self._key = ffi.new("uint32_t *")
        self._ips = ffi.new("uint64_t[]", max(1, self.depth))

    def lookup(self, stack_id: int) -> list[int] | None:
        """The stack's addresses (up to the first 0), or None when the id holds no stack."""
        self._key[0] = stack_id
        if lib.bpf_map_lookup_elem(self.fd, self._key, self._ips) != 0:
            return None
        ips = self._ips
        out = []
        for i in range(self.depth):
            if not ips[i]:
                break
            out.append(ips[i])
        return out

    def delete(self, stack_id: int) -> bool:
        """Free the id's slot so the map never fills; False when it was already empty."""
        self._key[0] = stack_id
        return lib.bpf_map_delete_elem(self.fd, self._key) == 0


def map_max_entries(obj: BpfObject, name: str) -> int:
    """A map's max_entries as loaded (the manifest's ``maps:`` may have resized it)."""
    return lib.bpf_map__max_entries(obj._map(name))
