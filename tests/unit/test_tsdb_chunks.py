"""Schema 2 of the tsdb sink (a row per run of records): every delivered record is a row of the
``events`` view, in order; invalid records are counted and the rest of their chunk kept; a record
with its own wall-clock time starts a chunk of its own; age retention goes in bounded steps; a
schema-1 store still reads the same through ``query`` and the web view, and the writer refuses it
with the fix."""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from pathlib import Path

import pytest

from loader.errors import BpfDepotError
from loader.sinks import Record, tsdb
from loader.ui import views
from loader.ui.data import Data
from tests.unit.test_tsdb import ask as ask_tsdb, sink
from tests.unit.test_ui_fixtures import fill_small

STREAM = "flood.flood_events"


def rec(i: int, key: bytes | None = None, **extra: object) -> Record:
    fields = {"seq": i, "pid": 1000 + i % 3, "comm": ("a", "b", "c")[i % 3], "cpu": i % 2, **extra}
    return Record(key=key, value=json.dumps(fields, separators=(",", ":")).encode())


def lines(records: list[Record]) -> bytes:
    return b"".join(r.value + b"\n" for r in records)


def ask(path: Path, prefix: str = "flood", **kw: object) -> tsdb.QueryResult:
    kw.setdefault("limit", 100_000)
    return ask_tsdb(path, prefix, **kw)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "events.sqlite"


def test_every_delivered_record_is_a_row_in_order(db: Path) -> None:
    s = sink(db, batch_rows=100)
    sent = [rec(i) for i in range(1000)]
    for at in range(0, 1000, 37):  # writes of every size, as ring-buffer polls hand them over
        part = sent[at:at + 37]
        if at % 2:
            s.write(STREAM, part)
        else:
            s.write_lines(STREAM, lines(part), len(part))
    stats = s.close()
    assert (stats.delivered, stats.failed, stats.pending) == (1000, 0, 0)
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*), sum(n) FROM chunks").fetchone() == (28, 1000)  # a chunk per write
    rows = con.execute("SELECT id, record FROM events ORDER BY id").fetchall()
    assert [json.loads(r) for _, r in rows] == [json.loads(r.value) for r in sent]
    assert all(a < b for (a, _), (b, _) in itertools.pairwise(rows))
    assert [r["seq"] for r in ask(db).rows] == list(range(1000))


def test_keys_are_kept_when_records_have_them(db: Path) -> None:
    s = sink(db)
    s.write(STREAM, [rec(0, b"7"), rec(1, b'say "hi"'), rec(2, None)])
    s.write(STREAM, [rec(3, b"8"), rec(4, b"9")])
    s.write_lines(STREAM, lines([rec(5)]), 1)  # the pipeline's batches carry no keys
    s.close()
    keys = sqlite3.connect(db).execute("SELECT key FROM events ORDER BY id").fetchall()
    assert keys == [("7",), ('say "hi"',), (None,), ("8",), ("9",), (None,)]


def test_invalid_records_are_counted_and_the_rest_of_their_chunk_kept(db: Path) -> None:
    s = sink(db)
    s.write(STREAM, [rec(1), Record(key=None, value=b'{"torn":'), rec(2)])
    # one record holding two objects: the joined array is valid JSON, one element too long
    s.write(STREAM, [rec(3), Record(key=None, value=b'{"a":1},{"b":2}'), rec(4)])
    s.write_lines(STREAM, lines([rec(5), Record(key=None, value=b"[1"), Record(key=None, value=b"2]"),
                                 rec(6)]), 4)
    s.write_lines(STREAM, b'{"x":"\xff"}\n' + lines([rec(7)]), 2)  # not UTF-8
    stats = s.close()
    assert (stats.delivered, stats.failed) == (7, 5)
    assert [r["seq"] for r in ask(db).rows] == [1, 2, 3, 4, 5, 6, 7]
    assert sqlite3.connect(db).execute("SELECT sum(n) FROM chunks").fetchone() == (7,)


def test_a_record_with_its_own_wall_clock_time_starts_its_own_chunk(db: Path) -> None:
    at = time.time_ns() - 3_600_000_000_000
    s = sink(db)
    s.write_lines(STREAM, lines([rec(0), rec(1, ts_ns=at), rec(2, ts_ns=at), rec(3, ts_ns=12345),
                                 rec(4)]), 5)
    s.close()
    chunks = sqlite3.connect(db).execute("SELECT ts_ns, n FROM chunks ORDER BY id").fetchall()
    assert [n for _, n in chunks] == [1, 2, 2]  # now | at, at | now (12345 is no date), now
    assert chunks[1][0] == at and chunks[0][0] == chunks[2][0] > at
    rows = ask(db).rows
    assert [r["seq"] for r in rows] == [1, 2, 0, 3, 4]  # oldest first: the dated ones lead


def test_a_write_longer_than_a_chunk_is_split(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tsdb, "MAX_CHUNK", 4)
    s = sink(db)
    s.write_lines(STREAM, lines([rec(i) for i in range(10)]), 10)
    assert s.close().delivered == 10
    con = sqlite3.connect(db)
    assert [n for (n,) in con.execute("SELECT n FROM chunks ORDER BY id")] == [4, 4, 2]
    assert [r["seq"] for r in ask(db).rows] == list(range(10))


def test_age_retention_deletes_whole_chunks_in_bounded_steps(db: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    old = time.time_ns() - 7200 * 10**9
    s = sink(db)
    s.write(STREAM, [rec(i, ts_ns=old + i) for i in range(5)])  # five chunks of an hour ago
    s.write(STREAM, [rec(9)])
    s.close()
    monkeypatch.setattr(tsdb, "RETAIN_CHUNKS", 2)
    s = sink(db, retention_s=3600)  # one step at open: two chunks
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM chunks").fetchone() == (4,)
    deadline = time.monotonic() + 5
    while con.execute("SELECT count(*) FROM chunks").fetchone() != (1,) and time.monotonic() < deadline:
        time.sleep(0.05)  # the flusher takes the next steps at once, not a second later each
    assert con.execute("SELECT count(*) FROM chunks").fetchone() == (1,)
    s.close()
    assert [r["seq"] for r in ask(db).rows] == [9]


def test_ids_are_never_reused_after_retention_empties_the_store(db: Path) -> None:
    """The web view sums the store from the highest id it has seen: a chunk written after
    retention emptied the table must not take an old id below that mark."""
    old = time.time_ns() - 7200 * 10**9
    s = sink(db)
    s.write(STREAM, [rec(i, ts_ns=old + i) for i in range(3)])  # three chunks of an hour ago
    s.close()
    con = sqlite3.connect(db)
    (top,) = con.execute("SELECT max(id) FROM chunks").fetchone()
    s = sink(db, retention_s=3600)  # deletes all three at open
    assert con.execute("SELECT count(*) FROM chunks").fetchone() == (0,)
    s.write(STREAM, [rec(7)])
    s.close()
    assert con.execute("SELECT id > ? FROM chunks", (top,)).fetchall() == [(1,)]
    assert [r["seq"] for r in ask(db).rows] == [7]


def test_size_retention_deletes_the_oldest_chunks(db: Path) -> None:
    s = sink(db, max_bytes=1 << 20)
    for n in range(40):
        s.write_lines(STREAM, lines([rec(n * 200 + i, pad="x" * 300) for i in range(200)]), 200)
        s.flush()
    assert s.close().delivered == 8000
    kept = [r["seq"] for r in ask(db).rows]
    assert kept == list(range(8000 - len(kept), 8000)) and len(kept) % 200 == 0  # whole chunks
    assert 0 < len(kept) < 8000 and db.stat().st_size <= 1 << 20


# -- schema 1 ---------------------------------------------------------------------------------

SCHEMA1_SQL = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE streams(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_ns INTEGER NOT NULL);
CREATE TABLE events(id INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL, stream_id INTEGER NOT NULL,
                    key TEXT, record TEXT NOT NULL CHECK (json_valid(record)));
CREATE INDEX events_stream_ts ON events(stream_id, ts_ns);
INSERT INTO meta VALUES ('schema', '1');
"""


def as_schema1(src: Path, dst: Path) -> Path:
    """The store at ``src`` rewritten as schema 1 wrote it: one row per record, same times."""
    con = sqlite3.connect(dst)
    con.executescript(SCHEMA1_SQL)
    con.execute("ATTACH ? AS src", (str(src),))
    con.execute("INSERT INTO streams SELECT * FROM src.streams")
    con.execute("INSERT INTO events(ts_ns, stream_id, key, record) SELECT ts_ns, stream_id, key, record "
                "FROM src.events ORDER BY id")
    con.commit()
    con.close()
    return dst


def test_query_answers_the_same_on_schema_1_and_schema_2(db: Path, tmp_path: Path) -> None:
    base = time.time_ns() - 600 * 10**9
    s = sink(db)
    for i in range(0, 3000, 100):  # runs of 10 records sharing a time, as on a busy node
        s.write(STREAM, [rec(j, ts_ns=base + j // 10 * 10**6, lat=(j * 7919) % 1000, shard=str(j % 5))
                         for j in range(i, i + 100)])
    s.write("flood.other", [rec(5000, ts_ns=base)])
    assert s.close().delivered == 3001
    old = as_schema1(db, tmp_path / "old.sqlite")
    for kw in ({}, {"limit": 25}, {"group_by": "comm"}, {"group_by": "pid", "stat": "lat"},
               {"stat": "lat"}, {"where": [("cpu", "1")], "group_by": "shard"},
               {"since_s": 3600.0}, {"prefix": "flood.other"}):
        assert ask(db, **kw) == ask(old, **kw), kw
    assert ask(db, group_by="comm").rows[0]["count"] == 1001
    s = sink(db)  # and the writer appends to its own schema
    s.write(STREAM, [rec(1)])
    assert s.close().delivered == 1


def test_the_web_view_answers_the_same_on_schema_1_and_schema_2(tmp_path: Path) -> None:
    new = tmp_path / "new.sqlite"
    x = fill_small(new)
    old = as_schema1(new, tmp_path / "old.sqlite")
    a, b = Data(new, tmp_path / "new.ui-cache"), Data(old, tmp_path / "old.ui-cache")
    assert a.refresh() == 0 and b.refresh() == 0
    assert (a.layout.table, b.layout.table) == ("chunks", "events")
    rng = {"from": [str(x.t0_s)], "to": [str(x.t0_s + 60)]}
    for view, extra in ((views.servicemap, {}), (views.latency, {"metric": ["connect"]}),
                        (views.drops, {}), (views.flamegraph, {})):
        one, two = view(a, {**rng, **extra}), view(b, {**rng, **extra})
        one.pop("fresh_ns"), two.pop("fresh_ns")
        assert one == two, view.__name__
    assert [{k: v for k, v in s.items() if k != "id"} for s in a.streams()] == \
        [{k: v for k, v in s.items() if k != "id"} for s in b.streams()]
    assert a.skipped() == b.skipped()


def test_the_writer_refuses_a_schema_1_store_with_the_fix(tmp_path: Path) -> None:
    old = tmp_path / "events.sqlite"
    con = sqlite3.connect(old)
    con.executescript(SCHEMA1_SQL)
    con.execute("INSERT INTO streams VALUES (1, 'flood.flood_events', 1)")
    con.execute("INSERT INTO events(ts_ns, stream_id, record) VALUES (?, 1, '{\"seq\":1}')",
                (time.time_ns(),))
    con.commit()
    con.close()
    with pytest.raises(BpfDepotError) as info:
        sink(old)
    assert info.value.message == (
        f"the time-series store {old} has schema 1 (one row per event, written by an older "
        "bpfdepot); this bpfdepot writes schema 2 (one row per batch of events)")
    assert info.value.hint == (
        f"move {old} away (bpfdepot query --db and bpfdepot ui --db still read it) and run again "
        "to start a new store, or give run another path with --tsdb PATH")
    tables = {n for (n,) in sqlite3.connect(old).execute("SELECT name FROM sqlite_master")}
    assert "chunks" not in tables  # left as it was
    assert [r["seq"] for r in ask(old).rows] == [1]  # and still readable
