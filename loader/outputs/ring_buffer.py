"""``type: ring_buffer``: a BPF ring buffer (BPF_MAP_TYPE_RINGBUF), events as they come.

    channels:
      events:
        type: ring_buffer
        latency: 5ms       # the longest an event waits in the ring (default 5ms; 0: wake per event)

Events are decoded (or framed for processors) in C inside libbpf's sample callback. Events the
program could not reserve are counted by the program itself in a per-CPU array ``<channel>_lost``
when it keeps one (BPFDEPOT_CHANNEL in bpf/include/bpfdepot.h does); they are the channel's lost.

Batched wakeups: a program that sends with ``bpfdepot_submit`` (bpfdepot.h) wakes this reader
only when WAKEUP_SHARE of the ring is waiting or when its last wakeup is ``latency`` old; the
reader sets both (``<channel>_wakeup_bytes``, ``<channel>_wakeup_ns``) before load and, after a
read that found events, reads again every ``latency`` until two quiet periods have passed. An
event sent without a wakeup comes at most ``latency`` after one that woke the reader (the
kernel side's rule), and the reader is still reading on its timer then: none waits longer than
``latency`` plus a read. A program that submits with plain ``bpf_ringbuf_submit(e, 0)`` (no such
globals) is read as the kernel wakes it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from yaml.nodes import ScalarNode

from loader.errors import LoadError
from loader.outputs import ChannelContext, ChannelStats, OutputKind, register

DEFAULT_LATENCY_S = 0.005   # an event reaches its sink within ~this (plus the read) by default
MAX_LATENCY_S = 1.0         # longer holds a burst in the ring, where it may overflow instead
WAKEUP_SHARE = 8            # wake when 1/8 of the ring waits: room left for the reader to come

# The libbpf readers (cffi) are imported where a run opens the channel (see hash_map).
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from yaml.nodes import Node

    from loader.libbpf.encode import Channel
    from loader.libbpf.readers import RingReader
    from loader.model.yamldoc import YamlDoc


class RingBufferReader:
    def __init__(self, ctx: ChannelContext) -> None:
        self.ctx = ctx
        self.channel: Channel = ctx.pipeline.channel(ctx.program, ctx.name, ctx.decoder())
        self.ring: RingReader | None = None
        self.latency: float = ctx.options.get("latency", DEFAULT_LATENCY_S)
        self.batched = self.latency > 0 and _set_wakeup(ctx, self.latency)
        self.busy_until: float | None = None  # read on the timer until then
        self.last_read = 0.0

    def start(self) -> None:
        from loader.libbpf.readers import RingReader

        self.ring = RingReader([(self.ctx.obj.map_fd(self.ctx.name), self.channel)])

    def fds(self) -> Sequence[int]:
        return [self.ring.fileno()] if self.ring is not None else []

    def due(self) -> float | None:
        if not self.batched or self.busy_until is None:
            return None  # woken by the kernel: the first event after a quiet spell wakes it
        return self.last_read + self.latency

    def read(self, now: float) -> None:
        if self.ring is not None:
            n = self.ring.drain()
            if n < 0 and n != -errno.EINTR:
                raise LoadError(f"reading ring buffer '{self.ctx.name}' of '{self.ctx.program}' "
                                f"failed: {os.strerror(-n)}")
            self.last_read = now
            if n > 0:
                self.busy_until = now + 2 * self.latency
            elif self.busy_until is not None and now >= self.busy_until:
                self.busy_until = None

    def final(self) -> None:
        self.read(0.0)

    def stats(self) -> ChannelStats:
        return ChannelStats(program=self.ctx.program, channel=self.ctx.name,
                            received=self.channel.events, short=self.channel.short_events,
                            lost=kernel_lost(self.ctx))

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None


def _set_wakeup(ctx: ChannelContext, latency: float) -> bool:
    """Write the channel's wakeup watermark and deadline into the object (opened, not loaded);
    False when its program keeps no such globals (it does not send with bpfdepot_submit)."""
    from loader.libbpf.attach import write_rodata

    knobs = {k.name: k for k in ctx.info.knobs}
    found = ctx.info.map(ctx.name)
    names = (f"{ctx.name}_wakeup_bytes", f"{ctx.name}_wakeup_ns")
    if found is None or not all(name in knobs and knobs[name].size == 8 for name in names):
        return False
    ring_bytes = found.max_entries or 4096
    for name, value in zip(names, (max(1, ring_bytes // WAKEUP_SHARE), int(latency * 1e9))):
        write_rodata(ctx.obj, name, knobs[name].offset, value.to_bytes(8, "little"))
    return True


def parse_options(doc: YamlDoc, values: Mapping[str, Node], at: str) -> dict[str, Any]:
    """``latency: 5ms``: how long an event may wait in the ring; ``0`` wakes per event."""
    from loader.outputs.hash_map import _DURATION, _UNIT_S  # interval's durations (it imports us)

    if "latency" not in values:
        return {}
    node = values["latency"]
    text = str(getattr(node, "value", "")).strip() if isinstance(node, ScalarNode) else ""
    match = _DURATION.fullmatch(text)
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)] if match else -1.0
    if not match or (seconds and not 0.001 <= seconds <= MAX_LATENCY_S):
        raise doc.error(node, f"'latency' in {at} must be 0 or a duration from 1ms to "
                        f"{MAX_LATENCY_S:g}s, got {text or 'a list or mapping'!r}",
                        hint="e.g. latency: 5ms, 20ms, or 0 to wake per event")
    return {"latency": seconds}



def kernel_lost(ctx: ChannelContext) -> int:
    """The program's own count of events it could not reserve (``<channel>_lost``), or 0."""
    lost_map = f"{ctx.name}_lost"
    return ctx.obj.percpu_u64_sum(lost_map) if ctx.obj.has_map(lost_map) else 0


register(OutputKind(type="ring_buffer", summary="BPF ring buffer: events as they come",
                    map_types=("ringbuf",), open=RingBufferReader, options=("latency",),
                    parse=parse_options))
