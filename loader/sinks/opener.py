"""Opens each sink once, the first time a stream needs it: the global storage settings (config
file, environment, command line) combined with each route's ``storage:`` overrides."""

from __future__ import annotations

from pathlib import Path

from loader.model.manifest import EventRoute
from loader.model.storage import StorageSettings, effective
from loader.sinks import Sink


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
        if want.stdout:
            out.append(self._get("stdout", "", self._stdout))
        if want.file is not None:
            out.append(self._get("file", str(want.file), lambda: self._file(want.file)))
        if want.kafka_topic is not None:
            out.append(self._get("kafka", want.kafka_topic, lambda: self._kafka(want.kafka_topic)))
        if want.tsdb:
            out.append(self._get("tsdb", "", self._tsdb))
        return out

    def _get(self, kind: str, which: str, make) -> Sink:
        if (kind, which) not in self.opened:
            self.opened[(kind, which)] = make()
        return self.opened[(kind, which)]

    def _stdout(self) -> Sink:
        from loader.sinks.files import StdoutSink

        return StdoutSink()

    def _file(self, path: Path) -> Sink:
        from loader.sinks.files import FileSink

        f = self.storage.file
        name = "file" if path == f.path else f"file:{path.name}"
        return FileSink(path, max_bytes=f.max_bytes, keep=f.keep, fsync=f.fsync, name=name)

    def _kafka(self, topic: str) -> Sink:
        from loader.sinks.kafka import KafkaSink

        k = self.storage.kafka
        default = not any(kind == "kafka" for kind, _ in self.opened)
        return KafkaSink(k.bootstrap, topic_template=topic, acks=k.acks, retries=k.retries,
                         delivery_timeout_s=k.delivery_timeout_s, connect_timeout_s=k.connect_timeout_s,
                         name="kafka" if default else f"kafka:{topic}")

    def _tsdb(self) -> Sink:
        from loader.sinks.tsdb import TsdbSink

        t = self.storage.tsdb
        t.path.parent.mkdir(parents=True, exist_ok=True)
        return TsdbSink(t.path, retention_s=t.retention_s, max_bytes=t.max_bytes)
