"""``type: perf_buffer``: a BPF perf event array (BPF_MAP_TYPE_PERF_EVENT_ARRAY), events as
they come, one perf ring per CPU.

    channels:
      events:
        type: perf_buffer
        pages: 64          # per-CPU ring size in pages, a power of two (default 64)
        latency: 5ms       # batch wakeups; events wait this long at most (default 0: per event)

The program sends with ``bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, e, size)``;
``size`` may vary per event (a trailing array or string is decoded as far as it arrived).
Samples are decoded (or framed for processors) in C inside libbpf's sample callback. Samples the
kernel could not write because a CPU's ring was full are reported by the kernel itself (lost
records): they are the channel's ``lost``, never dropped silently. The kernel writes a lost
record only with the next record that fits, so after detach every CPU's ring gets one record of
bpfdepot's own (BPF_PROG_TEST_RUN of a 10-instruction program) to bring out the last count.

With ``latency``, each CPU's ring wakes the reader only once an eighth of it is waiting (the
perf event's wakeup watermark) and the reader also reads every ``latency``: a flood costs the
traced tasks far fewer wakeups, and an event waits ``latency`` at most. Without it the kernel
wakes the reader for every sample, as libbpf's perf_buffer does (a perf ring has no way to wake
for a lone sample after a quiet spell, so the timer would run for ever: it is opt-in here).

The rings open once the objects are loaded and before anything attaches (``Pipeline.when_loaded``):
the kernel drops, uncounted, what a program sends to a CPU whose ring nobody opened yet.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from yaml.nodes import ScalarNode

from loader.errors import LoadError
from loader.outputs import ChannelContext, ChannelStats, OutputKind, register
from loader.outputs.ring_buffer import WAKEUP_SHARE
from loader.outputs.ring_buffer import parse_options as parse_latency

# The libbpf readers (cffi) are imported where a run opens the channel (see hash_map).
if TYPE_CHECKING:
    from yaml.nodes import Node

    from loader.libbpf.encode import Channel
    from loader.libbpf.readers import PerfReader

    from loader.model.yamldoc import YamlDoc

DEFAULT_PAGES = 64       # 256 KiB per CPU with 4 KiB pages, as libbpf-tools' PERF_BUFFER_PAGES
MAX_PAGES = 1 << 14      # 64 MiB per CPU: more is a typo, and locked memory per CPU besides


class PerfBufferReader:
    """One perf-buffer channel (see the module docstring)."""

    def __init__(self, ctx: ChannelContext) -> None:
        self.ctx = ctx
        self.pages: int = ctx.options.get("pages", DEFAULT_PAGES)
        self.latency: float = ctx.options.get("latency", 0.0)
        self.last_read = 0.0
        self.channel: Channel = ctx.pipeline.channel(ctx.program, ctx.name, ctx.decoder())
        self.perf: PerfReader | None = None
        ctx.pipeline.when_loaded(self._open)

    def _open(self) -> None:
        from loader.libbpf.readers import PerfReader

        if self.perf is None:
            watermark = self.pages * os.sysconf("SC_PAGE_SIZE") // WAKEUP_SHARE if self.latency else 0
            self.perf = PerfReader(self.ctx.obj.map_fd(self.ctx.name), self.channel,
                                   pages=self.pages, wakeup_bytes=watermark,
                                   label=f"'{self.ctx.name}' of '{self.ctx.program}'")

    def start(self) -> None:
        self._open()  # already open when the pipeline ran its when_loaded hooks

    def fds(self) -> Sequence[int]:
        return [self.perf.fileno()] if self.perf is not None else []

    def due(self) -> float | None:
        return self.last_read + self.latency if self.latency else None

    def read(self, now: float) -> None:
        if self.perf is None:
            return
        self.last_read = now
        rc = self.perf.drain()
        if rc == -errno.ENOMEM:
            raise MemoryError(f"decoding perf buffer '{self.ctx.name}' of '{self.ctx.program}'")
        if rc < 0 and rc != -errno.EINTR:
            raise LoadError(f"reading perf buffer '{self.ctx.name}' of '{self.ctx.program}' "
                            f"failed: {os.strerror(-rc)}")

    def final(self) -> None:
        self.read(0.0)
        if self.perf is not None:
            self.perf.flush()

    def stats(self) -> ChannelStats:
        lost = self.perf.lost if self.perf is not None else 0
        return ChannelStats(program=self.ctx.program, channel=self.ctx.name,
                            received=self.channel.events, short=self.channel.short_events,
                            lost=lost + _program_lost(self.ctx))

    def close(self) -> None:
        if self.perf is not None:
            self.perf.close()
            self.perf = None


def _program_lost(ctx: ChannelContext) -> int:
    """What the program counted itself in a per-CPU array ``<channel>_lost``, when it keeps one."""
    lost_map = f"{ctx.name}_lost"
    return ctx.obj.percpu_u64_sum(lost_map) if ctx.obj.has_map(lost_map) else 0


def parse_options(doc: YamlDoc, values: Mapping[str, Node], at: str) -> dict[str, Any]:
    """``pages: N``: the per-CPU ring size in pages, a power of two; ``latency``: see above."""
    out = parse_latency(doc, values, at) if "latency" in values else {}
    if "pages" not in values:
        return out
    node = values["pages"]
    good = (isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:int"
            and node.value.isdigit())
    pages = int(node.value) if good else 0
    if not good or pages < 1 or pages > MAX_PAGES or pages & (pages - 1):
        shown = node.value if isinstance(node, ScalarNode) else "a list or mapping"
        below = 1 << max(0, min(pages, MAX_PAGES).bit_length() - 1) if good and pages else DEFAULT_PAGES
        raise doc.error(node, f"'pages' in {at} must be a power of two from 1 to {MAX_PAGES} "
                        f"(pages per CPU), got {shown}", hint=f"e.g. pages: {below}")
    return {**out, "pages": pages}


register(OutputKind(type="perf_buffer",
                    summary="BPF perf event array: events as they come, one ring per CPU",
                    map_types=("perf_event_array",), open=PerfBufferReader,
                    options=("pages", "latency"), parse=parse_options))
