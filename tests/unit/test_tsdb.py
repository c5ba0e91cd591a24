"""The tsdb sink and `bpfdepot query` on real SQLite files: round trip, filters, exact statistics,
retention by age and size, a writer killed with SIGKILL, a reader beside a live writer, the CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.cli import main
from builder.query import parse_duration
from loader.errors import BpfDepotError
from loader.sinks import Record
from loader.sinks.tsdb import TsdbSink, query

REPO = Path(__file__).resolve().parents[2]
STREAM = "tcp_connlat.tcp_connlat_events"
COMMS = ("curl", "wget", "python3", "nginx")


def event(i: int, **extra: object) -> Record:
    """A tcp_connlat-like record: delta_ns = i, pid = i % 7, comm cycles over COMMS."""
    fields = {"delta_ns": i, "pid": i % 7, "family": 2, "sport": 40000 + i % 1000, "dport": 8000,
              "comm": COMMS[i % 4], "saddr": "127.0.0.1", "daddr": "127.0.0.1", **extra}
    return Record(key=str(i % 7).encode(), value=json.dumps(fields, separators=(",", ":")).encode())


def sink(path: Path, **kw: object) -> TsdbSink:
    kw.setdefault("retention_s", None)
    kw.setdefault("max_bytes", None)
    return TsdbSink(path, **kw)


def ask(path: Path, prefix: str = "tcp_connlat", **kw: object):
    kw.setdefault("since_s", None)
    kw.setdefault("where", [])
    kw.setdefault("group_by", None)
    kw.setdefault("limit", 1000)
    return query(path, prefix, **kw)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "tsdb" / "events.sqlite"


@pytest.fixture
def hundred(db: Path) -> Path:
    """delta_ns 1..100 in one stream, written and closed."""
    s = sink(db)
    s.write(STREAM, [event(i) for i in range(1, 101)])
    assert s.close().delivered == 100
    return db


# -- writing and reading ----------------------------------------------------------------------


def test_write_then_query_round_trip(db: Path) -> None:
    before = time.time_ns()
    s = sink(db)
    s.write(STREAM, [event(i) for i in range(5)])
    stats = s.flush()
    after = time.time_ns()
    assert (stats.delivered, stats.failed, stats.pending) == (5, 0, 0)
    result = ask(db)
    assert result.streams == (STREAM,)
    assert result.columns == ("ts_ns", "stream", "delta_ns", "pid", "family", "sport", "dport",
                              "comm", "saddr", "daddr")
    assert [{k: v for k, v in r.items() if k not in ("ts_ns", "stream")} for r in result.rows] == \
        [json.loads(event(i).value) for i in range(5)]
    assert all(before <= r["ts_ns"] <= after and r["stream"] == STREAM for r in result.rows)
    keys = sqlite3.connect(db).execute("SELECT key FROM events ORDER BY id").fetchall()
    assert keys == [(str(i % 7),) for i in range(5)]
    s.close()


def test_rows_survive_a_restart_and_streams_keep_their_ids(db: Path) -> None:
    s = sink(db)
    s.write(STREAM, [event(1)])
    s.close()
    s = sink(db)
    s.write(STREAM, [event(2)])
    s.write("tcp_connlat.other", [event(3)])
    s.close()
    assert [r["delta_ns"] for r in ask(db).rows] == [1, 2, 3]
    assert ask(db).streams == ("tcp_connlat.other", STREAM)
    assert sqlite3.connect(db).execute("SELECT count(*) FROM streams").fetchone() == (2,)


def test_a_record_with_its_own_wall_clock_ts_ns_is_stored_at_that_time(db: Path) -> None:
    s = sink(db)
    at = time.time_ns() - 3_600_000_000_000  # an hour ago
    s.write(STREAM, [event(1, ts_ns=at), Record(key=None, value=b'{"ts_ns":"not a number"}'),
                     event(3, ts_ns=123_456_789_000)])  # since boot (bpf_ktime_get_ns): not a date
    s.close()
    rows = ask(db).rows
    assert rows[0]["ts_ns"] == at and rows[0]["delta_ns"] == 1
    assert rows[1]["ts_ns"] > at and rows[2]["ts_ns"] > at


def test_records_that_are_not_json_are_counted_failed_and_the_rest_kept(db: Path) -> None:
    s = sink(db)
    s.write(STREAM, [event(1), Record(key=None, value=b'{"torn":'), event(2),
                     Record(key=None, value=b'{"x":"\xff"}'), event(3)])
    stats = s.close()
    assert (stats.delivered, stats.failed, stats.pending) == (3, 2, 0)
    assert "not valid JSON" in s.last_error
    assert [r["delta_ns"] for r in ask(db).rows] == [1, 2, 3]


def test_writes_after_close_are_counted_failed(db: Path) -> None:
    s = sink(db)
    s.close()
    s.write(STREAM, [event(1)])
    assert s.close().failed == 1
    assert "after close" in s.last_error


def test_a_small_batch_is_committed_by_the_flusher_within_max_delay(db: Path) -> None:
    s = sink(db, batch_rows=10_000, max_delay_s=0.5)
    s.write(STREAM, [event(1)])
    assert s.stats().pending == 1
    deadline = time.monotonic() + 5
    while s.stats().pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.stats().delivered == 1
    assert [r["delta_ns"] for r in ask(db).rows] == [1]  # visible to another connection
    s.close()


def test_a_full_batch_is_committed_at_once_beside_write(db: Path) -> None:
    s = sink(db, batch_rows=10, max_delay_s=60)
    s.write(STREAM, [event(i) for i in range(25)])
    assert s.stats().delivered + s.stats().pending == 25  # committing, or committed
    deadline = time.monotonic() + 5
    while s.stats().delivered < 25 and time.monotonic() < deadline:
        time.sleep(0.01)  # the flusher commits it without waiting for max_delay_s
    assert (s.stats().delivered, s.stats().pending) == (25, 0)
    s.write(STREAM, [event(i) for i in range(3)])
    time.sleep(0.3)  # a batch not full waits for max_delay_s (or flush)
    assert (s.stats().delivered, s.stats().pending) == (25, 3)
    assert s.close().delivered == 28


def test_a_file_that_is_not_a_store_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    path.write_bytes(b"DUCK" * 2048)
    with pytest.raises(BpfDepotError) as info:
        sink(path)
    assert info.value.message.startswith(f"cannot open the time-series store {path}: file is not a database")
    assert info.value.hint == f"move {path} away (it is not a bpfdepot time-series store) or use another path"


def test_bad_retention_settings_are_refused(db: Path) -> None:
    with pytest.raises(BpfDepotError, match="max_bytes 1000 is below the minimum 262144"):
        sink(db, max_bytes=1000)
    with pytest.raises(BpfDepotError, match="retention 0 s is not positive"):
        sink(db, retention_s=0)


# -- filters and statistics -------------------------------------------------------------------


def test_where_compares_numbers_and_text(hundred: Path) -> None:
    assert [r["delta_ns"] for r in ask(hundred, where=[("pid", "3")]).rows] == list(range(3, 101, 7))
    both = ask(hundred, where=[("pid", "3"), ("comm", "wget")]).rows
    assert [r["delta_ns"] for r in both] == [i for i in range(3, 101, 7) if i % 4 == 1]
    assert [r["delta_ns"] for r in ask(hundred, where=[("delta_ns", "42")]).rows] == [42]
    assert ask(hundred, where=[("comm", "ssh")]).rows == ()


def test_where_matches_booleans_and_numbers_stored_as_text(db: Path) -> None:
    s = sink(db)
    s.write("p.c", [Record(key=None, value=b'{"ok":true,"port":"80"}'),
                    Record(key=None, value=b'{"ok":false,"port":80}')])
    s.close()
    assert len(ask(db, "p", where=[("ok", "true")]).rows) == 1
    assert len(ask(db, "p", where=[("port", "80")]).rows) == 2


def test_group_by_counts(hundred: Path) -> None:
    result = ask(hundred, group_by="comm")
    assert result.columns == ("comm", "count")
    assert result.rows == tuple({"comm": c, "count": 25} for c in sorted(COMMS))
    by_pid = ask(hundred, group_by="pid", limit=2).rows
    assert by_pid == ({"pid": 1, "count": 15}, {"pid": 2, "count": 15})  # ties ordered by value


def test_stat_per_group_is_exact(hundred: Path) -> None:
    result = ask(hundred, group_by="comm", stat="delta_ns")
    assert result.columns == ("comm", "count", "min", "avg", "max", "p50", "p90", "p99")
    # curl holds 4, 8, ..., 100: nearest rank p50 = 13th = 52, p90 = 23rd = 92, p99 = 25th = 100
    curl = next(r for r in result.rows if r["comm"] == "curl")
    assert curl == {"comm": "curl", "count": 25, "min": 4, "avg": 52.0, "max": 100,
                    "p50": 52, "p90": 92, "p99": 100}


def test_stat_without_group_by_covers_every_row(hundred: Path) -> None:
    result = ask(hundred, stat="delta_ns")
    assert result.columns == ("count", "min", "avg", "max", "p50", "p90", "p99")
    assert result.rows == ({"count": 100, "min": 1, "avg": 50.5, "max": 100,
                            "p50": 50, "p90": 90, "p99": 99},)
    assert ask(hundred, stat="delta_ns", where=[("comm", "ssh")]).rows == ()


def test_stat_skips_values_that_are_not_numbers(db: Path) -> None:
    s = sink(db)
    s.write("p.c", [Record(key=None, value=json.dumps({"g": "a", "v": v}).encode())
                    for v in (3, 1, "x", None, 2, 4.5)] + [Record(key=None, value=b'{"g":"a"}')])
    s.close()
    (row,) = ask(db, "p", group_by="g", stat="v").rows
    assert row == {"g": "a", "count": 7, "min": 1, "avg": 2.625, "max": 4.5, "p50": 2, "p90": 4.5, "p99": 4.5}


def test_since_keeps_only_recent_rows(db: Path) -> None:
    now = time.time_ns()
    s = sink(db)
    s.write(STREAM, [event(1, ts_ns=now - 3600 * 10**9), event(2, ts_ns=now - 120 * 10**9), event(3)])
    s.close()
    assert [r["delta_ns"] for r in ask(db, since_s=60).rows] == [3]
    assert [r["delta_ns"] for r in ask(db, since_s=600).rows] == [2, 3]
    assert ask(db, since_s=7200, stat="delta_ns").rows[0]["count"] == 3


def test_limit_keeps_the_newest_rows_oldest_first(hundred: Path) -> None:
    assert [r["delta_ns"] for r in ask(hundred, limit=3).rows] == [98, 99, 100]


def test_the_prefix_is_a_whole_program_or_one_channel(db: Path) -> None:
    s = sink(db)
    s.write("tcp_connlat.a", [event(1)])
    s.write("tcp_connlat.b", [event(2)])
    s.write("tcp_connlatx.a", [event(3)])
    s.close()
    assert [r["delta_ns"] for r in ask(db).rows] == [1, 2]
    assert [r["stream"] for r in ask(db, "tcp_connlat.b").rows] == ["tcp_connlat.b"]
    with pytest.raises(BpfDepotError) as info:
        ask(db, "tcp")
    assert info.value.message == (f"no events were ever stored for 'tcp' in {db}; programs present: "
                                  "tcp_connlat (a, b), tcp_connlatx (a)")


def test_a_field_that_never_appears_names_the_fields_seen(hundred: Path) -> None:
    with pytest.raises(BpfDepotError) as info:
        ask(hundred, where=[("dprot", "80")])
    assert info.value.message == ("no event of 'tcp_connlat' has a field 'dprot'; fields seen: "
                                  "comm, daddr, delta_ns, dport, family, pid, saddr, sport")
    assert info.value.hint == "did you mean 'dport'?"
    with pytest.raises(BpfDepotError, match="field 'comm' of 'tcp_connlat' is never a number") as info:
        ask(hundred, stat="comm")
    assert info.value.hint == "numeric fields: delta_ns, dport, family, pid, sport"


# -- retention --------------------------------------------------------------------------------


def test_retention_by_age_deletes_old_rows_and_remembers_the_stream(db: Path) -> None:
    old = time.time_ns() - 7200 * 10**9
    s = sink(db)
    s.write(STREAM, [event(i, ts_ns=old + i) for i in range(50)])
    s.close()
    assert len(ask(db).rows) == 50
    s = sink(db, retention_s=3600)  # retention runs at open, then every second
    s.write(STREAM, [event(99)])
    s.close()
    assert [r["delta_ns"] for r in ask(db).rows] == [99]
    time.sleep(1.1)
    s = sink(db, retention_s=1)
    s.close()
    assert ask(db).rows == ()  # empty now, but still a known program: no error


def test_retention_by_size_keeps_the_file_under_a_bound(db: Path) -> None:
    max_bytes = 1 << 20
    s = sink(db, max_bytes=max_bytes, batch_rows=500)
    wal = db.with_name(db.name + "-wal")
    biggest = 0
    for n in range(60):  # about 12 MB of rows through a 1 MiB store
        s.write(STREAM, [event(n * 500 + i, pad="x" * 200) for i in range(500)])
        s.flush()
        biggest = max(biggest, db.stat().st_size)
        assert wal.stat().st_size <= max_bytes // 2
    stats = s.close()
    assert (stats.delivered, stats.failed) == (30_000, 0), s.last_error
    assert biggest <= max_bytes * 1.25
    assert db.stat().st_size <= max_bytes
    kept = [r["delta_ns"] for r in ask(db, limit=100_000).rows]
    assert kept == list(range(30_000 - len(kept), 30_000))  # the newest, without holes
    assert 1000 < len(kept) < 5000
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert con.execute("PRAGMA freelist_count").fetchone() == (0,)  # freed pages went back


# -- processes --------------------------------------------------------------------------------

WRITER = """
import json, sys
from pathlib import Path
from loader.sinks import Record
from loader.sinks.tsdb import TsdbSink
sink = TsdbSink(Path(sys.argv[1]), retention_s=None, max_bytes=None, batch_rows=100, max_delay_s=0.01)
seq = 0
while True:
    sink.write("killme.events", [Record(key=None, value=json.dumps({"seq": seq + j, "pad": "x" * 100}).encode())
                                 for j in range(100)])
    seq += 100
    print(sink.flush().delivered, flush=True)
"""


def start_writer(db: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(db)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)


def wait_for(child: subprocess.Popen[str], delivered: int) -> int:
    assert child.stdout is not None
    for line in child.stdout:
        if int(line) >= delivered:
            return int(line)
    raise AssertionError(f"the writer stopped early with code {child.wait()}")


def test_rows_committed_before_sigkill_are_all_readable(db: Path) -> None:
    child = start_writer(db)
    try:
        confirmed = wait_for(child, 20_000)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    seqs = [s for (s,) in con.execute("SELECT json_extract(record, '$.seq') FROM events ORDER BY id")]
    assert len(seqs) >= confirmed and len(seqs) % 100 == 0  # every confirmed row, whole batches only
    assert seqs == list(range(len(seqs)))
    con.close()
    assert ask(db, "killme", stat="seq").rows[0]["count"] == len(seqs)
    s = sink(db)  # and the store takes writes again
    s.write("killme.events", [Record(key=None, value=b'{"seq":-1}')])
    assert s.close().delivered == 1


def test_another_process_queries_while_the_writer_runs(db: Path) -> None:
    child = start_writer(db)
    try:
        wait_for(child, 1000)
        counts = []
        for _ in range(5):
            counts.append(ask(db, "killme", stat="seq").rows[0]["count"])
            assert child.poll() is None  # the writer is still up and writing
            wait_for(child, counts[-1] + 500)
        assert counts == sorted(counts) and counts[-1] > counts[0] >= 1000
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_insert_rate_of_tcp_connlat_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not an assertion on time: prints rows/s for the README and the reply (bench/ has the bench)."""
    records = [event(i) for i in range(200_000)]
    for poll in (64, 1024):
        s = sink(tmp_path / f"rate{poll}.sqlite")
        started = time.perf_counter()
        for i in range(0, len(records), poll):  # as ring-buffer polls hand them over
            s.write(STREAM, records[i:i + poll])
        assert s.flush().delivered == len(records)
        seconds = time.perf_counter() - started
        s.close()
        with capsys.disabled():
            print(f"\ntsdb: {len(records) / seconds:,.0f} rows/s ({len(records)} tcp_connlat records, "
                  f"write() of {poll}, transactions of 2048)")


# -- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("BPFDEPOT_HOME", str(home))
    s = sink(home / "tsdb" / "events.sqlite")
    s.write(STREAM, [event(i) for i in range(1, 9)])
    s.write("opensnoop.events", [Record(key=None, value=b'{"fname":"/etc/passwd"}')])
    s.close()
    return home


def run(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 0) -> tuple[str, list[str]]:
    assert main(["query", *argv]) == code
    out, err = capsys.readouterr()
    return out, err.splitlines()


def test_cli_prints_a_table_of_events(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = run(capsys, ["tcp_connlat", "--where", "comm=curl", "--since", "10m"])
    lines = out.splitlines()
    assert lines[0].split() == ["time", "delta_ns", "pid", "family", "sport", "dport", "comm",
                                "saddr", "daddr"]
    assert [line.split()[2:] for line in lines[1:]] == [
        ["4", "4", "2", "40004", "8000", "curl", "127.0.0.1", "127.0.0.1"],
        ["8", "1", "2", "40008", "8000", "curl", "127.0.0.1", "127.0.0.1"]]


def test_cli_prints_groups_with_statistics(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = run(capsys, ["tcp_connlat", "--group-by", "comm", "--stat", "delta_ns"])
    assert out == (
        "comm     count  delta_ns min  delta_ns avg  delta_ns max  delta_ns p50  delta_ns p90  delta_ns p99\n"
        "curl         2             4           6.0             8             4             8             8\n"
        "nginx        2             3           5.0             7             3             7             7\n"
        "python3      2             2           4.0             6             2             6             6\n"
        "wget         2             1           3.0             5             1             5             5\n")


def test_cli_prints_json(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = run(capsys, ["tcp_connlat", "--group-by", "pid", "--json", "--limit", "2",
                          "--where", "family=2"])
    assert json.loads(out) == {"program": "tcp_connlat", "streams": [STREAM], "since_s": None,
                               "group_by": "pid", "stat": None, "columns": ["pid", "count"],
                               "rows": [{"pid": 1, "count": 2}, {"pid": 0, "count": 1}]}
    out, _ = run(capsys, ["opensnoop", "--json", "--since", "1h"])
    doc = json.loads(out)
    assert doc["since_s"] == 3600 and [r["fname"] for r in doc["rows"]] == ["/etc/passwd"]


def test_cli_says_when_nothing_matches(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = run(capsys, ["tcp_connlat", "--where", "comm=ssh", "--since", "5m"])
    assert out == "no events of tcp_connlat in the last 5m match\n"


def test_cli_errors(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = home / "tsdb" / "events.sqlite"
    assert run(capsys, ["tcp_conlat"], 1) == ("", [
        f"bpfdepot: error: no events were ever stored for 'tcp_conlat' in {db}; programs present: "
        "opensnoop (events), tcp_connlat (tcp_connlat_events)",
        "hint: did you mean 'tcp_connlat'?"])
    assert run(capsys, ["tcp_connlat", "--since", "10"], 1) == ("", [
        "bpfdepot: error: --since '10' is not a duration",
        "hint: a number with a unit, for example: --since 30s, --since 10m, --since 2h, "
        "--since 1d, --since 1h30m"])
    assert run(capsys, ["tcp_connlat", "--group-by", "command"], 1) == ("", [
        "bpfdepot: error: no event of 'tcp_connlat' has a field 'command'; fields seen: "
        "comm, daddr, delta_ns, dport, family, pid, saddr, sport",
        "hint: did you mean 'comm'?"])
    assert run(capsys, ["tcp_connlat", "--where", "comm"], 1) == ("", [
        "bpfdepot: error: --where 'comm' is not FIELD=VALUE",
        "hint: for example: --where comm=curl --where dport=8000"])
    missing = home / "nowhere.sqlite"
    assert run(capsys, ["tcp_connlat", "--db", str(missing)], 1) == ("", [
        f"bpfdepot: error: no time-series store at {missing}",
        "hint: events land there when `bpfdepot run` has the tsdb sink on (storage: {tsdb: true}); "
        "or pass --db PATH"])


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("500ms", 0.5),
    ("1.5h", 5400), (" 2W ", 1209600)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "m", "10x", "-5m", "0s", "10m ago", "1h 30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(BpfDepotError, match="is not a duration"):
        parse_duration(text)
