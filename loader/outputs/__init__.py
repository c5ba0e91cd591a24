"""Output kinds: how a channel leaves the kernel. One module per kind, registered under the
manifest ``type:`` it answers to; adding a kind is adding a module here.

    ring_buffer.py   BPF ring buffer, events as they come

A kind declares the BPF map types it reads, the manifest keys it takes besides the common ones
(``type``, ``event``, ``events``, ``fields``, ``decoders``, ``unions``), how it parses them, and
how it opens a ``Reader`` for a channel. The manifest refuses an unknown ``type:`` with the list
of registered kinds, and a key the kind does not take, with the keys it does.

A run opens each channel's reader before the objects load (so processor routes exist when the
processors start), starts it once everything is attached, lets the pipeline's loop call
``read`` when its fds are readable or its ``due`` time comes, and calls ``final`` after detach.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from loader.registry import Registry

if TYPE_CHECKING:
    from yaml.nodes import Node

    from loader.decoders.btf import EnumSource, EventDecoder
    from loader.kernel.elf import ObjectInfo
    from loader.libbpf.core import BpfObject
    from loader.model.manifest import ChannelSpec
    from loader.model.yamldoc import YamlDoc
    from loader.pipeline import Pipeline

# Manifest keys every channel may carry; a kind adds its own.
COMMON_KEYS = ("type", "event", "events", "fields", "decoders", "unions")


@dataclass(slots=True, kw_only=True)
class ChannelStats:
    """What one channel moved: events (or entries) received, lost in the kernel, too short."""

    program: str
    channel: str
    received: int = 0
    lost: int = 0
    short: int = 0
    short_means: str = "events shorter than the event struct"  # what `short` counts here


class Reader(Protocol):
    """One channel being read (see the module docstring for the order of calls)."""

    def start(self) -> None: ...                 # the objects are loaded and attached
    def fds(self) -> Sequence[int]: ...          # readable when there is something to read
    def due(self) -> float | None: ...           # monotonic time of the next timed read
    def read(self, now: float) -> None: ...      # move what is there (or due)
    def final(self) -> None: ...                 # after detach: the last of it
    def stats(self) -> ChannelStats: ...
    def close(self) -> None: ...


@dataclass(kw_only=True)
class ChannelContext:
    """What a kind gets to open one channel of one loaded object."""

    program: str                          # the kernel program (object) it belongs to
    name: str                             # the channel: a map of that object
    spec: ChannelSpec | None              # None when run from a digest, without a manifest
    obj: BpfObject                        # opened, not yet loaded
    info: ObjectInfo                      # its ELF/BTF facts
    pipeline: Pipeline                    # where events and records go
    enums: EnumSource | None = None       # enum names from this node's BTF
    options: Mapping[str, Any] = field(default_factory=dict)  # the kind's parsed keys

    def decoder(self) -> EventDecoder:
        """The channel's event decoding: declared fields, else BTF with decoders and unions."""
        spec = self.spec
        if spec is None:
            return self.info.decoder(self.name, enums=self.enums)
        return self.info.decoder(self.name, spec.event, spec.fields, overrides=spec.decoders,
                                 unions=spec.unions, enums=self.enums)


class Periodic:
    """What a reader read on a timer (not on fds) shares: ``fds``, ``due`` and ``read`` call
    ``_read()`` every ``interval`` s from ``_begin()``, skipping reads missed while the loop was
    busy rather than bunching them up. A subclass sets ``interval`` (None: never by time) and
    defines ``_read``; what happens at stop (``final``) is its own."""

    interval: float | None = None
    next: float | None = None

    def _begin(self) -> None:
        self.next = time.monotonic() + self.interval if self.interval else None

    def fds(self) -> Sequence[int]:
        return []

    def due(self) -> float | None:
        return self.next

    def read(self, now: float) -> None:
        if self.next is None or now < self.next:
            return
        self.next += self.interval
        if self.next <= now:  # a slow sink or a stalled loop: skip the missed reads
            self.next = now + self.interval
        self._read()

    def _read(self) -> None:
        raise NotImplementedError


def _no_options(doc: YamlDoc, values: Mapping[str, Node], at: str) -> dict[str, Any]:
    return {}


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputKind:
    """A registered output kind."""

    type: str                                  # the manifest's `type:`
    summary: str                               # one line for errors and docs
    map_types: tuple[str, ...]                 # BPF map types it reads (loader.kernel.btf names)
    open: Callable[[ChannelContext], Reader]
    options: tuple[str, ...] = ()              # manifest keys it takes besides COMMON_KEYS
    parse: Callable[[YamlDoc, Mapping[str, Node], str], dict[str, Any]] = _no_options
    events: bool = True                        # processors (`events:`) may consume it


_KINDS: Registry[OutputKind] = Registry(__name__, lambda kind: kind.type, "output kind")
register = _KINDS.register


def output_kinds() -> dict[str, OutputKind]:
    """Every kind, by manifest type (each module of this package registers its own)."""
    return _KINDS.all()
