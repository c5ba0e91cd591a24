"""Opens each sink once, the first time a stream needs it: the global storage settings (config
file, environment, command line) combined with each route's ``storage:`` overrides."""

from __future__ import annotations

from loader.model.manifest import EventRoute
from loader.model.storage import StorageSettings, effective
from loader.sinks import Sink, sink_kinds


class SinkSet:
    """The sinks of one run, by kind and target; ``open`` is the pipeline's ``open_sinks``."""

    def __init__(self, storage: StorageSettings) -> None:
        self.storage = storage
        self.opened: dict[tuple[str, str], Sink] = {}

    def open(self, stream: str, route: EventRoute | None, program: str, channel: str) -> list[Sink]:
        where = f"at line {route.line} of the manifest" if route is not None else None
        want = effective(self.storage, route.storage if route is not None else None,
                         program=program, channel=channel, route=where)
        out = []
        for kind in sink_kinds():
            target = kind.target(want)
            if target is None:
                continue
            if (kind.name, target) not in self.opened:
                first = not any(name == kind.name for name, _ in self.opened)
                self.opened[(kind.name, target)] = kind.open(self.storage, target, first)
            out.append(self.opened[(kind.name, target)])
        return out
