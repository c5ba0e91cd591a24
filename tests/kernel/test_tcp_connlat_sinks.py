"""tcp_connlat through its processors to every sink: known connections, exact records back from
the file, the Kafka topic (a real Tansu broker on loopback) and the TSDB (`bpfdepot query`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.kernel.conftest import ROOT, Running, bpfdepot, cli_env, prog_names
from tests.services import free_port
from tests.sinks.conftest import consume, tansu  # noqa: F401  (the broker fixture)

CONNLAT = ROOT / "bpf" / "tcp_connlat"
FIELDS = {"pid", "comm", "saddr", "daddr", "sport", "dport", "latency_us", "label"}


def _connect(n: int) -> list[tuple[int, int]]:
    """``n`` loopback TCP connections; (client port, server port) of each."""
    out = []
    for _ in range(n):
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            with socket.create_connection(server.getsockname()) as client:
                server.accept()[0].close()
                out.append((client.getsockname()[1], server.getsockname()[1]))
    return out


def _mine(records: list[dict]) -> list[dict]:
    return [r for r in records if r["pid"] == os.getpid()]


def _check(records: list[dict], ports: list[tuple[int, int]]) -> None:
    comm = Path("/proc/self/comm").read_text().strip()
    assert [(r["sport"], r["dport"]) for r in records] == ports
    for r in records:
        assert set(r) == FIELDS
        assert (r["comm"], r["saddr"], r["daddr"], r["label"]) == (comm, "127.0.0.1", "127.0.0.1", "prod")
        assert r["latency_us"] > 0


def test_records_reach_the_file_kafka_and_the_tsdb(home: Path, tmp_path: Path, tansu) -> None:  # noqa: F811
    topic = f"connlat-{uuid.uuid4().hex[:8]}"
    db = tmp_path / "events.sqlite"
    env = cli_env(home, BPFDEPOT_KAFKA_TOPIC=topic)
    run = Running(home, "bpf/tcp_connlat/processor.yaml", tmp_path / "out.jsonl", env=env,
                  extra=["--kafka", tansu.url, "--tsdb", str(db)])
    ports = _connect(4)
    done = run.stop()
    assert done.rc == 0, done.stderr

    _check(_mine(done.events), ports)
    messages = [m for m in consume(tansu.url, topic, len(done.events))]
    kafka = [(m.key(), json.loads(m.value())) for m in messages]
    assert [k for k, r in kafka if r["pid"] == os.getpid()] == [str(os.getpid()).encode()] * 4
    _check(_mine([r for _, r in kafka]), ports)
    query = bpfdepot(home, "query", "tcp_connlat", "--db", str(db), "--where", f"pid={os.getpid()}",
                     "--json")
    assert query.returncode == 0, query.stderr
    rows = json.loads(query.stdout)["rows"]
    _check([{k: v for k, v in r.items() if k in FIELDS} for r in rows], ports)
    n = len(done.events)
    for sink in ("file", "kafka", "tsdb"):
        assert f"sink {sink:<35} {n:>10} delivered {0:>8} failed" in done.stderr, done.stderr


def test_go_and_c_processors_give_the_same_records(home: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "connlat"
    shutil.copytree(CONNLAT, bundle, ignore=shutil.ignore_patterns("*.yaml", "bpfdepot.lock"))
    (bundle / "manifest.yaml").write_text(textwrap.dedent("""\
        kind: ebpfprogram
        name: tcp_connlat
        spec:
          programs:
            - {name: tcp_connlat, path: file://./tcp_connlat.bpf.c, type: ebpf_object}
            - {name: connlat_c, path: file://./tcp_connlat_user.c, type: user_so}
            - {name: connlat_go, path: file://./tcp_connlat_user.go, type: user_so}
          properties:
            initfile: ./connlat.ini
          channels:
            tcp_connlat_events:
              type: ring_buffer
              events:
                - {name: connlat_c, storage: {file: {name: c.jsonl}}}
                - {name: connlat_go, storage: {file: {name: go.jsonl}}}
        """))
    run = Running(home, str(bundle), tmp_path / "out.jsonl")
    ports = _connect(5)
    done = run.stop()
    assert done.rc == 0, done.stderr
    c = (tmp_path / "c.jsonl").read_text().splitlines()
    go = (tmp_path / "go.jsonl").read_text().splitlines()
    assert c == go and len(c) >= 5
    _check(_mine([json.loads(line) for line in c]), ports)


def test_kafka_down_at_start_is_a_clear_error_and_loads_nothing(home: Path, tmp_path: Path) -> None:
    port = free_port()
    result = bpfdepot(home, "run", "bpf/tcp_connlat/processor.yaml", "--kafka", f"127.0.0.1:{port}",
                      "--duration", "1")
    assert result.returncode != 0
    assert f"Kafka broker at 127.0.0.1:{port} did not answer" in result.stderr
    assert "hint: start the broker" in result.stderr
    assert "tcp_connlat" not in prog_names()


def test_declared_fields_only(home: Path, tmp_path: Path) -> None:
    run = Running(home, "bpf/tcp_connlat/declared.yaml", tmp_path / "out.jsonl")
    ports = _connect(2)
    done = run.stop()
    assert done.rc == 0, done.stderr
    mine = _mine(done.events)
    assert [(list(r), r["dport"]) for r in mine] == [
        (["pid", "comm", "daddr", "dport", "delta_ns"], d) for _, d in ports]
    assert all(r["daddr"] == "127.0.0.1" and r["delta_ns"] > 0 for r in mine)


def test_declaration_that_disagrees_with_the_object(home: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "connlat"
    shutil.copytree(CONNLAT, bundle, ignore=shutil.ignore_patterns("*.yaml", "bpfdepot.lock"))
    text = (CONNLAT / "declared.yaml").read_text().replace("{name: pid, type: u32, offset: 8}",
                                                          "{name: pid, type: u64, offset: 8}")
    (bundle / "manifest.yaml").write_text(text)
    result = bpfdepot(home, "run", str(bundle), "--duration", "1")
    assert result.returncode == 2, result.stderr
    assert "field 'pid' (manifest line 16)" in result.stderr
    assert "the manifest says u64 (8 bytes)" in result.stderr
    assert "hint: declare it as {name: pid, type: u32, offset: 8}" in result.stderr
    assert "tcp_connlat" not in prog_names()


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    assert "tcp_connlat" not in prog_names()
