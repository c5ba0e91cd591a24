"""Every SQL statement the web view runs, so a change of the store's schema touches one module.

Two files. **The store** (loader/sinks/tsdb.py, schema 2 or 1) is opened read-only (a ``mode=ro``
URI and ``query_only``): ``bpfdepot run`` may be writing it. **The rollup cache** is the UI's
own SQLite file (default ``<store>.ui-cache`` beside it): events summed per slot of 10 s, 1 min
and 10 min and per label group (comm, unit, pod, namespace) — latency as quarter-octave
histograms, edge bytes, drop counts, stack values. A page reads the cache, never millions of
raw rows: the store needs ~1 s per million rows to json_extract a group-by (tsdb.py), far over
the 300 ms a page may take. Totals read the coarsest slots that fit inside the range and finer
ones at its ends (``Slots.pieces``), so an hour is six 10-min slots plus a few others.

The cache grows incrementally from a watermark, the highest id it has summed (a ``chunks.id``
in schema 2, where a row holds a run of records; an ``events.id`` in schema 1, a row per
record): the writer commits in id order (one write lock), so every later row has a higher id.
The rows past the watermark are summed in steps of about CHUNK_ROWS records, each stream's
read through the (stream_id, ts_ns) index within the step's time window (in schema 2 each chunk
then through json_each, one pass per chunk), each step committed with its new watermark (a
killed UI resumes where it stopped; a second UI on the same cache skips a step the first one
summed).
Additive streams (events, stack counts that reset per read) are summed in SQL with the store
attached read-only, one JSON parse per row, grouped at once; cumulative ones
(hash maps and histograms read without reset: topology edges, drop counts, RTT histograms) are
turned into increases per key in Python, with the last value of every key kept in the cache.
A store replaced under the UI (another first stream, or ids that went backwards) empties the cache.
The fine levels are pruned (KEEP_S before the newest event) so the cache stops growing at the
rate of its 10 s slots; a range reaching back past them is read from coarser slots.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

from loader.ui import UiError

SLOT_NS = 10 * 10**9       # the rollup's time resolution: 10 s
CHUNK_ROWS = 50_000        # store records summed per cache transaction (at least one chunk)
CACHE_SCHEMA = "4"
TSDB_SCHEMAS = ("1", "2")  # loader/sinks/tsdb.py: a row per record (1) or per run of records (2)
LABELS = ("comm", "unit", "pod", "namespace")
BUSY_MS = 5000

# the channel part of a stream name → what the rollup makes of it
CHANNEL_KINDS = {"tcp_connlat_events": "connect", "tcp_connlat_failures": "connfail",
                 "l7_events": "l7", "filelat_events": "file", "rtt_hists": "rtt",
                 "topology_edges": "edge", "drops": "drop", "resets": "reset",
                 "retrans_counts": "retrans"}

LEVELS = (1, 6, 60)        # rollup levels: slots of 10 s, 1 min and 10 min (in 10 s slots)
# how long before the newest event the fine levels are kept: 10 s slots for 2 days, 1 min slots
# for 14 days, 10 min slots for as long as the cache lives (a day of them is 144 per group)
KEEP_S = (2 * 86400, 14 * 86400)
PRUNE_EVERY_S = 600.0

# Every table keeps each level (lv: 0, 1, 2) keyed by (lv, slot, …): a page over a long range
# reads coarse slots (an hour is 60 one-minute slots), and rolling a chunk up is an upsert per
# level from the chunk's own rows, never a re-read of the cache.
_CACHE_SQL = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams(id INTEGER PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lat(lv INT, slot INT, metric TEXT, comm TEXT, unit TEXT, pod TEXT,
    namespace TEXT, q INT, n INT, sum_ns REAL, errors INT,
    PRIMARY KEY(lv, slot, metric, comm, unit, pod, namespace, q)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lat_peer(lv INT, slot INT, metric TEXT, peer TEXT, comm TEXT, q INT, n INT,
    PRIMARY KEY(lv, slot, metric, peer, comm, q)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS edge(lv INT, slot INT, dir TEXT, pid INT, comm TEXT, unit TEXT, pod TEXT,
    namespace TEXT, laddr TEXT, lport INT, raddr TEXT, rport INT, tx INT, rx INT, conns INT, closed INT,
    PRIMARY KEY(lv, slot, dir, pid, comm, unit, pod, namespace, laddr, lport, raddr, rport)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cnt(lv INT, slot INT, kind TEXT, a TEXT, b TEXT, c TEXT, d TEXT, comm TEXT,
    unit TEXT, pod TEXT, namespace TEXT, n INT, n2 INT,
    PRIMARY KEY(lv, slot, kind, a, b, c, d, comm, unit, pod, namespace)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stack(lv INT, slot INT, program TEXT, comm TEXT, unit TEXT, pod TEXT,
    namespace TEXT, pid INT, stack TEXT, nk INT, value INT, unit_name TEXT,
    PRIMARY KEY(lv, slot, program, comm, unit, pod, namespace, pid, stack)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS last(stream_id INT, key TEXT, vals TEXT, PRIMARY KEY(stream_id, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS skipped(stream_id INTEGER PRIMARY KEY, n INT NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS ev(slot INT, comm TEXT, unit TEXT, pod TEXT, namespace TEXT,
    metric TEXT, q INT, peer TEXT, role TEXT, n INT, ns REAL, err INT);
CREATE TEMP TABLE IF NOT EXISTS st(slot INT, comm TEXT, unit TEXT, pod TEXT, namespace TEXT,
    pid INT, stack TEXT, nk INT, value INT, unit_name TEXT, n INT);
"""
_TABLES = ("streams", "lat", "lat_peer", "edge", "cnt", "stack", "last", "skipped")

# json paths of the label columns, in LABELS order; '' when a record has none
_LABEL_SQL = ("coalesce(json_extract(record, '$.comm'), '')",
              "coalesce(json_extract(record, '$.labels.unit'), '')",
              "coalesce(json_extract(record, '$.labels.pod'), '')",
              "coalesce(json_extract(record, '$.labels.namespace'), '')")
_L = ", ".join(_LABEL_SQL)
# a call's latency in ns: ``latency_us`` (processors, l7, filelat) or ``delta_ns`` (tcp_connlat's
# own event, decoded from BTF without its processor)
_NS = ("coalesce(json_extract(record, '$.latency_us') * 1000.0, "
       "json_extract(record, '$.delta_ns') * 1.0)")
# quarter-octave bucket of a latency in ns: [2^(q/4), 2^((q+1)/4))
_Q = f"CAST(floor(4 * log2(max({_NS}, 1.0))) AS INT)"
_L7_METRIC = ("CASE json_extract(record, '$.protocol') WHEN 'http1' THEN 'http' WHEN 'http2' THEN "
              "CASE WHEN json_type(record, '$.grpc_status') IS NULL THEN 'http' ELSE 'grpc' END "
              "ELSE json_extract(record, '$.protocol') END")
_TO_PEER = "json_extract(record, '$.daddr') || ':' || json_extract(record, '$.dport')"
# the rows of one stream in one step of ids, found through the (stream_id, ts_ns) index within
# the step's time window: a rowid range would read every stream's rows once per stream, and
# the index alone (stream_id) would walk the stream's whole history for every step
_CHUNK = "stream_id = ? AND ts_ns BETWEEN ? AND ? AND id > ? AND id <= ?"


class Layout(NamedTuple):
    """How the rollup reads one schema of the store: ``table`` has a row per stored unit (id,
    stream_id, ts_ns); ``rows`` is a FROM clause giving one row per record (ts_ns, record, in
    insertion order by ``order``) of one stream in one step, for the parameters of _CHUNK;
    ``count`` counts those records without reading them. ``{db}`` is "t." (the attached
    store) or "" (the store's own connection)."""

    schema: str
    table: str
    rows: str
    order: str
    count: str


LAYOUTS = {
    "1": Layout(schema="1", table="events", order="id",
                rows=f"FROM {{db}}events INDEXED BY events_stream_ts WHERE {_CHUNK}",
                count=f"SELECT count(*) FROM {{db}}events INDEXED BY events_stream_ts WHERE {_CHUNK}"),
    "2": Layout(schema="2", table="chunks", order="id, ix",
                rows=("FROM (SELECT c.ts_ns AS ts_ns, j.value AS record, c.id AS id, j.key AS ix "
                      "FROM {db}chunks AS c INDEXED BY chunks_stream_ts, json_each(c.records) AS j "
                      "WHERE c.stream_id = ? AND c.ts_ns BETWEEN ? AND ? AND c.id > ? AND c.id <= ?) "
                      "WHERE true"),
                count=("SELECT coalesce(sum(n), 0) FROM {db}chunks INDEXED BY chunks_stream_ts "
                       f"WHERE {_CHUNK}")),
}
# one JSON pass per row, grouped at once by everything any table keys on: each level of each
# table is then summed from these few groups (a chunk of 50,000 events makes ~1,000 of them)
_EXTRACT_EV = (f"INSERT INTO temp.ev SELECT ts_ns / {SLOT_NS}, {_L}, {{metric}}, {{q}}, {{peer}}, "
               f"{{role}}, count(*), sum({{ns}}), sum({{err}}) {{rows}} {{cond}} "
               "GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9")
_EXTRACT_ST = (f"INSERT INTO temp.st SELECT ts_ns / {SLOT_NS}, {_L}, coalesce(json_extract(record, "
               "'$.pid'), 0), json_extract(record, '$.stack'), max(coalesce(json_array_length(record, "
               "'$.kernel'), 0)), sum(json_extract(record, '$.value')), coalesce(json_extract(record, "
               "'$.unit'), 'samples'), count(*) {rows} AND json_type(record, '$.stack') = 'text' "
               "AND json_type(record, '$.value') IN ('integer', 'real') GROUP BY 1, 2, 3, 4, 5, 6, 7, 10")
_NUMBER = ("AND (json_type(record, '$.latency_us') IN ('integer', 'real') "
           "OR json_type(record, '$.delta_ns') IN ('integer', 'real'))")
_LATENCY = {"q": _Q, "ns": _NS,
            "err": "json_type(record, '$.error') IS NOT NULL", "role": "''", "cond": _NUMBER}
_EV_FIELDS = {
    "connect": {**_LATENCY, "metric": "'connect'", "peer": _TO_PEER},
    "file": {**_LATENCY, "metric": "'file'", "peer": "''"},
    "l7": {**_LATENCY, "metric": _L7_METRIC, "peer": "coalesce(json_extract(record, '$.peer'), '')",
           "role": "coalesce(json_extract(record, '$.role'), '')"},
    "connfail": {"metric": "coalesce(json_extract(record, '$.error'), '')", "q": "0", "ns": "0",
                 "err": "1", "peer": _TO_PEER, "role": "''", "cond": ""},
}
_ROLL_LAT = ("INSERT INTO lat SELECT ?, slot / ?, metric, comm, unit, pod, namespace, q, sum(n), sum(ns), "
             "sum(err) FROM temp.ev WHERE true GROUP BY 2, 3, 4, 5, 6, 7, 8 ON CONFLICT DO UPDATE SET "
             "n = n + excluded.n, sum_ns = sum_ns + excluded.sum_ns, errors = errors + excluded.errors")
_ROLL_PEER = ("INSERT INTO lat_peer SELECT ?, slot / ?, metric, peer, comm, q, sum(n) FROM temp.ev WHERE "
              "peer != '' GROUP BY 2, 3, 4, 5, 6 ON CONFLICT DO UPDATE SET n = n + excluded.n")
_ROLL_CNT = ("INSERT INTO cnt SELECT ?, slot / ?, ?, peer, metric, role, '', comm, unit, pod, namespace, "
             "sum(n), sum(err) FROM temp.ev WHERE true GROUP BY 2, 4, 5, 6, 8, 9, 10, 11 "
             "ON CONFLICT DO UPDATE SET n = n + excluded.n, n2 = n2 + excluded.n2")
_ROLL_STACK = ("INSERT INTO stack SELECT ?, slot / ?, ?, comm, unit, pod, namespace, pid, stack, max(nk), "
               "sum(value), max(unit_name) FROM temp.st WHERE true GROUP BY 2, 4, 5, 6, 7, 8, 9 "
               "ON CONFLICT DO UPDATE SET value = value + excluded.value, nk = max(nk, excluded.nk)")
_UPSERT = {  # rows made in Python (cumulative counters), one statement per table
    "lat": ("INSERT INTO lat VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
            "n = n + excluded.n, sum_ns = sum_ns + excluded.sum_ns"),
    "lat_peer": "INSERT INTO lat_peer VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET n = n + excluded.n",
    "edge": ("INSERT INTO edge VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO "
             "UPDATE SET tx = tx + excluded.tx, rx = rx + excluded.rx, conns = conns + excluded.conns, "
             "closed = closed + excluded.closed"),
    "cnt": ("INSERT INTO cnt VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
            "n = n + excluded.n, n2 = n2 + excluded.n2"),
}
_CUMULATIVE = {  # kind → (key fields, value fields) read from each snapshot record
    "edge": (("direction", "pid", "comm", "cgroup", "protocol", "family", "laddr", "lport", "raddr",
              "rport"), ("bytes_tx", "bytes_rx", "conns", "closed")),
    "drop": (("reason", "protocol", "ethertype", "port", "location"), ("count",)),
    "reset": (("port", "ethertype", "state"), ("count",)),
    "retrans": (("daddr", "dport", "family", "state"), ("count",)),
}


_IN_W = "lv = ? AND slot BETWEEN ? AND ?"


class Slots(NamedTuple):
    """A range of rollup slots: level ``lv`` (slots of LEVELS[lv] × 10 s), slots s0..s1, read
    in steps of ``step`` slots; ``lo0``..``hi0`` the range in 10 s slots, exactly."""

    lv: int
    s0: int
    s1: int
    step: int
    lo0: int
    hi0: int
    kept: tuple[int, int] = (0, 0)  # the oldest 10 s slot still held at levels 0 and 1

    def sql(self) -> tuple[int, int, int]:
        return self.lv, self.s0, self.s1

    def pieces(self) -> list[tuple[int, int, int]]:
        """(lv, first, last) covering lo0..hi0 exactly with the fewest slots: the coarsest
        level inside, finer ones at both ends (totals need no series, so they read these)."""
        out: list[tuple[int, int, int]] = []

        def cover(lv: int, lo: int, hi: int) -> None:  # lo..hi in 10 s slots, inclusive
            if lo > hi:
                return
            if lv == 0:
                out.append((0, lo, hi))
                return
            f = LEVELS[lv]
            first, last = -(-lo // f), (hi + 1) // f - 1  # whole coarse slots inside
            if first > last:
                cover(lv - 1, lo, hi)
                return
            cover(lv - 1, lo, first * f - 1)
            out.append((lv, first, last))
            cover(lv - 1, (last + 1) * f, hi)

        lo, hi = self.lo0, self.hi0
        k0, k1 = self.kept  # where the fine levels were pruned, the ends widen to coarse slots
        lo -= lo % LEVELS[2] if lo < k1 else lo % LEVELS[1] if lo < k0 else 0
        hi += (LEVELS[2] - 1 - hi % LEVELS[2]) if hi < k1 else (LEVELS[1] - 1 - hi % LEVELS[1]) if hi < k0 else 0
        cover(len(LEVELS) - 1, lo, hi)
        return out


def _pieces(w: Slots) -> tuple[str, list[int]]:
    parts = w.pieces()
    return "(" + " OR ".join(["(lv = ? AND slot BETWEEN ? AND ?)"] * len(parts)) + ")", \
        [x for part in parts for x in part]


def q_bounds(q: int) -> tuple[float, float]:
    """The ns range ``[lo, hi)`` of quarter-octave bucket ``q``."""
    return 2 ** (q / 4), 2 ** ((q + 1) / 4)


def _q_of(ns: float) -> int:
    return math.floor(4 * math.log2(max(ns, 1.0)))


def _log2(x: float) -> float:
    return math.log2(x) if x > 0 else float("-inf")


def _ro_uri(path: Path) -> str:
    return f"file:{quote(str(path))}?mode=ro"


class Data:
    """The store (read-only) and the rollup cache of one ``bpfdepot ui``; safe across threads:
    reads use a connection per thread, ``refresh`` runs one at a time."""

    def __init__(self, db: Path, cache: Path) -> None:
        self.db = db
        self.cache = cache
        self._local = threading.local()
        self._refresh_lock = threading.Lock()
        self.building: tuple[int, int] | None = None  # (rows summed, rows to sum) while catching up
        self.caught_up = False  # the cache has held every row of the store once
        self._pruned_at = -PRUNE_EVERY_S
        self.layout = LAYOUTS["2"]  # the store's, once store() has read its schema

    # -- opening ------------------------------------------------------------------------------

    def store(self) -> sqlite3.Connection:
        """This thread's read-only connection to the store; UiError 503 when it is missing,
        not a store, corrupt or of another schema."""
        if not self.db.is_file():
            raise UiError(503, f"no time-series store at {self.db}",
                          f"run a program with the tsdb sink on, e.g. sudo bpfdepot run bpf/topology "
                          f"--tsdb {self.db}; or start bpfdepot ui --db PATH")
        db = getattr(self._local, "store", None)
        if db is None:
            try:
                db = sqlite3.connect(_ro_uri(self.db), uri=True, timeout=BUSY_MS / 1000,
                                     check_same_thread=False)
                db.execute("PRAGMA query_only = ON")
                row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            except sqlite3.Error as exc:
                raise UiError(503, f"cannot read the time-series store {self.db}: {exc}",
                              f"move {self.db} away (it is not a bpfdepot store, or it is damaged: "
                              f"sqlite3 {self.db} 'PRAGMA integrity_check') or start bpfdepot ui --db "
                              "with another store") from None
            if row is None or row[0] not in TSDB_SCHEMAS:
                db.close()
                raise UiError(503, f"the time-series store {self.db} has schema {row and row[0]}; "
                                   f"this bpfdepot reads schemas {', '.join(TSDB_SCHEMAS)}",
                              "view it with the bpfdepot that wrote it")
            self.layout = LAYOUTS[row[0]]
            self._local.store = db
        return db

    def _cache(self) -> sqlite3.Connection:
        db = getattr(self._local, "cache", None)
        if db is None:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(self.cache), timeout=BUSY_MS / 1000, check_same_thread=False,
                                 uri=False, isolation_level=None)
            try:
                db.execute("SELECT log2(2)")
            except sqlite3.OperationalError:  # an SQLite built without its math functions
                db.create_function("log2", 1, _log2, deterministic=True)
            try:
                old = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            except sqlite3.OperationalError:
                old = None  # a new file
            if old is not None and old[0] != CACHE_SCHEMA:  # another layout: start over
                for table in ("meta", *_TABLES):
                    db.execute(f"DROP TABLE IF EXISTS {table}")
            db.execute("PRAGMA temp_store = MEMORY")  # before the temp tables: setting it drops them
            db.executescript(_CACHE_SQL)
            db.execute("PRAGMA synchronous = NORMAL")
            self._local.cache = db
        return db

    def close(self) -> None:
        """Close this thread's connections."""
        for name in ("store", "cache"):
            db = getattr(self._local, name, None)
            if db is not None:
                db.close()
                setattr(self._local, name, None)

    # -- the store itself ---------------------------------------------------------------------

    def streams(self) -> list[dict[str, Any]]:
        """Every stream with its first and last event time (through the stream/ts index)."""
        db = self.store()
        try:
            table = self.layout.table
            rows = db.execute(f"SELECT s.id, s.name, s.created_ns, (SELECT min(ts_ns) FROM {table} "
                              f"WHERE stream_id = s.id), (SELECT max(ts_ns) FROM {table} WHERE "
                              "stream_id = s.id) FROM streams AS s ORDER BY s.name").fetchall()
        except sqlite3.Error as exc:
            raise _broken(self.db, exc) from None
        return [{"id": i, "name": n, "program": n.partition(".")[0],
                 "channel": n.split(".")[1] if "." in n else "", "created_ns": c,
                 "first_ns": lo, "last_ns": hi} for i, n, c, lo, hi in rows]

    def l7_records(self, sids: list[int], slots: list[int], comm: str, peer: str,
                   limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` l7 records of a client ``comm`` to ``peer`` within the given
        10 s ``slots`` (recent_slots finds those holding its calls: a bounded read)."""
        if not sids or not slots:
            return []
        marks = ",".join("?" * len(sids))
        found: list[tuple[int, str]] = []
        for slot in sorted(slots, reverse=True):
            try:
                found += self.store().execute(
                    f"SELECT ts_ns, record FROM events WHERE stream_id IN ({marks}) AND ts_ns >= ? "
                    "AND ts_ns < ? AND json_extract(record, '$.comm') = ? AND json_extract(record, "
                    "'$.peer') = ? ORDER BY ts_ns DESC LIMIT ?",
                    [*sids, slot * SLOT_NS, (slot + 1) * SLOT_NS, comm, peer, limit - len(found)]).fetchall()
            except sqlite3.Error as exc:
                raise _broken(self.db, exc) from None
            if len(found) >= limit:
                break
        return [{"ts_ns": ts, **json.loads(text)} for ts, text in found]

    # -- keeping the cache current ------------------------------------------------------------

    def refresh(self, max_rows: int | None = None, *, wait: bool = True) -> int:
        """Sum the store's rows past the watermark into the cache; the rows still not summed.
        ``max_rows``: do nothing when more are waiting (a page's own call, which never waits
        for a long catch-up); ``wait=False``: do nothing while another refresh runs."""
        store = self.store()
        if not self._refresh_lock.acquire(blocking=wait):
            return self._behind(store)
        try:
            cache = self._cache()
            try:
                top = self._top(store)
                sids = dict(store.execute("SELECT id, name FROM streams").fetchall())
            except sqlite3.Error as exc:
                raise _broken(self.db, exc) from None
            mark = self._checked_watermark(cache, top, sids)
            if mark >= top:
                self.caught_up = True
                return 0
            if max_rows is not None:
                behind = self._rows_after(store, mark, top)
                if behind > max_rows:
                    return behind
            self._catch_up(cache, store, sids, mark, top)
            self.caught_up = True
            return 0
        finally:
            self._refresh_lock.release()

    def behind(self) -> int:
        """How many store rows the cache has not summed yet (no lock: a refresh may be running)."""
        return self._behind(self.store())

    def _behind(self, store: sqlite3.Connection) -> int:
        try:
            top = self._top(store)
            mark = self.watermark()[0]
            return self._rows_after(store, mark, top) if mark < top else 0
        except sqlite3.Error as exc:
            raise _broken(self.db, exc) from None

    def _top(self, store: sqlite3.Connection) -> int:
        """The store's highest row id (a chunk's in schema 2), 0 when empty."""
        (top,) = store.execute(f"SELECT coalesce(max(id), 0) FROM {self.layout.table}").fetchone()
        return top

    def _rows_after(self, store: sqlite3.Connection, mark: int, top: int) -> int:
        """Records in the rows with ids in (mark, top]."""
        if self.layout.table == "events":
            return top - mark
        (n,) = store.execute("SELECT coalesce(sum(n), 0) FROM chunks WHERE id > ? AND id <= ?",
                             (mark, top)).fetchone()
        return n

    def _step(self, store: sqlite3.Connection, mark: int, top: int) -> tuple[int, int]:
        """The end of the next step past ``mark`` (about CHUNK_ROWS records, at least one row)
        and the records in it."""
        if self.layout.table == "events":
            hi = min(mark + CHUNK_ROWS, top)
            return hi, hi - mark
        hi, n = mark, 0
        for cid, rows in store.execute("SELECT id, n FROM chunks WHERE id > ? AND id <= ? ORDER BY id",
                                       (mark, top)):
            hi, n = cid, n + rows
            if n >= CHUNK_ROWS:
                break
        return (hi, n) if hi > mark else (top, 0)  # (none left: retention took them)

    def _catch_up(self, cache: sqlite3.Connection, store: sqlite3.Connection, sids: dict[int, str],
                  mark: int, top: int) -> None:
        self._attach(cache)
        try:
            kinds = self._kinds(cache, store, sids)
            done, total = 0, self._rows_after(store, mark, top)
            while mark < top:
                hi, rows = self._step(store, mark, top)
                self.building = (done, total)
                done += rows
                cache.execute("BEGIN IMMEDIATE")
                now = cache.execute("SELECT value FROM meta WHERE key = 'watermark'").fetchone()
                if now is None or int(now[0]) != mark:  # another bpfdepot ui on this cache got here first
                    cache.execute("ROLLBACK")
                    mark = int(now[0]) if now else top
                    continue
                try:
                    self._sum(cache, store, kinds, mark, hi)
                    cache.execute("INSERT OR REPLACE INTO meta VALUES ('watermark', ?)", (str(hi),))
                    cache.execute("COMMIT")
                except BaseException:
                    cache.execute("ROLLBACK")
                    raise
                mark = hi
            if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
                self._pruned_at = time.monotonic()
                self._prune(cache)
        except sqlite3.Error as exc:
            raise UiError(503, f"summing the store {self.db} into the UI cache {self.cache} "
                               f"failed: {exc}", f"remove {self.cache} (it is rebuilt), or "
                               f"check the store: sqlite3 {self.db} 'PRAGMA integrity_check'") from None
        finally:
            cache.execute("DETACH t")
            self.building = None

    def kept(self) -> tuple[int, int]:
        """The oldest 10 s slot the cache still holds at levels 0 and 1 (0: all)."""
        meta = dict(self._rows("SELECT key, value FROM meta WHERE key IN ('kept0', 'kept1')", []))
        return int(meta.get("kept0", 0)), int(meta.get("kept1", 0))

    def _prune(self, cache: sqlite3.Connection) -> None:
        """Drop the fine levels' slots older than KEEP_S before the newest event (never after
        now: a record dated in the future must not empty the cache); the coarse ones stay."""
        fresh = cache.execute("SELECT value FROM meta WHERE key = 'fresh_ns'").fetchone()
        if fresh is None:
            return
        newest = min(int(fresh[0]), time.time_ns()) // SLOT_NS
        k0 = newest - KEEP_S[0] * 10**9 // SLOT_NS
        k1 = newest - KEEP_S[1] * 10**9 // SLOT_NS
        k0, k1 = k0 - k0 % LEVELS[1], k1 - k1 % LEVELS[2]  # whole coarser slots below each
        if (k0, k1) <= self.kept() or k0 <= 0:
            return
        cache.execute("BEGIN IMMEDIATE")
        for table in ("lat", "lat_peer", "edge", "cnt", "stack"):
            cache.execute(f"DELETE FROM {table} WHERE lv = 0 AND slot < ?", (k0,))
            cache.execute(f"DELETE FROM {table} WHERE lv = 1 AND slot < ?", (k1 // LEVELS[1],))
        cache.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [("kept0", str(k0)), ("kept1", str(k1))])
        cache.execute("COMMIT")

    def watermark(self) -> tuple[int, int]:
        """(the last store id summed, the store time of the newest summed slot's end in ns)."""
        cache = self._cache()
        mark = cache.execute("SELECT value FROM meta WHERE key = 'watermark'").fetchone()
        fresh = cache.execute("SELECT value FROM meta WHERE key = 'fresh_ns'").fetchone()
        return int(mark[0]) if mark else 0, int(fresh[0]) if fresh else 0

    def _attach(self, cache: sqlite3.Connection) -> None:
        # read-only: SQLite refuses any write through "t"; the URI flag makes ATTACH read it
        cache.execute("ATTACH DATABASE ? AS t", (_ro_uri(self.db),))

    def _checked_watermark(self, cache: sqlite3.Connection, top: int, sids: dict[int, str]) -> int:
        """The watermark, after emptying the cache when it summed another store."""
        # the first stream's creation time (ns) names a store: a file replaced under the same
        # name (even one that reuses the inode) has another
        (first,) = self.store().execute("SELECT min(created_ns) FROM streams").fetchone()
        identity = str(first or "") + ("" if self.layout.schema == "1" else f"/{self.layout.schema}")
        meta = dict(cache.execute("SELECT key, value FROM meta").fetchall())
        known = dict(cache.execute("SELECT id, name FROM streams").fetchall())
        mark = int(meta.get("watermark", 0))
        same = (meta.get("schema") == CACHE_SCHEMA and meta.get("store") == identity and mark <= top
                and all(sids.get(i) == n for i, n in known.items()))
        if not same:
            cache.execute("BEGIN IMMEDIATE")
            for table in _TABLES + ("meta",):
                cache.execute(f"DELETE FROM {table}")
            cache.executemany("INSERT INTO meta VALUES (?, ?)",
                              [("schema", CACHE_SCHEMA), ("store", identity), ("watermark", "0")])
            cache.execute("COMMIT")
            mark = 0
        return mark

    def _kinds(self, cache: sqlite3.Connection, store: sqlite3.Connection,
               sids: dict[int, str]) -> dict[int, tuple[str, str]]:
        """stream id → (kind, program), judging new streams by their channel name, or (stack
        programs, whatever their names) by their first record."""
        known = {i: k for i, k in cache.execute("SELECT id, kind FROM streams")}
        for sid, name in sids.items():
            if sid in known:
                continue
            parts = name.split(".")
            kind = CHANNEL_KINDS.get(parts[1] if len(parts) > 1 else "", "")
            first = store.execute("SELECT record FROM events WHERE stream_id = ? LIMIT 1",
                                  (sid,)).fetchone()
            if first is None:
                continue  # judged once it has a row
            if kind == "drop" and '"reason"' not in first[0]:
                kind = ""  # another program's channel called "drops"
            if not kind and '"stack"' in first[0] and '"value"' in first[0]:
                kind = "stack"
            cache.execute("INSERT INTO streams VALUES (?, ?, ?)", (sid, name, kind))
            known[sid] = kind
        return {i: (k, sids[i].partition(".")[0]) for i, k in known.items() if k and i in sids}

    def _sum(self, cache: sqlite3.Connection, store: sqlite3.Connection,
             kinds: dict[int, tuple[str, str]], lo: int, hi: int) -> None:
        """Add the store rows with ids in (lo, hi] to the cache."""
        tlo, thi = store.execute(f"SELECT min(ts_ns), max(ts_ns) FROM {self.layout.table} WHERE id > ? "
                                 "AND id <= ?", (lo, hi)).fetchone()
        if tlo is None:
            return  # retention deleted these rows meanwhile
        window = (tlo, thi)
        rows = self.layout.rows.format(db="t.")
        for sid, (kind, program) in kinds.items():
            args = (sid, tlo, thi, lo, hi)
            if kind in ("connect", "file", "l7", "connfail"):
                cache.execute("DELETE FROM temp.ev")
                cache.execute(_EXTRACT_EV.format(**_EV_FIELDS[kind], rows=rows), args)
                self._count_skipped(cache, sid, args, "ev")
                for lv, factor in enumerate(LEVELS):
                    if kind != "connfail":
                        cache.execute(_ROLL_LAT, (lv, factor))
                    if kind != "file":
                        cache.execute(_ROLL_PEER if kind != "connfail" else _ROLL_CNT,
                                      (lv, factor) if kind != "connfail" else (lv, factor, "connfail"))
                    if kind == "l7":  # calls and errors per peer and client, for the service map
                        cache.execute(_ROLL_CNT, (lv, factor, "l7"))
            elif kind == "stack":
                cache.execute("DELETE FROM temp.st")
                cache.execute(_EXTRACT_ST.format(rows=rows), args)
                self._count_skipped(cache, sid, args, "st")
                for lv, factor in enumerate(LEVELS):
                    cache.execute(_ROLL_STACK, (lv, factor, program))
            elif kind == "rtt":
                self._sum_histograms(cache, store, sid, window, lo, hi)
            else:
                self._sum_cumulative(cache, store, kind, sid, window, lo, hi)
        cache.execute("INSERT OR REPLACE INTO meta VALUES ('fresh_ns', ?)", (str(thi),))

    def _count_skipped(self, cache: sqlite3.Connection, sid: int, args: tuple, temp: str) -> None:
        """Rows of the step the extraction left out (no latency, no stack): counted, not hidden.
        The total comes without JSON (the index, or chunks' counts), the used ones from the
        groups' counts."""
        (total,) = cache.execute(self.layout.count.format(db="t."), args).fetchone()
        (used,) = cache.execute(f"SELECT coalesce(sum(n), 0) FROM temp.{temp}").fetchone()
        if total > used:
            cache.execute("INSERT INTO skipped VALUES (?, ?) ON CONFLICT DO UPDATE SET n = n + excluded.n",
                          (sid, total - used))

    def skipped(self) -> dict[str, int]:
        """Stream name → rows the pages cannot use (a summed stream's records without the field
        a page reads, e.g. a connect event with no latency)."""
        return dict(self._rows("SELECT s.name, k.n FROM skipped AS k JOIN streams AS s ON s.id = k.stream_id "
                               "ORDER BY s.name", []))

    @staticmethod
    def _upsert(cache: sqlite3.Connection, table: str, rows: list[tuple]) -> None:
        """Level-0 rows ``(slot, …)`` of ``table`` added at every level."""
        for lv, factor in enumerate(LEVELS):
            cache.executemany(_UPSERT[table], [(lv, r[0] // factor, *r[1:]) for r in rows])

    def _last(self, cache: sqlite3.Connection, sid: int) -> dict[str, list[float]]:
        return {k: json.loads(v) for k, v in
                cache.execute("SELECT key, vals FROM last WHERE stream_id = ?", (sid,))}

    def _save_last(self, cache: sqlite3.Connection, sid: int, changed: dict[str, list[float]]) -> None:
        cache.executemany("INSERT OR REPLACE INTO last VALUES (?, ?, ?)",
                          [(sid, k, json.dumps(v)) for k, v in changed.items()])

    def _sum_cumulative(self, cache: sqlite3.Connection, store: sqlite3.Connection, kind: str,
                        sid: int, window: tuple[int, int], lo: int, hi: int) -> None:
        """Snapshots of counters since load → increases per slot; a value that went down is a
        counter that started again (the program was reloaded), so its new value is the increase."""
        keys, values = _CUMULATIVE[kind]
        cols = ", ".join(f"json_extract(record, '$.{f}')" for f in keys + values)
        last = {tuple(json.loads(k)): v for k, v in self._last(cache, sid).items()}
        changed: dict[tuple, list[float]] = {}
        sums: dict[tuple, list[float]] = {}
        cut = 5 + len(keys)  # row: slot, 4 labels, key fields, values
        rows = self.layout.rows.format(db="")
        for row in store.execute(f"SELECT ts_ns / {SLOT_NS}, {_L}, {cols} {rows} ORDER BY "
                                 f"{self.layout.order}", (sid, *window, lo, hi)):
            k = row[1:cut]
            vals = [v if v.__class__ in (int, float) else 0 for v in row[cut:]]
            before = changed.get(k) or last.get(k)
            changed[k] = vals
            if before is not None:
                vals = [v - b if v >= b else v for v, b in zip(vals, before)]
            if any(vals):
                acc = sums.get((row[0], *k))
                if acc is None:
                    sums[(row[0], *k)] = list(vals)
                else:
                    for i, v in enumerate(vals):
                        acc[i] += v
        self._save_last(cache, sid, {json.dumps(k): v for k, v in changed.items()})
        if kind == "edge":
            self._upsert(cache, "edge", [
                (slot, d or "", p or 0, c or "", u, po, ns, la or "", lp or 0, ra or "", rp or 0, *v)
                for (slot, _c2, u, po, ns, d, p, c, _cg, _pr, _fa, la, lp, ra, rp), v in sums.items()])
            return
        rows = []
        for (slot, *rest), v in sums.items():
            labels, key = rest[:4], rest[4:]
            if kind == "drop":  # reason, protocol, port, location
                a, b, c, d = key[0], key[1], key[3], key[4]
            elif kind == "reset":  # port, state
                a, b, c, d = key[0], key[2], "", ""
            else:  # retrans: daddr, dport, state
                a, b, c, d = key[0], key[1], key[3], ""
            rows.append((slot, kind, *("" if x is None else str(x) for x in (a, b, c, d)), *labels, v[0], 0))
        self._upsert(cache, "cnt", rows)

    def _sum_histograms(self, cache: sqlite3.Connection, store: sqlite3.Connection, sid: int,
                        window: tuple[int, int], lo: int, hi: int) -> None:
        """Cumulative log2 µs histograms (tcp_rtt) → increases per slot, each slot's count put
        in the quarter-octave bucket at the middle of its log2 range."""
        last = self._last(cache, sid)
        changed: dict[str, list[float]] = {}
        sums: dict[tuple, int] = {}
        for slot, text in store.execute(f"SELECT ts_ns / ?, record {self.layout.rows.format(db='')} "
                                        f"ORDER BY {self.layout.order}",
                                        (SLOT_NS, sid, *window, lo, hi)):
            rec = json.loads(text)
            buckets = rec.get("buckets")
            if not isinstance(buckets, list):
                continue
            labels = rec.get("labels") or {}
            lab = (str(rec.get("comm", "")), *(str(labels.get(x, "")) for x in LABELS[1:]))
            peer = f"{rec.get('daddr', '')}:{rec.get('dport', '')}" if "daddr" in rec else ""
            key = json.dumps([{k: v for k, v in rec.items() if k not in _HIST_FIELDS}])
            counts = [b.get("count", 0) for b in buckets]
            before = changed.get(key) or last.get(key)
            if before is not None and len(before) == len(counts) and all(
                    c >= b for c, b in zip(counts, before)):
                delta = [c - b for c, b in zip(counts, before)]
            else:
                delta = counts
            changed[key] = counts
            prev_le = 0.5
            for b, d in zip(buckets, delta):
                le = b.get("le")
                le = prev_le * 2 + 1 if not isinstance(le, (int, float)) else le
                if d:
                    q = _q_of(1000.0 * (prev_le + 1 + le) / 2 if le > prev_le else 1000.0 * le)
                    acc_key = (slot, *lab, peer, q)
                    sums[acc_key] = sums.get(acc_key, 0) + d
                prev_le = le
        self._save_last(cache, sid, changed)
        self._upsert(cache, "lat", [(s, "rtt", c, u, p, ns, q, n, n * 2 ** ((q + 0.5) / 4), 0)
                                    for (s, c, u, p, ns, _peer, q), n in sums.items()])
        self._upsert(cache, "lat_peer", [(s, "rtt", peer, c, q, n)
                                         for (s, c, _u, _p, _ns, peer, q), n in sums.items() if peer])

    # -- reading the cache (pages.py shapes the answers) --------------------------------------

    def latency(self, metric: str, w: Slots, by: str,
                filters: dict[str, list[str]]) -> list[tuple[int, str, int, int, float, int]]:
        """(step index, group, q, count, sum_ns, errors) of ``metric`` in ``w``."""
        g = by if by in LABELS else "''"
        where, params = _filters(filters)
        return self._rows(f"SELECT (slot - ?) / ?, {g}, q, sum(n), sum(sum_ns), sum(errors) FROM lat "
                          f"WHERE {_IN_W} AND metric = ? {where} GROUP BY 1, 2, 3",
                          [w.s0, w.step, *w.sql(), metric, *params])

    def latency_counts(self, w: Slots, filters: dict[str, list[str]]) -> dict[str, int]:
        """Calls per metric in ``w``."""
        where, params = _filters(filters)
        inside, at = _pieces(w)
        return dict(self._rows(f"SELECT metric, sum(n) FROM lat WHERE {inside} {where} GROUP BY 1",
                               [*at, *params]))

    def peer_latency(self, metrics: tuple[str, ...], peer: str, comm: str | None,
                     w: Slots) -> list[tuple[int, int]]:
        """(q, count) of ``metrics`` towards ``peer`` (``addr:port``) in ``w``, of the calls
        ``comm`` made (all callers when None)."""
        inside, at = _pieces(w)
        who, also = ("AND comm = ?", [comm]) if comm is not None else ("", [])
        return self._rows(f"SELECT q, sum(n) FROM lat_peer WHERE {inside} AND metric IN "
                          f"({','.join('?' * len(metrics))}) AND peer = ? {who} GROUP BY 1",
                          [*at, *metrics, peer, *also])

    def edges(self, w: Slots, filters: dict[str, list[str]]) -> list[tuple]:
        """(dir, pid, comm, unit, pod, namespace, laddr, lport, raddr, rport, tx, rx, conns, closed)
        summed over ``w``."""
        where, params = _filters(filters)
        inside, at = _pieces(w)
        return self._rows("SELECT dir, pid, comm, unit, pod, namespace, laddr, lport, raddr, rport, "
                          f"sum(tx), sum(rx), sum(conns), sum(closed) FROM edge WHERE {inside} {where} "
                          "GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10", [*at, *params])

    def edge_series(self, w: Slots, comm: str, pid: int | None, raddr: str,
                    rport: int) -> list[tuple[int, int, int]]:
        """(step index, bytes, conns) of the client edges of ``comm`` to ``raddr:rport``."""
        cond = "AND pid = ?" if pid is not None else ""
        return self._rows(f"SELECT (slot - ?) / ?, sum(tx + rx), sum(conns) FROM edge WHERE {_IN_W} "
                          f"AND dir = 'client' AND comm = ? AND raddr = ? AND rport = ? {cond} GROUP BY 1",
                          [w.s0, w.step, *w.sql(), comm, raddr, rport, *([pid] if pid is not None else [])])

    def counts(self, kind: str, w: Slots, columns: tuple[str, ...], *, steps: bool = False,
               filters: dict[str, list[str]] | None = None) -> list[tuple]:
        """Sums (n, n2) of the ``cnt`` rows of ``kind`` in ``w``, grouped by ``columns`` (of a, b,
        c, d, comm), first by step index when ``steps``."""
        assert set(columns) <= {"a", "b", "c", "d", "comm"}, columns
        where, params = _filters(filters or {})
        cols = (["(slot - ?) / ?"] if steps else []) + list(columns)
        inside, at = (_IN_W, list(w.sql())) if steps else _pieces(w)
        return self._rows(f"SELECT {', '.join(cols)}, sum(n), sum(n2) FROM cnt WHERE {inside} AND kind = ? "
                          f"{where} GROUP BY {', '.join(str(i + 1) for i in range(len(cols)))}",
                          [*([w.s0, w.step] if steps else []), *at, kind, *params])

    def recent_slots(self, kind: str, w: Slots, a: str, comm: str, count: int = 3) -> list[int]:
        """The newest ``count`` level-0 slots in ``w`` with ``cnt`` rows of ``kind`` for (a, comm)."""
        lo, hi = w.lo0, w.hi0
        return [s for (s,) in self._rows("SELECT slot FROM cnt WHERE lv = 0 AND slot BETWEEN ? AND ? "
                                         "AND kind = ? AND a = ? AND comm = ? GROUP BY slot "
                                         "ORDER BY slot DESC LIMIT ?", [lo, hi, kind, a, comm, count])]

    def stacks(self, program: str, w: Slots, filters: dict[str, list[str]],
               pid: int | None) -> list[tuple[str, int, int, str]]:
        """(folded stack, kernel frames, value, unit) of ``program`` in ``w``."""
        where, params = _filters(filters)
        if pid is not None:
            where, params = where + " AND pid = ?", [*params, pid]
        inside, at = _pieces(w)
        return self._rows(f"SELECT stack, max(nk), sum(value), max(unit_name) FROM stack WHERE {inside} "
                          f"AND program = ? {where} GROUP BY 1", [*at, program, *params])

    def label_values(self, w: Slots, limit: int = 200) -> dict[str, list[str]]:
        """The values each label has around ``w`` (latency, edges, stacks; read from 10 min slots,
        a picker needs no precision), most rows first."""
        f = LEVELS[-1]
        at = [len(LEVELS) - 1, w.lo0 // f, w.hi0 // f]
        out: dict[str, list[str]] = {}
        for label in LABELS:
            rows = self._rows(f"SELECT v FROM (SELECT {label} AS v FROM lat WHERE {_IN_W} UNION ALL "
                              f"SELECT {label} FROM edge WHERE {_IN_W} UNION ALL SELECT {label} FROM "
                              f"stack WHERE {_IN_W}) WHERE v != '' GROUP BY v ORDER BY count(*) DESC, v "
                              "LIMIT ?", [*at, *at, *at, limit])
            out[label] = [v for (v,) in rows]
        return out

    def kinds_present(self) -> dict[str, list[str]]:
        """kind → the stream names the cache sums as that kind."""
        out: dict[str, list[str]] = {}
        for name, kind in self._rows("SELECT name, kind FROM streams WHERE kind != ''", []):
            out.setdefault(kind, []).append(name)
        return out

    def _rows(self, sql: str, params: Iterable[Any]) -> list[tuple]:
        try:
            return self._cache().execute(sql, list(params)).fetchall()
        except sqlite3.Error as exc:
            raise UiError(503, f"reading the UI cache {self.cache} failed: {exc}",
                          f"stop bpfdepot ui, remove {self.cache} (it is rebuilt from the store) "
                          "and start it again") from None


_HIST_FIELDS = frozenset(("buckets", "count", "sum", "unit", "p50", "p90", "p99", "labels", "ts_ns"))


def _filters(filters: dict[str, list[str]]) -> tuple[str, list[str]]:
    """``AND comm IN (?, ?) AND unit IN (?)`` for the label filters given."""
    sql, params = "", []
    for label in LABELS:
        values = filters.get(label) or []
        if values:
            sql += f" AND {label} IN ({','.join('?' * len(values))})"
            params += values
    return sql, params


def _broken(path: Path, exc: sqlite3.Error) -> UiError:
    return UiError(503, f"reading the time-series store {path} failed: {exc}",
                   f"check it: sqlite3 {path} 'PRAGMA integrity_check'; or start bpfdepot ui --db "
                   "with another store")


def default_cache(db: Path) -> Path:
    """``<store>.ui-cache`` beside the store when its folder is writable, else a file under
    /var/tmp/bpfdepot-ui named after the store's path (the UI never writes the store itself)."""
    if os.access(db.parent, os.W_OK):
        return db.with_name(db.name + ".ui-cache")
    import hashlib

    digest = hashlib.sha256(str(db.resolve()).encode()).hexdigest()[:16]
    return Path("/var/tmp/bpfdepot-ui") / f"{db.name}-{digest}.ui-cache"
