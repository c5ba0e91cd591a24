"""Sinks: where records go (stdout, JSON-lines files, Kafka, the embedded TSDB)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


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
