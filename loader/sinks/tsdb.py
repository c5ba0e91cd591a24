"""The embedded time-series store: one SQLite file per node, in WAL mode.

Why SQLite and not DuckDB. A node runs ``bpfdepot run`` writing events while someone runs
``bpfdepot query`` against the same file, and the loader can be killed at any moment. Measured
here (../shared/services/README.md): SQLite in WAL mode keeps every committed row across
``kill -9`` and lets other processes read while one writes; DuckDB computes percentiles far
faster but locks its file to one process, so ``query`` could not even open the file while
``run`` is up, and a store nobody can read during a run is of no use on a node. SQLite is also
in the standard library, so the thin loader gains no dependency. What it costs: a group-by
parses the JSON of every matching row (measured here per million rows: about 1 s to count
groups, 4 s with percentiles, where DuckDB needs 0.03 s); a node keeps hours of events, not
months of history, and ``--since`` narrows a query through the index.

Layout (schema 1)::

    meta(key, value)                         the schema version
    streams(id, name, created_ns)            every "<program>.<channel>" ever written (kept
                                             after retention empties it, so query can tell
                                             "never written" from "nothing recent")
    events(id, ts_ns, stream_id, key, record)
        id      insertion order; size retention drops the lowest ids first
        ts_ns   the record's own integer ``ts_ns`` if it is a wall-clock time, else the receive time
                (CLOCK_REALTIME ns of the write() call)
        key     the ``hash`` field's value, or NULL
        record  the JSON object as text, checked with json_valid() on insert; queries read
                fields with json_extract()
    index events_stream_ts(stream_id, ts_ns)  per-program time ranges and age retention

One index only: a second one on ``ts_ns`` alone cost a quarter of the insert rate; age
retention deletes per stream through the index above instead. Records have no fixed fields
(each program has its own), so there are no extracted columns; json_extract() in C is cheaper
than parsing each record in Python on the write path (which halved the insert rate).

Writing. ``write()`` queues rows; they are committed in one transaction when ``batch_rows``
are queued, when the oldest has waited ``max_delay_s`` (a flusher thread), or on ``flush()``.
Measured here with tcp_connlat-sized records: about 130k rows/s with 64-row transactions,
250-290k rows/s from 512 to 2048 rows, no better beyond. ``synchronous=NORMAL``: a commit
survives the process being killed; a power loss can drop the last commits but never corrupts.
A record that is not valid UTF-8 JSON is counted as failed, as are the rows of a transaction
SQLite refused (``last_error`` says why); nothing is dropped without being counted.

Retention. By age (``retention_s``, checked every second) and by size (``max_bytes``, checked
after every commit): when the pages in use exceed ``max_bytes`` the oldest rows are deleted
down to 90 % of it and ``PRAGMA incremental_vacuum`` hands the freed pages back, so the file
stops growing (the database is created with ``auto_vacuum=INCREMENTAL``). The WAL beside it
is checkpointed every ``max_bytes / 8`` (256 KiB to 4 MiB) and truncated back to that size.
"""

from __future__ import annotations

import difflib
import json
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from loader.errors import BpfDepotError
from loader.model.settings import Settings
from loader.sinks import Record, SinkKind, SinkStats, register

SCHEMA = 1
BATCH_ROWS = 2048         # rows per transaction; 512-2048 measured best
MAX_DELAY_S = 0.25        # a queued row is committed at the latest this long after write()
AGE_CHECK_S = 1.0         # how often age retention runs
BUSY_S = 5.0              # wait this long for another writer's lock before failing a batch
MIN_BYTES = 256 * 1024    # smaller than this, the schema and one batch do not fit
LOW_WATER = 0.9           # size retention deletes down to this share of max_bytes
PERCENTILES = (50, 90, 99)
LABELS = "labels"         # the object ``run --labels`` adds; its keys query as plain fields
STATS = ("min", "avg", "max") + tuple(f"p{p}" for p in PERCENTILES)
_SAMPLE_ROWS = 500        # rows per stream read to list the fields seen

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                                   created_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    id INTEGER PRIMARY KEY,
    ts_ns INTEGER NOT NULL,
    stream_id INTEGER NOT NULL,
    key TEXT,
    record TEXT NOT NULL CHECK (json_valid(record)));
CREATE INDEX IF NOT EXISTS events_stream_ts ON events(stream_id, ts_ns);
"""
_INSERT = "INSERT INTO events(ts_ns, stream_id, key, record) VALUES (?, ?, ?, ?)"


def default_path(settings: Settings) -> Path:
    """Where ``run`` writes and ``query`` reads unless told otherwise."""
    return settings.home / "tsdb" / "events.sqlite"


def _fix(path: Path) -> str:
    return f"move {path} away (it is not a bpfdepot time-series store) or use another path"


class TsdbSink:
    """The ``tsdb`` sink: batches records into the SQLite store at ``path``."""

    name = "tsdb"

    def __init__(self, path: Path, *, retention_s: float | None, max_bytes: int | None,
                 batch_rows: int = BATCH_ROWS, max_delay_s: float = MAX_DELAY_S) -> None:
        if retention_s is not None and retention_s <= 0:
            raise BpfDepotError(f"tsdb retention {retention_s!r} s is not positive",
                                hint="give retention in seconds, e.g. 86400 for a day, or none")
        if max_bytes is not None and max_bytes < MIN_BYTES:
            raise BpfDepotError(f"tsdb max_bytes {max_bytes} is below the minimum {MIN_BYTES}",
                                hint="give at least 256 KiB, e.g. 1073741824 for 1 GiB")
        self.path = path
        self.retention_s = retention_s
        self.max_bytes = max_bytes
        self.last_error = ""
        self._batch_rows = max(1, batch_rows)
        self._max_delay_s = max_delay_s
        self._db = _open_writer(path, max_bytes)
        self._streams: dict[str, int] = {
            name: sid for sid, name in self._db.execute("SELECT id, name FROM streams")}
        self._pending: list[tuple[int, int, str | None, str]] = []
        self._oldest = 0.0         # monotonic time the oldest pending row was queued
        self._next_age_check = 0.0
        self._stats = SinkStats()
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        with self._lock:
            self._retain()
        self._flusher = threading.Thread(target=self._flush_loop, name="bpfdepot-tsdb", daemon=True)
        self._flusher.start()

    # -- Sink ---------------------------------------------------------------------------------

    def write(self, stream: str, records: Sequence[Record]) -> None:
        """Queue ``records`` of ``stream``; commits when a batch is full."""
        if not records:
            return
        now = time.time_ns()
        with self._lock:
            if self._closed:
                self._fail(len(records), f"{len(records)} record(s) for {stream} written after close()")
                return
            sid = self._streams.get(stream) or self._add_stream(stream, now)
            if sid is None:
                self._fail(len(records), self.last_error)
                return
            rows = self._pending
            if not rows:
                self._oldest = time.monotonic()
            for record in records:
                try:
                    text = record.value.decode()
                except UnicodeDecodeError as exc:
                    self._fail(1, f"a record of {stream} is not UTF-8: {exc}")
                    continue
                ts = now
                if b'"ts_ns":' in record.value and _WALL_TS.search(record.value):
                    ts = _own_ts(text, now)  # rare: parse only records that may carry a date
                key = record.key.decode(errors="replace") if record.key is not None else None
                rows.append((ts, sid, key, text))
            if len(rows) >= self._batch_rows:
                self._commit()

    def flush(self, timeout_s: float = 10.0) -> SinkStats:
        """Commit what is queued; returns the counts so far."""
        if self._lock.acquire(timeout=max(timeout_s, 0.0)):
            try:
                if self._pending:
                    self._commit()
            finally:
                self._lock.release()
        return self.stats()

    def close(self) -> SinkStats:
        """Commit what is queued, apply retention, close the file (idempotent)."""
        self._stop.set()
        if self._flusher.is_alive() and self._flusher is not threading.current_thread():
            self._flusher.join()
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._pending:
                    self._commit()
                self._next_age_check = 0.0
                self._retain()
                try:
                    self._db.execute("PRAGMA optimize")
                    self._db.close()  # the last connection checkpoints and removes the WAL
                except sqlite3.Error as exc:
                    self.last_error = f"closing {self.path}: {exc}"
        return self.stats()

    def stats(self) -> SinkStats:
        """A consistent view: a batch being committed counts as pending until it is in."""
        with self._lock:
            s = self._stats
            return SinkStats(delivered=s.delivered, failed=s.failed, pending=len(self._pending))

    # -- inside the lock ----------------------------------------------------------------------

    def _fail(self, n: int, why: str) -> None:
        self._stats.failed += n
        self.last_error = why

    def _add_stream(self, stream: str, now: int) -> int | None:
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("INSERT OR IGNORE INTO streams(name, created_ns) VALUES (?, ?)",
                                 (stream, now))
                (sid,) = self._db.execute("SELECT id FROM streams WHERE name = ?", (stream,)).fetchone()
        except sqlite3.Error as exc:
            self.last_error = f"{self.path}: cannot add stream {stream}: {exc}"
            return None
        self._streams[stream] = sid
        return sid

    def _commit(self) -> None:
        rows, self._pending = self._pending, []
        bad = 0
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("SAVEPOINT batch")
                try:
                    self._db.executemany(_INSERT, rows)
                    self._db.execute("RELEASE batch")
                except sqlite3.IntegrityError:
                    # some record is not valid JSON: redo the batch row by row to keep the others
                    self._db.execute("ROLLBACK TO batch")
                    self._db.execute("RELEASE batch")
                    for row in rows:
                        try:
                            self._db.execute(_INSERT, row)
                        except sqlite3.IntegrityError:
                            bad += 1
                    self.last_error = f"{bad} record(s) were not valid JSON"
        except sqlite3.Error as exc:
            self._fail(len(rows), f"{self.path}: a batch of {len(rows)} row(s) failed: {exc}")
            return
        self._stats.delivered += len(rows) - bad
        self._stats.failed += bad
        self._retain()

    def _retain(self) -> None:
        try:
            if self.retention_s is not None and time.monotonic() >= self._next_age_check:
                self._next_age_check = time.monotonic() + AGE_CHECK_S
                cutoff = time.time_ns() - int(self.retention_s * 1e9)
                # per stream through events_stream_ts, including streams other writers added
                self._db.execute("DELETE FROM events WHERE stream_id IN (SELECT id FROM streams) "
                                 "AND ts_ns < ?", (cutoff,))
            if self.max_bytes is not None:
                self._shrink(self.max_bytes)
        except sqlite3.Error as exc:
            self.last_error = f"{self.path}: retention failed: {exc}"

    def _used_bytes(self) -> int:
        (pages,) = self._db.execute("PRAGMA page_count").fetchone()
        (free,) = self._db.execute("PRAGMA freelist_count").fetchone()
        (size,) = self._db.execute("PRAGMA page_size").fetchone()
        return (pages - free) * size

    def _shrink(self, max_bytes: int) -> None:
        used = self._used_bytes()
        if used <= max_bytes:
            return
        for _ in range(8):  # the rows-per-byte estimate is rough; a few rounds converge
            lo, hi = self._db.execute("SELECT min(id), max(id) FROM events").fetchone()
            if lo is None:
                break
            per_row = used / (hi - lo + 1)
            n = max(1, int((used - max_bytes * LOW_WATER) / per_row) + 1)
            with self._db:
                self._db.execute("DELETE FROM events WHERE id < ?", (lo + n,))
            used = self._used_bytes()
            if used <= max_bytes * LOW_WATER:
                break
        # executescript steps it to the end; execute() would free one page (one step) only
        self._db.executescript("PRAGMA incremental_vacuum")
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the file shrinks at a checkpoint

    # -- the flusher thread -------------------------------------------------------------------

    def _flush_loop(self) -> None:
        tick = min(self._max_delay_s / 2, AGE_CHECK_S) or 0.05
        while not self._stop.wait(tick):
            with self._lock:
                if self._closed:
                    return
                if self._pending and time.monotonic() - self._oldest >= self._max_delay_s:
                    self._commit()
                elif self.retention_s is not None and time.monotonic() >= self._next_age_check:
                    self._retain()


WALL_CLOCK_MIN_NS = 10**18  # 2001-09-09: a smaller ts_ns is a time since boot (bpf_ktime_get_ns)
_WALL_TS = re.compile(rb'"ts_ns":\s*[1-9][0-9]{18}')  # 19 digits or more: maybe a date


def _own_ts(text: str, now: int) -> int:
    """The record's own ``ts_ns`` when it is a wall-clock time, else ``now``."""
    try:
        ts = json.loads(text).get("ts_ns")
    except (ValueError, AttributeError):
        return now
    return ts if type(ts) is int and ts >= WALL_CLOCK_MIN_NS else now


def _open_writer(path: Path, max_bytes: int | None) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BpfDepotError(f"cannot create the folder of the time-series store {path}: {exc}",
                            hint="set BPFDEPOT_HOME to a writable folder") from exc
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_S)
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect only on a new file
        (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
        db.execute("PRAGMA synchronous = NORMAL")
        wal_pages = 1000 if max_bytes is None else max(64, min(1000, max_bytes // 8 // 4096))
        db.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
        db.execute(f"PRAGMA journal_size_limit = {wal_pages * 4096}")
        with db:
            db.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, _SCHEMA_SQL.split(";")):
                db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA),))
            (version,) = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.Error as exc:
        raise BpfDepotError(f"cannot open the time-series store {path}: {exc}", hint=_fix(path)) from exc
    if mode != "wal":
        raise BpfDepotError(f"the time-series store {path} cannot use WAL mode (got {mode!r})",
                            hint="keep it on a local filesystem (not NFS), or set another path")
    if version != str(SCHEMA):
        raise BpfDepotError(f"the time-series store {path} has schema {version}; this bpfdepot "
                            f"writes schema {SCHEMA}", hint=f"move {path} away to start a new one")
    return db


# -- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryResult:
    """What ``query`` found: rows as dicts whose keys are ``columns``.

    A field name the records do not have but their ``labels`` object does (``unit``, ``pod``,
    ``namespace``, ``container``, ``image``… from ``bpfdepot run --labels``) stands for that
    label in ``where``, ``group_by`` and ``stat``; ``labels.unit`` names it explicitly.

    Without group_by/stat each row is one event: ``ts_ns``, ``stream``, then its fields,
    oldest first (the newest ``limit`` events). With group_by and/or stat each row is one group:
    the group_by field's value, ``count``, and with stat the stat field's min, avg, max, p50,
    p90 and p99 (nearest rank, over the rows where it is a number), most frequent groups first.
    """

    streams: tuple[str, ...]
    columns: tuple[str, ...]
    rows: tuple[dict[str, Any], ...]
    group_by: str | None = None
    stat: str | None = None


def query(path: Path, stream_prefix: str, *, since_s: float | None,
          where: Sequence[tuple[str, str]], group_by: str | None, limit: int,
          stat: str | None = None) -> QueryResult:
    """Events of the streams named ``stream_prefix`` or ``stream_prefix.*``, filtered and grouped.

    ``where`` pairs compare a field with a value as text or, when the value reads as a number
    or true/false, as that too (``pid=7795`` matches the number 7795 and the text "7795").
    """
    if limit < 1:
        raise BpfDepotError(f"limit {limit} is not positive", hint="for example: --limit 20")
    db = _open_reader(path)
    try:
        sids = _match_streams(db, path, stream_prefix)
        scope = f"stream_id IN ({','.join('?' * len(sids))})"
        # a field the records lack may be a label: "unit" means "labels.unit" (run --labels)
        found = {field: _check_field(db, scope, list(sids), field, stream_prefix)
                 for field in [f for f, _ in where] + [f for f in (group_by, stat) if f]}
        if stat:
            _check_numeric(db, scope, list(sids), found[stat], stream_prefix)
        cond, params = [scope], list(sids)
        if since_s is not None:
            cond.append("ts_ns >= ?")
            params.append(time.time_ns() - int(since_s * 1e9))
        for field, value in where:
            values = _as_json_values(value)
            cond.append(f"json_extract(record, ?) IN ({','.join('?' * len(values))})")
            params += [_path(found[field]), *values]
        sql_where = " AND ".join(cond)
        if group_by or stat:
            rows, columns = _groups(db, sql_where, params, group_by, stat, limit,
                                    paths=found)
        else:
            rows, columns = _events(db, sql_where, params, sids, limit)
        return QueryResult(streams=tuple(sorted(sids.values())), columns=columns, rows=rows,
                           group_by=group_by, stat=stat)
    except sqlite3.Error as exc:
        raise BpfDepotError(f"reading the time-series store {path} failed: {exc}",
                            hint="run the query again; if it keeps failing: "
                                 f"sqlite3 {path} 'PRAGMA integrity_check'") from exc
    finally:
        db.close()


def _programs(db: sqlite3.Connection) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for (name,) in db.execute("SELECT name FROM streams ORDER BY name"):
        out.setdefault(name.partition(".")[0], []).append(name)
    return out


def _open_reader(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise BpfDepotError(f"no time-series store at {path}",
                            hint="events land there when `bpfdepot run` has the tsdb sink on "
                                 "(storage: {tsdb: true}); or pass --db PATH")
    try:
        db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=BUSY_S)
        db.execute("PRAGMA query_only = ON")
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.Error as exc:
        raise BpfDepotError(f"cannot read the time-series store {path}: {exc}", hint=_fix(path)) from exc
    if row is None or row[0] != str(SCHEMA):
        db.close()
        raise BpfDepotError(f"the time-series store {path} has schema {row and row[0]}; this "
                            f"bpfdepot reads schema {SCHEMA}", hint="query it with the bpfdepot that wrote it")
    return db


def _match_streams(db: sqlite3.Connection, path: Path, prefix: str) -> dict[int, str]:
    found = {sid: name for sid, name in db.execute("SELECT id, name FROM streams")
             if name == prefix or name.startswith(prefix + ".")}
    if found:
        return found
    present = _programs(db)
    if not present:
        raise BpfDepotError(f"no events were ever stored for '{prefix}': the store {path} is empty",
                            hint="run the program with the tsdb sink on, e.g. "
                                 f"bpfdepot run bpf/{prefix.partition('.')[0]}")
    names = sorted(present) + sorted(s for streams in present.values() for s in streams)
    close = difflib.get_close_matches(prefix, names, n=1)
    raise BpfDepotError(f"no events were ever stored for '{prefix}' in {path}; programs present: "
                        + ", ".join(f"{p} ({', '.join(s.partition('.')[2] for s in present[p])})"
                                    for p in sorted(present)),
                        hint=f"did you mean '{close[0]}'?" if close else
                        "query one of those, or PROGRAM.CHANNEL for one channel")


def _path(field: str) -> str:
    # '$."a"."b"': quoted steps, so any field name is a literal (no JSON path syntax in it)
    return "$" + "".join(f'."{step}"' for step in field.split("."))


def _check_field(db: sqlite3.Connection, scope: str, sids: list[int], field: str, prefix: str) -> str:
    """The field's path in the records: ``field`` itself when some event has it, else
    ``labels.FIELD`` when some event has that label (``unit``, ``pod``, ``namespace``…)."""
    if '"' in field or not all(field.split(".")):
        raise BpfDepotError(f"'{field}' is not a field name", hint="for example: comm, or a.b for a nested field")
    candidates = [field] + ([f"{LABELS}.{field}"] if "." not in field else [])
    for path in candidates:
        hit = db.execute(f"SELECT 1 FROM events WHERE {scope} AND json_type(record, ?) IS NOT NULL "
                         "LIMIT 1", [*sids, _path(path)]).fetchone()
        if hit:
            return path
    seen = _fields_seen(db, sids)
    labels = _fields_seen(db, sids, under=LABELS) if LABELS in seen else []
    close = difflib.get_close_matches(field, seen + labels, n=1)
    raise BpfDepotError(f"no event of '{prefix}' has a field '{field}'; fields seen: "
                        + (", ".join(seen) or "none (no events are stored now)")
                        + (f"; labels seen: {', '.join(labels)}" if labels else ""),
                        hint=f"did you mean '{close[0]}'?" if close else "use one of the fields seen")


def _check_numeric(db: sqlite3.Connection, scope: str, sids: list[int], field: str, prefix: str) -> None:
    hit = db.execute(f"SELECT 1 FROM events WHERE {scope} AND json_type(record, ?) IN ('integer', 'real') "
                     "LIMIT 1", [*sids, _path(field)]).fetchone()
    if hit:
        return
    numeric = _fields_seen(db, sids, numeric=True)
    raise BpfDepotError(f"field '{field}' of '{prefix}' is never a number, so it has no statistics",
                        hint=("numeric fields: " + ", ".join(numeric)) if numeric else
                        "--stat needs a numeric field; use --group-by for text fields")


def _fields_seen(db: sqlite3.Connection, sids: list[int], *, numeric: bool = False,
                 under: str | None = None) -> list[str]:
    """Top-level fields (or those of the object ``under``) of the latest rows of each stream
    (a sample, to name what exists)."""
    kinds = "AND j.type IN ('integer', 'real')" if numeric else ""
    each = f"json_each(e.record, '{_path(under)}')" if under else "json_each(e.record)"
    seen: set[str] = set()
    for sid in sids:
        seen.update(k for (k,) in db.execute(
            "SELECT DISTINCT j.key FROM (SELECT record FROM events WHERE stream_id = ? "
            f"ORDER BY ts_ns DESC LIMIT {_SAMPLE_ROWS}) AS e, {each} AS j WHERE 1 {kinds}",
            (sid,)))
    return sorted(seen)


def _as_json_values(value: str) -> list[Any]:
    """What ``field=value`` may mean in JSON: the text, and a number or boolean if it reads as one."""
    out: list[Any] = [value]
    low = value.strip().lower()
    if low in ("true", "false"):
        out.append(1 if low == "true" else 0)  # json_extract gives booleans as 1 / 0
    else:
        for kind in (int, float):
            try:
                out.append(kind(value))
                break
            except ValueError:
                continue
    return out


def _events(db: sqlite3.Connection, sql_where: str, params: list[Any], sids: dict[int, str],
            limit: int) -> tuple[tuple[dict[str, Any], ...], tuple[str, ...]]:
    found = db.execute(f"SELECT ts_ns, stream_id, record FROM events WHERE {sql_where} "
                       "ORDER BY ts_ns DESC, id DESC LIMIT ?", [*params, limit]).fetchall()
    rows: list[dict[str, Any]] = []
    columns: dict[str, None] = {"ts_ns": None, "stream": None}
    for ts, sid, text in reversed(found):
        row: dict[str, Any] = {"ts_ns": ts, "stream": sids[sid]}
        record = json.loads(text)
        for name, value in (record.items() if isinstance(record, dict) else [("record", record)]):
            row.setdefault(name, value)  # the store's ts_ns and stream win over same-named fields
        columns.update(dict.fromkeys(row))
        rows.append(row)
    return tuple(rows), tuple(columns)


def _groups(db: sqlite3.Connection, sql_where: str, params: list[Any], group_by: str | None,
            stat: str | None, limit: int, *, paths: dict[str, str] | None = None
            ) -> tuple[tuple[dict[str, Any], ...], tuple[str, ...]]:
    paths = paths or {}
    g = "json_extract(record, ?)" if group_by else "NULL"
    head = [_path(paths.get(group_by, group_by))] if group_by else []
    if not stat:
        sql = (f"SELECT {g} AS g, count(*) AS n FROM events WHERE {sql_where} "
               "GROUP BY g ORDER BY n DESC, g LIMIT ?")
        found = db.execute(sql, [*head, *params, limit]).fetchall()
        columns = ((group_by,) if group_by else ()) + ("count",)
    else:
        # nearest-rank percentiles: the value at rank ceil(p * n / 100) among the n numbers,
        # numbers ranked 1..n by a window (NULLs, i.e. non-numbers, sorted after them)
        ranks = ", ".join(f"max(CASE WHEN rn = max(1, ({p} * nx + 99) / 100) THEN x END)"
                          for p in PERCENTILES)
        sql = (f"WITH m AS (SELECT {g} AS g, CASE WHEN json_type(record, ?) IN ('integer', 'real') "
               f"THEN json_extract(record, ?) END AS x FROM events WHERE {sql_where}), "
               "r AS (SELECT g, x, row_number() OVER (PARTITION BY g ORDER BY x IS NULL, x) AS rn, "
               "count(x) OVER (PARTITION BY g) AS nx FROM m) "
               f"SELECT g, count(*) AS n, min(x), avg(x), max(x), {ranks} FROM r "
               "GROUP BY g ORDER BY n DESC, g LIMIT ?")
        at = _path(paths.get(stat, stat))
        found = db.execute(sql, [*head, at, at, *params, limit]).fetchall()
        columns = ((group_by,) if group_by else ()) + ("count",) + STATS
    rows = tuple(dict(zip(columns, row if group_by else row[1:])) for row in found)
    if not group_by and rows and rows[0]["count"] == 0:
        rows = ()
    return rows, columns


def _open_tsdb(storage, target: str, first: bool) -> TsdbSink:
    t = storage.tsdb
    t.path.parent.mkdir(parents=True, exist_ok=True)
    return TsdbSink(t.path, retention_s=t.retention_s, max_bytes=t.max_bytes)


register(SinkKind(name="tsdb", order=3, target=lambda want: "" if want.tsdb else None,
                  open=_open_tsdb))
