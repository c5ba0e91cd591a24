"""Sinks: where records go. Each kind registers itself from its module (adding one is adding a
module and its settings section in loader/model/storage.py):

    files.py   stdout, and JSON-lines files rotated by size
    kafka.py   Kafka topics, with confirmed delivery
    tsdb.py    the embedded time-series store (SQLite)

``loader/sinks/opener.py`` opens, per stream, the sinks its route wants, once per target.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

from loader.registry import Registry

if TYPE_CHECKING:
    from loader.model.storage import RouteSinks, StorageSettings


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes | None   # the `hash` field's value (Kafka message key), or None
    value: bytes        # one JSON object, UTF-8, no trailing newline


@dataclass(slots=True, kw_only=True)
class SinkStats:
    delivered: int = 0
    failed: int = 0
    pending: int = 0


class Sink(Protocol):
    name: str

    def write(self, stream: str, records: Sequence[Record]) -> None: ...   # stream = "<program>.<channel>"

    def flush(self, timeout_s: float = 10.0) -> SinkStats: ...

    def close(self) -> SinkStats: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkKind:
    """A registered sink kind."""

    name: str
    order: int                                            # where it stands among a stream's sinks
    target: Callable[[RouteSinks], str | None]            # the instance a route wants, None: none
    open: Callable[[StorageSettings, str, bool], Sink]    # (settings, target, first of its kind)


_KINDS: Registry[SinkKind] = Registry(__name__, lambda kind: kind.name, "sink kind")
register = _KINDS.register


def sink_kinds() -> list[SinkKind]:
    """Every sink kind, in the order a stream's sinks are opened."""
    return sorted(_KINDS.all().values(), key=lambda kind: kind.order)


class LogThrottle:
    """At most one line per kind of failure per ``interval_s``: a dead broker or a full disk
    fails every batch, and a line per batch buries everything else. Repeats are counted and told
    with the next line of their kind, or by ``summary()`` at close; the sinks' own counts stay
    exact whatever is printed."""

    def __init__(self, logger: logging.Logger, *, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.interval_s, self.clock = logger, interval_s, clock
        self._kinds: dict[str, list] = {}  # kind -> [printed at, repeats since, last text, level]

    def log(self, level: int, kind: str, text: str) -> None:
        now = self.clock()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.interval_s:
            seen[1] += 1
            seen[2] = text
            return
        if seen is not None and seen[1]:
            text += f" (and {seen[1]} more like it in the last {now - seen[0]:.0f} s)"
        self._kinds[kind] = [now, 0, text, level]
        self.logger.log(level, "%s", text)

    def summary(self) -> None:
        """Tell the repeats not yet told (at close)."""
        for seen in self._kinds.values():
            if seen[1]:
                self.logger.log(seen[3], "%s (%d more like it since the line above)", seen[2], seen[1])
                seen[1] = 0
