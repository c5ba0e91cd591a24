"""Storage settings: which sinks get records, globally and per manifest route.

``load_storage`` layers three sources, later ones winning:

1. defaults: stdout on; file, Kafka and TSDB off. The file sink writes
   ``<home>/events/events.jsonl`` (a folder of its own: per-event files land beside it), rotating
   at 100 MiB, keeping 5, fsync per batch; the TSDB is ``<home>/tsdb/events.sqlite`` (as
   ``tsdb.default_path``), keeping 7 days and at most 1 GiB.
2. a YAML config file: ``config``, else ``$BPFDEPOT_CONFIG`` (which must exist), else
   ``<home>/config.yaml`` when it exists. Relative paths in it resolve against its folder::

       storage:
         stdout: false
         file: {enabled: true, path: /var/log/bpfdepot/events.jsonl, max_bytes: 100MiB, keep: 5,
                fsync: batch}
         kafka: {enabled: true, bootstrap: 127.0.0.1:9092, topic: "bpfdepot.{program}.{channel}",
                 acks: all, retries: 5, delivery_timeout: 30s, connect_timeout: 5s}
         tsdb: {enabled: true, path: /var/lib/bpfdepot/events.sqlite, retention: 7d,
                max_bytes: 1GiB}

   ``file: true`` is short for ``file: {enabled: true}``; a mapping turns its sink on unless it says
   ``enabled: false``. Sizes are bytes or 512KiB, 100MiB, 1GiB (powers of 1024), 10MB (of 1000);
   durations are seconds or 30s, 10m, 12h, 7d; tsdb ``retention`` and ``max_bytes`` may be null.
3. the environment (relative paths against the working directory): ``BPFDEPOT_FILE=PATH``,
   ``BPFDEPOT_KAFKA=HOST:PORT``, ``BPFDEPOT_TSDB=PATH`` set and turn on their sink, ``1`` turns it
   on as configured, ``0`` off; ``BPFDEPOT_STDOUT=0|1``; ``BPFDEPOT_KAFKA_TOPIC=TEMPLATE``.

``effective`` then applies a route's ``storage:`` (``StorageSpec``) on top, for one stream.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast, get_args

from yaml.nodes import MappingNode, Node, ScalarNode

from loader.errors import BpfDepotError
from loader.model.manifest import StorageSpec
from loader.sinks.kafka import KafkaSinkError, topic_name
from loader.sinks.tsdb import MIN_BYTES as TSDB_MIN_BYTES
from loader.model.yamldoc import TAG, YamlDoc, kind_of, line_of, read_bounded

Fsync = Literal["never", "batch"]
Acks = Literal["all", "1", "0"]

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_SECONDS = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AMOUNT_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
_BOOTSTRAP_RE = re.compile(r"[^\s,]+(?:,[^\s,]+)*")  # HOST:PORT[,HOST:PORT...]


class StorageConfigError(BpfDepotError):
    """The storage config file or environment, or a route's storage overrides, cannot be used."""

    exit_code = 2  # a configuration mistake, like ManifestError


@dataclass(frozen=True, kw_only=True, slots=True)
class StdoutSettings:
    enabled: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class FileSettings:
    enabled: bool
    path: Path  # absolute; per-event files go into its folder
    max_bytes: int  # the live file rotates before passing this
    keep: int  # rotated files kept beside it
    fsync: Fsync


@dataclass(frozen=True, kw_only=True, slots=True)
class KafkaSettings:
    enabled: bool
    bootstrap: str  # HOST:PORT[,HOST:PORT...]; "" = none configured
    topic: str  # template: {program}, {channel}, {stream}
    acks: Acks
    retries: int
    delivery_timeout_s: float
    connect_timeout_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class TsdbSettings:
    enabled: bool
    path: Path
    retention_s: float | None  # None: no age limit
    max_bytes: int | None  # None: no size limit


@dataclass(frozen=True, kw_only=True, slots=True)
class StorageSettings:
    """The global sink settings, parsed once and passed in."""

    stdout: StdoutSettings
    file: FileSettings
    kafka: KafkaSettings
    tsdb: TsdbSettings
    config: Path | None = None  # the config file read, if any


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteSinks:
    """Where the records of one stream go, after the route's overrides."""

    stdout: bool
    file: Path | None
    kafka_topic: str | None  # the topic name, template filled
    tsdb: bool


def defaults(home: Path) -> StorageSettings:
    """The settings before any config file or environment variable."""
    return StorageSettings(
        stdout=StdoutSettings(enabled=True),
        file=FileSettings(
            enabled=False, path=home / "events" / "events.jsonl", max_bytes=100 * 2**20, keep=5,
            fsync="batch",
        ),
        kafka=KafkaSettings(
            enabled=False, bootstrap="", topic="bpfdepot.{program}.{channel}", acks="all",
            retries=5, delivery_timeout_s=30.0, connect_timeout_s=5.0,
        ),
        # The same path as loader.sinks.tsdb.default_path, which `bpfdepot query` reads.
        tsdb=TsdbSettings(
            enabled=False, path=home / "tsdb" / "events.sqlite", retention_s=7 * 86400.0,
            max_bytes=2**30,
        ),
    )  # fmt: skip


def load_storage(
    env: Mapping[str, str], home: Path, config: Path | None = None, *, cwd: Path | None = None
) -> StorageSettings:
    """Defaults, then the config file, then the environment (see the module docstring)."""
    base = cwd or Path.cwd()
    if config is not None:
        path, named_by = base / config, "config file"
    elif env.get("BPFDEPOT_CONFIG"):
        path, named_by = base / env["BPFDEPOT_CONFIG"], "BPFDEPOT_CONFIG"
    else:
        path, named_by = home / "config.yaml", ""  # read only if it exists
    if named_by and not path.is_file():
        raise StorageConfigError(
            f"{named_by} {path} does not exist",
            hint=f"check the path; without BPFDEPOT_CONFIG, {home / 'config.yaml'} is read "
            "if it exists" if named_by == "BPFDEPOT_CONFIG" else "check the path",
        )  # fmt: skip
    settings, kafka_line = defaults(home), None
    if path.is_file():
        settings, kafka_line = _parse_config(path, settings)
    settings = _apply_env(env, settings, base)
    if settings.kafka.enabled and not settings.kafka.bootstrap:
        where = f"{path}:{kafka_line}: " if kafka_line else ""
        if env.get("BPFDEPOT_KAFKA") == "1":
            where = "BPFDEPOT_KAFKA=1: "
        raise StorageConfigError(
            f"{where}the Kafka sink is on but no bootstrap server is set "
            "(storage.kafka.bootstrap)",
            hint=f"set BPFDEPOT_KAFKA=HOST:PORT, or bootstrap: HOST:PORT under storage.kafka in "
            f"{path}; or turn Kafka off",
        )  # fmt: skip
    return settings


def effective(
    settings: StorageSettings, spec: StorageSpec | None, *, program: str, channel: str,
    route: str | None,
) -> RouteSinks:  # fmt: skip
    """The sinks of stream ``<program>.<channel>``: the route's overrides win over ``settings``.

    ``route`` names the manifest route in errors, e.g. "manifest.yaml:23
    (spec.channels.x.events[0])"; None for a channel without routes.
    """
    spec = spec or StorageSpec()
    stream = f"{program}.{channel}"
    label = f"route {route}" if route else f"stream {stream}"
    file = None
    if settings.file.enabled if spec.file is None else spec.file:
        folder = settings.file.path.parent
        file = folder / spec.file_name if spec.file_name else settings.file.path
    topic = None
    if settings.kafka.enabled if spec.kafka is None else spec.kafka:
        if not settings.kafka.bootstrap:
            where = f"storage.kafka.bootstrap in {settings.config}" if settings.config else (
                "storage.kafka.bootstrap in a config file ($BPFDEPOT_CONFIG or <home>/config.yaml)")
            raise StorageConfigError(
                f"{label} sends records to Kafka, but no Kafka bootstrap server is configured",
                hint=f"set BPFDEPOT_KAFKA=HOST:PORT or {where}; or write kafka: false in the route",
            )
        try:
            topic = topic_name(spec.kafka_topic or settings.kafka.topic, stream)
        except KafkaSinkError as err:
            raise StorageConfigError(f"{label}: {err.message}", hint=err.hint) from None
    tsdb = settings.tsdb.enabled if spec.tsdb is None else spec.tsdb
    sinks = RouteSinks(stdout=settings.stdout.enabled, file=file, kafka_topic=topic, tsdb=tsdb)
    if not (sinks.stdout or sinks.file or sinks.kafka_topic or sinks.tsdb):
        raise StorageConfigError(
            f"{label} sends its records nowhere: stdout, file, Kafka and TSDB are all off",
            hint="turn a sink on: storage: {file: true} (or kafka, tsdb) in the route, or "
            "BPFDEPOT_STDOUT=1, BPFDEPOT_FILE=PATH, BPFDEPOT_TSDB=1 or BPFDEPOT_KAFKA=HOST:PORT",
        )  # fmt: skip
    return sinks


def describe(settings: StorageSettings) -> list[str]:
    """One line per enabled sink, for the start message."""
    lines = ["stdout"] if settings.stdout.enabled else []
    file, kafka, tsdb = settings.file, settings.kafka, settings.tsdb
    if file.enabled:
        lines.append(
            f"file {file.path} (rotates at {_size_text(file.max_bytes)}, keeps {file.keep}, "
            f"fsync {file.fsync})"
        )
    if kafka.enabled:
        lines.append(f"kafka {kafka.bootstrap}, topic {kafka.topic} (acks {kafka.acks})")
    if tsdb.enabled:
        retention = "none" if tsdb.retention_s is None else _duration_text(tsdb.retention_s)
        size = "none" if tsdb.max_bytes is None else _size_text(tsdb.max_bytes)
        lines.append(f"tsdb {tsdb.path} (retention {retention}, max {size})")
    return lines


# -- the config file ---------------------------------------------------------------------------
# Parsers take (doc, value node, key, where) and return the value of a settings field.
_Parser = Callable[[YamlDoc, Node, str, str], Any]


def _parse_config(path: Path, settings: StorageSettings) -> tuple[StorageSettings, int | None]:
    """The settings with the config file's applied, and the line that turned Kafka on."""
    raw = read_bounded(path, what="config file", error_class=StorageConfigError,
                       hint="make it readable")
    settings = replace(settings, config=path)
    if all(not line.strip() or line.lstrip().startswith(b"#") for line in raw.splitlines()):
        return settings, None  # empty: all defaults
    # As strict as a manifest, but its errors are ours.
    doc = YamlDoc(
        display=str(path), root=path.resolve().parent, error_class=StorageConfigError,
        what="config file",
    )  # fmt: skip
    node = doc.compose(raw, empty_hint="start it with 'storage:'")
    if not isinstance(node, MappingNode):
        raise doc.error(node, f"the config file must be a mapping, got {kind_of(node)}",
                        hint="start it with 'storage:'")  # fmt: skip
    top = doc.fields(node, "", required=(), optional=("storage",))
    if "storage" not in top:
        return settings, None
    parts = doc.fields(top["storage"], "storage", required=(), optional=tuple(_OPTIONS))
    for name, part in parts.items():
        sink = _section(doc, name, part, getattr(settings, name))
        settings = replace(settings, **{name: sink})
    kafka_on = "kafka" in parts and settings.kafka.enabled
    return settings, line_of(parts["kafka"]) if kafka_on else None


def _section(doc: YamlDoc, name: str, node: Node, current: Any) -> Any:
    """``name: true|false``, or a mapping of its options (on unless it says ``enabled: false``)."""
    if isinstance(node, ScalarNode) and node.tag == TAG + "bool":
        return replace(current, enabled=doc.boolean(node, name, "storage"))
    options, at = _OPTIONS[name], f"storage.{name}"
    if not isinstance(node, MappingNode):
        example = "".join(f", {key}: ..." for key in list(options)[:2])
        raise doc.error(
            node, f"{name!r} in storage must be true, false or a mapping, got {kind_of(node)}",
            hint=f"write {name}: true, or {name}: {{enabled: true{example}}}",
        )  # fmt: skip
    found = doc.fields(node, at, required=(), optional=("enabled", *options))
    enabled = doc.boolean(found.pop("enabled"), "enabled", at) if "enabled" in found else True
    changes = {}
    for key, value in found.items():
        field, parse = options[key]
        changes[field] = parse(doc, value, key, at)
    return replace(current, enabled=enabled, **changes)


def _scalar(doc: YamlDoc, node: Node, key: str, at: str, example: str) -> str | None:
    """A number or string as written; None for null."""
    if isinstance(node, ScalarNode) and node.tag == TAG + "null":
        return None
    if isinstance(node, ScalarNode) and node.tag in (TAG + "int", TAG + "float", TAG + "str"):
        return str(node.value).strip()
    raise doc.error(node, f"{key!r} in {at} must be a value like {example}, got {kind_of(node)}",
                    hint=f"write e.g. {key}: {example}")  # fmt: skip


def _amount(units: Mapping[str, float], minimum: float, *, none: bool = False) -> _Parser:
    """A parser of sizes (``_UNITS``, to bytes) or durations (``_SECONDS``, to seconds)."""
    sizes = units is _UNITS
    what = "a size like 512KiB, 100MiB, 1GiB or 10MB" if sizes else "a duration like 30s or 7d"
    hint = ("KiB, MiB, GiB are powers of 1024, KB, MB, GB of 1000; no unit: bytes" if sizes
            else "units: ms, s, m, h, d, w; no unit: seconds")  # fmt: skip
    hint += "; null: no limit" if none else ""

    def parse(doc: YamlDoc, node: Node, key: str, at: str) -> float | None:
        text = _scalar(doc, node, key, at, "100MiB" if sizes else "30s")
        if text is None and none:
            return None
        match = _AMOUNT_RE.fullmatch(text or "")
        factor = units.get(match.group(2).lower() or ("b" if sizes else "")) if match else None
        if match is None or factor is None:
            got = "nothing" if text is None else repr(text)
            raise doc.error(node, f"{key!r} in {at} must be {what}, got {got}", hint=hint)
        value = float(match.group(1)) * factor
        if value < minimum:
            low = _size_text(int(minimum)) if sizes else f"{minimum:g}s"
            raise doc.error(node, f"{key!r} in {at} is {text}, below the minimum {low}",
                            hint=f"give at least {low}" + ("; null: no limit" if none else ""))
        return int(value) if sizes else value

    return parse


def _count(doc: YamlDoc, node: Node, key: str, at: str) -> int:
    text = _scalar(doc, node, key, at, "5")
    if text is None or not text.isdigit():
        raise doc.error(node, f"{key!r} in {at} must be a whole number, 0 or more, got {text!r}",
                        hint=f"e.g. {key}: 5")  # fmt: skip
    return int(text)


def _acks(doc: YamlDoc, node: Node, key: str, at: str) -> Acks:
    text = _scalar(doc, node, key, at, "all")
    if text not in ("all", "-1", "1", "0"):
        raise doc.error(node, f"{key!r} in {at} must be all, 1 or 0, got {text!r}",
                        hint="all: every in-sync replica confirms (safest); 1: the leader; 0: none")
    return "all" if text == "-1" else cast(Acks, text)


def _bootstrap(doc: YamlDoc, node: Node, key: str, at: str) -> str:
    text = doc.string(node, key, at)
    if not _BOOTSTRAP_RE.fullmatch(text):
        raise doc.error(node, f"{key!r} in {at} must be HOST:PORT[,HOST:PORT...], got {text!r}",
                        hint=f"e.g. {key}: 127.0.0.1:9092")  # fmt: skip
    return text


def _topic(doc: YamlDoc, node: Node, key: str, at: str) -> str:
    template = doc.string(node, key, at)
    try:
        topic_name(template, "program.channel")  # fill it once, so that a bad template fails here
    except KafkaSinkError as err:
        raise doc.error(
            node, f"{key!r} in {at}: {template!r} does not make a valid Kafka topic name",
            hint=err.hint,
        ) from None
    return template


def _path(doc: YamlDoc, node: Node, key: str, at: str) -> Path:
    return doc.root / doc.string(node, key, at)  # relative to the config's folder; absolute wins


def _fsync(doc: YamlDoc, node: Node, key: str, at: str) -> Fsync:
    return cast(Fsync, doc.choice(node, key, at, get_args(Fsync)))


# Each sink's options: config key -> (settings field, parser).
_OPTIONS: dict[str, dict[str, tuple[str, _Parser]]] = {
    "stdout": {},
    "file": {
        "path": ("path", _path), "max_bytes": ("max_bytes", _amount(_UNITS, 1)),
        "keep": ("keep", _count), "fsync": ("fsync", _fsync),
    },
    "kafka": {
        "bootstrap": ("bootstrap", _bootstrap), "topic": ("topic", _topic),
        "acks": ("acks", _acks), "retries": ("retries", _count),
        "delivery_timeout": ("delivery_timeout_s", _amount(_SECONDS, 0.001)),
        "connect_timeout": ("connect_timeout_s", _amount(_SECONDS, 0.001)),
    },
    "tsdb": {
        "path": ("path", _path), "retention": ("retention_s", _amount(_SECONDS, 1, none=True)),
        "max_bytes": ("max_bytes", _amount(_UNITS, TSDB_MIN_BYTES, none=True)),
    },
}  # fmt: skip


# -- the environment --------------------------------------------------------------------------


def _apply_env(env: Mapping[str, str], s: StorageSettings, cwd: Path) -> StorageSettings:
    if stdout := env.get("BPFDEPOT_STDOUT"):
        if stdout not in ("0", "1"):
            raise StorageConfigError(f"BPFDEPOT_STDOUT={stdout!r} is not 0 or 1",
                                     hint="1 prints records on stdout, 0 does not")  # fmt: skip
        s = replace(s, stdout=StdoutSettings(enabled=stdout == "1"))
    if file := env.get("BPFDEPOT_FILE"):
        path = s.file.path if file in ("0", "1") else cwd / file
        s = replace(s, file=replace(s.file, enabled=file != "0", path=path))
    if tsdb := env.get("BPFDEPOT_TSDB"):
        path = s.tsdb.path if tsdb in ("0", "1") else cwd / tsdb
        s = replace(s, tsdb=replace(s.tsdb, enabled=tsdb != "0", path=path))
    if kafka := env.get("BPFDEPOT_KAFKA"):
        if kafka not in ("0", "1") and not _BOOTSTRAP_RE.fullmatch(kafka):
            raise StorageConfigError(f"BPFDEPOT_KAFKA={kafka!r} is not HOST:PORT[,HOST:PORT...]",
                                     hint="e.g. BPFDEPOT_KAFKA=127.0.0.1:9092 (1: on, 0: off)")
        bootstrap = s.kafka.bootstrap if kafka in ("0", "1") else kafka
        s = replace(s, kafka=replace(s.kafka, enabled=kafka != "0", bootstrap=bootstrap))
    if topic := env.get("BPFDEPOT_KAFKA_TOPIC"):
        try:
            topic_name(topic, "program.channel")
        except KafkaSinkError as err:
            raise StorageConfigError(
                f"BPFDEPOT_KAFKA_TOPIC={topic!r} does not make a valid Kafka topic name",
                hint=err.hint,
            ) from None
        s = replace(s, kafka=replace(s.kafka, topic=topic))
    return s


def _size_text(size: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


def _duration_text(seconds: float) -> str:
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            return f"{seconds / factor:g}{unit}"
    return f"{seconds:g}s"
