"""load_storage / effective / describe, and the manifest's per-event storage forms.

Errors are asserted by their text and line, as for manifests.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from loader.errors import ManifestError
from loader.model.manifest import StorageSpec, parse_manifest
from loader.model.settings import Settings
from loader.sinks.tsdb import default_path
from loader.model.storage import (
    FileSettings,
    KafkaSettings,
    RouteSinks,
    StdoutSettings,
    StorageConfigError,
    StorageSettings,
    TsdbSettings,
    defaults,
    describe,
    effective,
    load_storage,
)

# The config file format of the brief (line numbers matter below).
EXAMPLE = """\
storage:
  stdout: false
  file: {enabled: true, path: /var/log/bpfdepot/events.jsonl, max_bytes: 100MiB, keep: 5, fsync: batch}
  kafka: {enabled: true, bootstrap: 127.0.0.1:9092, topic: "bpfdepot.{program}.{channel}"}
  tsdb: {enabled: true, path: /var/lib/bpfdepot/events.sqlite, retention: 7d, max_bytes: 1GiB}
"""


def load(tmp_path: Path, text: str | None = None, **env: str) -> StorageSettings:
    """Settings from ``text`` as <home>/config.yaml (none if None) and ``env``; cwd is tmp_path."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    if text is None:
        (home / "config.yaml").unlink(missing_ok=True)
    else:
        (home / "config.yaml").write_text(text)
    return load_storage(env, home, cwd=tmp_path)


def fails(tmp_path: Path, text: str | None = None, **env: str) -> StorageConfigError:
    with pytest.raises(StorageConfigError) as caught:
        load(tmp_path, text, **env)
    assert caught.value.exit_code == 2
    return caught.value


def config_path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "config.yaml"


# -- defaults and the config file -----------------------------------------------------------------


def test_defaults_without_config_or_environment(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = load(tmp_path)
    assert settings == defaults(home)
    assert settings == StorageSettings(
        stdout=StdoutSettings(enabled=True),
        file=FileSettings(
            enabled=False, path=home / "events" / "events.jsonl", max_bytes=100 * 2**20, keep=5,
            fsync="batch",
        ),
        kafka=KafkaSettings(
            enabled=False, bootstrap="", topic="bpfdepot.{program}.{channel}", acks="all",
            retries=5, delivery_timeout_s=30.0, connect_timeout_s=5.0,
        ),
        tsdb=TsdbSettings(
            enabled=False, path=home / "tsdb" / "events.sqlite", retention_s=7 * 86400.0,
            max_bytes=2**30,
        ),
        config=None,
    )  # fmt: skip
    # `bpfdepot query` reads default_path: the TSDB sink must write where it reads.
    assert settings.tsdb.path == default_path(Settings(home=home, kernel_btf=Path("/btf")))
    assert describe(settings) == ["stdout"]


def test_example_config(tmp_path: Path) -> None:
    settings = load(tmp_path, EXAMPLE)
    assert settings == StorageSettings(
        stdout=StdoutSettings(enabled=False),
        file=FileSettings(
            enabled=True, path=Path("/var/log/bpfdepot/events.jsonl"), max_bytes=100 * 2**20,
            keep=5, fsync="batch",
        ),
        kafka=KafkaSettings(
            enabled=True, bootstrap="127.0.0.1:9092", topic="bpfdepot.{program}.{channel}",
            acks="all", retries=5, delivery_timeout_s=30.0, connect_timeout_s=5.0,
        ),
        tsdb=TsdbSettings(
            enabled=True, path=Path("/var/lib/bpfdepot/events.sqlite"), retention_s=7 * 86400.0,
            max_bytes=2**30,
        ),
        config=config_path(tmp_path),
    )  # fmt: skip
    assert describe(settings) == [
        "file /var/log/bpfdepot/events.jsonl (rotates at 100 MiB, keeps 5, fsync batch)",
        "kafka 127.0.0.1:9092, topic bpfdepot.{program}.{channel} (acks all)",
        "tsdb /var/lib/bpfdepot/events.sqlite (retention 7d, max 1 GiB)",
    ]


def test_shorthand_mapping_without_enabled_and_enabled_false(tmp_path: Path) -> None:
    settings = load(tmp_path, """\
storage:
  stdout: {enabled: false}
  file: true
  kafka: {bootstrap: "k1:9092,k2:9092", acks: 1, retries: 0, delivery_timeout: 2m,
          connect_timeout: 500ms}
  tsdb: {enabled: false, path: db/events.sqlite, retention: null, max_bytes: ~}
""")  # fmt: skip
    home = tmp_path / "home"
    assert settings.stdout.enabled is False
    assert settings.file == replace(defaults(home).file, enabled=True)
    assert settings.kafka == KafkaSettings(
        enabled=True, bootstrap="k1:9092,k2:9092", topic="bpfdepot.{program}.{channel}", acks="1",
        retries=0, delivery_timeout_s=120.0, connect_timeout_s=0.5,
    )  # fmt: skip
    # Off, but its options are kept (BPFDEPOT_TSDB=1 turns it on as configured); relative paths
    # resolve against the config file's folder.
    assert settings.tsdb == TsdbSettings(
        enabled=False, path=home.resolve() / "db" / "events.sqlite", retention_s=None,
        max_bytes=None,
    )
    assert load(tmp_path, "storage:\n  kafka: false\n  file: false\n").kafka.enabled is False
    on = load(tmp_path, "storage:\n  tsdb: {retention: null}\n", BPFDEPOT_STDOUT="0")
    assert describe(on) == [f"tsdb {home / 'tsdb' / 'events.sqlite'} (retention none, max 1 GiB)"]


@pytest.mark.parametrize(
    ("written", "size"),
    [("1048576", 2**20), ("512KiB", 512 * 2**10), ("100MiB", 100 * 2**20), ("1GiB", 2**30),
     ("10MB", 10**7), ("2 kb", 2000), ("1.5GiB", 3 * 2**29), ("7b", 7)],
)  # fmt: skip
def test_sizes(tmp_path: Path, written: str, size: int) -> None:
    settings = load(tmp_path, f"storage:\n  file: {{max_bytes: {written}}}\n")
    assert settings.file.max_bytes == size


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("90", 90.0), ("2.5", 2.5), ("30s", 30.0), ("10m", 600.0), ("12h", 43200.0),
     ("7d", 604800.0), ("1w", 604800.0), ("250ms", 0.25)],
)  # fmt: skip
def test_durations(tmp_path: Path, written: str, seconds: float) -> None:
    text = f"storage:\n  kafka: {{bootstrap: k:1, connect_timeout: {written}}}\n"
    assert load(tmp_path, text).kafka.connect_timeout_s == seconds


def test_empty_config_keeps_the_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path, "# nothing here yet\n\n")
    assert settings == replace(defaults(tmp_path / "home"), config=config_path(tmp_path))
    assert load(tmp_path, "{}\n").file.enabled is False


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ("storage:\n  fle: true\n", "2: unknown key 'fle' in storage", "did you mean 'file'?"),
        ("storage:\n  file: {max_byte: 1GiB}\n", "2: unknown key 'max_byte' in storage.file",
         "did you mean 'max_bytes'?"),
        ("storge: {}\n", "1: unknown key 'storge' at the top level", "did you mean 'storage'?"),
        ("storage:\n  file:\n    keep: five\n",
         "3: 'keep' in storage.file must be a whole number, 0 or more, got 'five'", "e.g. keep: 5"),
        ("storage:\n  file:\n    keep: [5]\n",
         "3: 'keep' in storage.file must be a value like 5, got a list", "write e.g. keep: 5"),
        ("storage:\n  file: {max_bytes: 10M}\n",
         "2: 'max_bytes' in storage.file must be a size like 512KiB, 100MiB, 1GiB or 10MB, "
         "got '10M'", "KiB, MiB, GiB are powers of 1024, KB, MB, GB of 1000; no unit: bytes"),
        ("storage:\n  file: {max_bytes: 0}\n",
         "2: 'max_bytes' in storage.file is 0, below the minimum 1 bytes", "give at least 1 bytes"),
        ("storage:\n  file: {max_bytes: null}\n",
         "2: 'max_bytes' in storage.file must be a size like 512KiB, 100MiB, 1GiB or 10MB, "
         "got nothing", "KiB, MiB, GiB are powers of 1024, KB, MB, GB of 1000; no unit: bytes"),
        ("storage:\n  tsdb:\n    max_bytes: 100KiB\n",
         "3: 'max_bytes' in storage.tsdb is 100KiB, below the minimum 256 KiB",
         "give at least 256 KiB; null: no limit"),
        ("storage:\n  tsdb: {retention: 7days}\n",
         "2: 'retention' in storage.tsdb must be a duration like 30s or 7d, got '7days'",
         "units: ms, s, m, h, d, w; no unit: seconds; null: no limit"),
        ("storage:\n  tsdb: {retention: true}\n",
         "2: 'retention' in storage.tsdb must be a value like 30s, got a boolean",
         "write e.g. retention: 30s"),
        ("storage:\n  file: {fsync: always}\n",
         "2: unknown fsync 'always' in storage.file; expected one of: never, batch",
         "allowed: never, batch"),
        ("storage:\n  file: {path: 5}\n",
         "2: 'path' in storage.file must be a string, got a number", 'quote it: path: "5"'),
        ("storage:\n  kafka: {bootstrap: 'a b:1'}\n",
         "2: 'bootstrap' in storage.kafka must be HOST:PORT[,HOST:PORT...], got 'a b:1'",
         "e.g. bootstrap: 127.0.0.1:9092"),
        ("storage:\n  kafka: {bootstrap: k:1, acks: 2}\n",
         "2: 'acks' in storage.kafka must be all, 1 or 0, got '2'",
         "all: every in-sync replica confirms (safest); 1: the leader; 0: none"),
        ("storage:\n  kafka: {bootstrap: k:1, topic: 'bpf/{program}'}\n",
         "2: 'topic' in storage.kafka: 'bpf/{program}' does not make a valid Kafka topic name",
         "topic names hold only letters, digits, '.', '_' and '-' (at most 249); "
         "change the topic template or the program/channel name"),
        ("storage:\n  kafka: {bootstrap: k:1, topic: '{prog}'}\n",
         "2: 'topic' in storage.kafka: '{prog}' does not make a valid Kafka topic name",
         "use only the fields {program}, {channel} and {stream}"),
        ("storage:\n  file: 5\n",
         "2: 'file' in storage must be true, false or a mapping, got a number",
         "write file: true, or file: {enabled: true, path: ..., max_bytes: ...}"),
        ("storage:\n  stdout: {enabled: yes please}\n",
         "2: 'enabled' in storage.stdout must be true or false, got a string",
         "write enabled: true or enabled: false, unquoted"),
        ("storage:\n  file: true\n  file: false\n",
         "3: duplicate key 'file' in storage (first at line 2)",
         "keep one of them: YAML would silently use only the last"),
        ("storage: [file]\n", "1: 'storage' must be a mapping, got a list",
         "write it as indented 'key: value' lines"),
        ("- storage\n", "1: the config file must be a mapping, got a list",
         "start it with 'storage:'"),
        ("storage:\n  file: {keep: 1\n",
         "3: not valid YAML: expected ',' or '}', but got '<stream end>'",
         "check indentation and quoting near line 3 (while parsing a flow mapping that starts at "
         "line 2)"),
    ],
)  # fmt: skip
def test_config_errors(tmp_path: Path, text: str, message: str, hint: str) -> None:
    err = fails(tmp_path, text)
    assert err.message == f"{config_path(tmp_path)}:{message}"
    assert err.hint == hint


def test_kafka_on_without_bootstrap(tmp_path: Path) -> None:
    err = fails(tmp_path, "storage:\n  stdout: true\n  kafka:\n    topic: events\n")
    assert err.message == (
        f"{config_path(tmp_path)}:4: the Kafka sink is on but no bootstrap server is set "
        "(storage.kafka.bootstrap)"
    )
    assert err.hint == (
        "set BPFDEPOT_KAFKA=HOST:PORT, or bootstrap: HOST:PORT under storage.kafka in "
        f"{config_path(tmp_path)}; or turn Kafka off"
    )
    assert fails(tmp_path, BPFDEPOT_KAFKA="1").message.startswith(
        "BPFDEPOT_KAFKA=1: the Kafka sink is on but no bootstrap server is set"
    )
    # The environment can supply what the file lacks.
    settings = load(tmp_path, "storage:\n  kafka: true\n", BPFDEPOT_KAFKA="broker:9092")
    assert (settings.kafka.enabled, settings.kafka.bootstrap) == (True, "broker:9092")


# -- where the config file comes from --------------------------------------------------------------


def test_config_file_choice(tmp_path: Path) -> None:
    home = tmp_path / "home"
    load(tmp_path, "storage: {file: true}\n")  # <home>/config.yaml
    (tmp_path / "env.yaml").write_text("storage: {tsdb: true}\n")
    (tmp_path / "arg.yaml").write_text("storage: {kafka: {bootstrap: k:1}}\n")
    assert load_storage({}, home).file.enabled
    from_env = load_storage({"BPFDEPOT_CONFIG": "env.yaml"}, home, cwd=tmp_path)
    assert (from_env.file.enabled, from_env.tsdb.enabled, from_env.config) == (
        False, True, tmp_path / "env.yaml",
    )  # fmt: skip
    given = load_storage({"BPFDEPOT_CONFIG": "env.yaml"}, home, tmp_path / "arg.yaml")
    assert (given.tsdb.enabled, given.kafka.enabled) == (False, True)


def test_missing_config_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(StorageConfigError) as caught:
        load_storage({"BPFDEPOT_CONFIG": "nope.yaml"}, home, cwd=tmp_path)
    assert caught.value.message == f"BPFDEPOT_CONFIG {tmp_path / 'nope.yaml'} does not exist"
    assert caught.value.hint == (
        f"check the path; without BPFDEPOT_CONFIG, {home / 'config.yaml'} is read if it exists"
    )
    with pytest.raises(StorageConfigError) as caught:
        load_storage({}, home, tmp_path / "nope.yaml")
    assert caught.value.message == f"config file {tmp_path / 'nope.yaml'} does not exist"


# -- the environment -------------------------------------------------------------------------------


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = load(
        tmp_path, EXAMPLE, BPFDEPOT_STDOUT="1", BPFDEPOT_FILE="out/ev.jsonl",
        BPFDEPOT_KAFKA="k9:9093", BPFDEPOT_KAFKA_TOPIC="t.{stream}", BPFDEPOT_TSDB="0",
    )  # fmt: skip
    assert settings.stdout.enabled is True
    assert settings.file.path == tmp_path / "out" / "ev.jsonl"  # relative to the working folder
    assert settings.file.max_bytes == 100 * 2**20  # the rest stays as the file says
    assert (settings.kafka.bootstrap, settings.kafka.topic) == ("k9:9093", "t.{stream}")
    assert settings.tsdb.enabled is False
    assert settings.tsdb.path == Path("/var/lib/bpfdepot/events.sqlite")

    off = load(tmp_path, EXAMPLE, BPFDEPOT_FILE="0", BPFDEPOT_KAFKA="0", BPFDEPOT_STDOUT="0")
    assert describe(off) == ["tsdb /var/lib/bpfdepot/events.sqlite (retention 7d, max 1 GiB)"]
    on = load(tmp_path, None, BPFDEPOT_TSDB="1", BPFDEPOT_FILE="1", BPFDEPOT_KAFKA="")
    assert (on.tsdb.enabled, on.tsdb.path) == (True, home / "tsdb" / "events.sqlite")
    assert (on.file.enabled, on.file.path) == (True, home / "events" / "events.jsonl")
    assert on.kafka.enabled is False  # empty means unset
    assert load(tmp_path, None, BPFDEPOT_TSDB="/data/t.sqlite").tsdb.path == Path("/data/t.sqlite")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BPFDEPOT_STDOUT": "yes"}, "BPFDEPOT_STDOUT='yes' is not 0 or 1"),
        ({"BPFDEPOT_KAFKA": "a b:1"}, "BPFDEPOT_KAFKA='a b:1' is not HOST:PORT[,HOST:PORT...]"),
        ({"BPFDEPOT_KAFKA_TOPIC": "{program}/x"},
         "BPFDEPOT_KAFKA_TOPIC='{program}/x' does not make a valid Kafka topic name"),
    ],
)  # fmt: skip
def test_environment_errors(tmp_path: Path, env: dict[str, str], message: str) -> None:
    assert fails(tmp_path, None, **env).message == message


# -- per-event overrides ---------------------------------------------------------------------------


def test_effective_without_overrides_follows_the_settings(tmp_path: Path) -> None:
    settings = load(tmp_path, EXAMPLE)
    sinks = effective(settings, None, program="tcp_connlat", channel="events", route=None)
    assert sinks == RouteSinks(
        stdout=False, file=Path("/var/log/bpfdepot/events.jsonl"),
        kafka_topic="bpfdepot.tcp_connlat.events", tsdb=True,
    )  # fmt: skip
    assert effective(settings, StorageSpec(), program="p", channel="c", route="r") == RouteSinks(
        stdout=False, file=Path("/var/log/bpfdepot/events.jsonl"), kafka_topic="bpfdepot.p.c",
        tsdb=True,
    )  # fmt: skip


def test_effective_overrides_win(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = load(tmp_path, "storage:\n  kafka: {enabled: false, bootstrap: k:1}\n")
    spec = StorageSpec(kafka=True, kafka_topic="audit.{channel}", file=True, file_name="x.jsonl",
                       tsdb=True)  # fmt: skip
    assert effective(settings, spec, program="p", channel="c", route="r") == RouteSinks(
        stdout=True, file=home / "events" / "x.jsonl", kafka_topic="audit.c", tsdb=True
    )
    spec = StorageSpec(kafka=True, file=True)
    assert effective(settings, spec, program="p", channel="c", route="r") == RouteSinks(
        stdout=True, file=home / "events" / "events.jsonl", kafka_topic="bpfdepot.p.c", tsdb=False
    )
    full = load(tmp_path, EXAMPLE)
    spec = StorageSpec(kafka=False, file=False)
    assert effective(full, spec, program="p", channel="c", route="r") == RouteSinks(
        stdout=False, file=None, kafka_topic=None, tsdb=True
    )


def test_effective_kafka_without_bootstrap(tmp_path: Path) -> None:
    spec = StorageSpec(kafka=True)
    route = "manifest.yaml:23 (spec.channels.events.events[0])"
    with pytest.raises(StorageConfigError) as caught:
        effective(load(tmp_path), spec, program="p", channel="c", route=route)
    assert caught.value.message == (
        "route manifest.yaml:23 (spec.channels.events.events[0]) sends records to Kafka, "
        "but no Kafka bootstrap server is configured"
    )
    assert caught.value.hint == (
        "set BPFDEPOT_KAFKA=HOST:PORT or storage.kafka.bootstrap in a config file "
        "($BPFDEPOT_CONFIG or <home>/config.yaml); or write kafka: false in the route"
    )
    with pytest.raises(StorageConfigError) as caught:
        effective(load(tmp_path, "storage: {}\n"), spec, program="p", channel="c", route=route)
    assert caught.value.hint.startswith(
        f"set BPFDEPOT_KAFKA=HOST:PORT or storage.kafka.bootstrap in {config_path(tmp_path)};"
    )


def test_effective_nowhere(tmp_path: Path) -> None:
    settings = load(tmp_path, None, BPFDEPOT_STDOUT="0")
    with pytest.raises(StorageConfigError) as caught:
        effective(settings, StorageSpec(file=False), program="p", channel="c", route="m.yaml:5")
    assert caught.value.message == (
        "route m.yaml:5 sends its records nowhere: stdout, file, Kafka and TSDB are all off"
    )
    assert caught.value.hint == (
        "turn a sink on: storage: {file: true} (or kafka, tsdb) in the route, or "
        "BPFDEPOT_STDOUT=1, BPFDEPOT_FILE=PATH, BPFDEPOT_TSDB=1 or BPFDEPOT_KAFKA=HOST:PORT"
    )
    with pytest.raises(StorageConfigError, match=r"^stream p\.c sends its records nowhere"):
        effective(settings, None, program="p", channel="c", route=None)
    sinks = effective(settings, StorageSpec(tsdb=True), program="p", channel="c", route="m.yaml:5")
    assert sinks.tsdb and not sinks.stdout


# -- the manifest's storage forms ------------------------------------------------------------------

MANIFEST = """\
kind: ebpfprogram
name: demo
spec:
  programs:
    - {name: demo, path: file://./demo.bpf.c, type: ebpf_object}
    - {name: demo_user, path: file://./demo_user.c, type: user_so}
  channels:
    events:
      type: ring_buffer
      events:
        - name: demo_user
          storage:
"""


def manifest_with(tmp_path: Path, storage: str) -> Path:
    for name in ("demo.bpf.c", "demo_user.c"):
        (tmp_path / name).write_text("")
    path = tmp_path / "manifest.yaml"
    path.write_text(MANIFEST + "".join(f"            {line}\n" for line in storage.splitlines()))
    return path


@pytest.mark.parametrize(
    ("storage", "spec"),
    [
        ("kafka: true\nfile: false\ntsdb: true", StorageSpec(kafka=True, file=False, tsdb=True)),
        ("file: {name: connect.jsonl}", StorageSpec(file=True, file_name="connect.jsonl")),
        ("kafka: {topic: 'audit.{program}.{channel}'}\ntsdb: false",
         StorageSpec(kafka=True, kafka_topic="audit.{program}.{channel}", tsdb=False)),
        ("kafka:\n  topic: raw-events\nfile:\n  name: _x.log",
         StorageSpec(kafka=True, kafka_topic="raw-events", file=True, file_name="_x.log")),
        ("{}", StorageSpec()),
    ],
)  # fmt: skip
def test_manifest_storage_forms(tmp_path: Path, storage: str, spec: StorageSpec) -> None:
    manifest = parse_manifest(manifest_with(tmp_path, storage))
    assert manifest.channels[0].events[0].storage == spec


@pytest.mark.parametrize(
    ("storage", "message", "hint"),
    [
        ("file: {name: ../../etc/cron.d/x}",
         "13: file name '../../etc/cron.d/x' in spec.channels.events.events[0].storage.file is not "
         "a plain file name: per-event files are written in the folder of the global file sink, "
         "so no '/' and no leading '.'",
         "e.g. name: x; the folder is set by storage.file.path in the config file or by "
         "BPFDEPOT_FILE"),
        ("file:\n  name: .hidden",
         "14: file name '.hidden' in spec.channels.events.events[0].storage.file is not a plain "
         "file name: per-event files are written in the folder of the global file sink, so no "
         "'/' and no leading '.'",
         "e.g. name: hidden; the folder is set by storage.file.path in the config file or by "
         "BPFDEPOT_FILE"),
        ("file: {path: ./rel/path.jsonl}",
         "13: unknown key 'path' in spec.channels.events.events[0].storage.file",
         "allowed keys here: name"),
        ("file: {}", "13: 'name' is missing in spec.channels.events.events[0].storage.file",
         "add 'name:' in spec.channels.events.events[0].storage.file"),
        ("kafka: {topic: a/b}",
         "13: Kafka topic 'a/b' in spec.channels.events.events[0].storage.kafka is not a valid "
         "topic name",
         "use letters, digits, '.', '_', '-' and the fields {program}, {channel} and {stream}, "
         "e.g. topic: bpfdepot.{program}.connect"),
        ("kafka: \"yes\"",
         "13: 'kafka' in spec.channels.events.events[0].storage must be true, false or a mapping, "
         "got a string", "write kafka: true, kafka: false or kafka: {topic: ...}"),
        ("tsdb: {}",
         "13: 'tsdb' in spec.channels.events.events[0].storage must be true or false, "
         "got a mapping", "write tsdb: true or tsdb: false, unquoted"),
    ],
)  # fmt: skip
def test_manifest_storage_errors(tmp_path: Path, storage: str, message: str, hint: str) -> None:
    path = manifest_with(tmp_path, storage)
    with pytest.raises(ManifestError) as caught:
        parse_manifest(path)
    assert caught.value.message == f"{path}:{message}"
    assert caught.value.hint == hint
