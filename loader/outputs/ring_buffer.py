"""``type: ring_buffer``: a BPF ring buffer (BPF_MAP_TYPE_RINGBUF), events as they come.

Events are decoded (or framed for processors) in C inside libbpf's sample callback. Events the
program could not reserve are counted by the program itself in a per-CPU array ``<channel>_lost``
when it keeps one (BPFDEPOT_CHANNEL in bpf/include/bpfdepot.h does); they are the channel's lost.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from loader.errors import LoadError
from loader.outputs import ChannelContext, ChannelStats, OutputKind, register

# The libbpf readers (cffi) are imported where a run opens the channel (see hash_map).
if TYPE_CHECKING:
    from loader.libbpf.encode import Channel
    from loader.libbpf.readers import RingReader


class RingBufferReader:
    def __init__(self, ctx: ChannelContext) -> None:
        self.ctx = ctx
        self.channel: Channel = ctx.pipeline.channel(ctx.program, ctx.name, ctx.decoder())
        self.ring: RingReader | None = None

    def start(self) -> None:
        from loader.libbpf.readers import RingReader

        self.ring = RingReader([(self.ctx.obj.map_fd(self.ctx.name), self.channel)])

    def fds(self) -> Sequence[int]:
        return [self.ring.fileno()] if self.ring is not None else []

    def due(self) -> float | None:
        return None

    def read(self, now: float) -> None:
        if self.ring is not None:
            n = self.ring.drain()
            if n < 0 and n != -errno.EINTR:
                raise LoadError(f"reading ring buffer '{self.ctx.name}' of '{self.ctx.program}' "
                                f"failed: {os.strerror(-n)}")

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


def kernel_lost(ctx: ChannelContext) -> int:
    """The program's own count of events it could not reserve (``<channel>_lost``), or 0."""
    lost_map = f"{ctx.name}_lost"
    return ctx.obj.percpu_u64_sum(lost_map) if ctx.obj.has_map(lost_map) else 0


register(OutputKind(type="ring_buffer", summary="BPF ring buffer: events as they come",
                    map_types=("ringbuf",), open=RingBufferReader))
