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

Layout (schema 2: one row per run of records, not per record)::

    meta(key, value)                         the schema version
    streams(id, name, created_ns)            every "<program>.<channel>" ever written (kept
                                             after retention empties it, so query can tell
                                             "never written" from "nothing recent")
    chunks(id, ts_ns, stream_id, n, keys, records)
        id       insertion order, never reused (AUTOINCREMENT: once retention has emptied the
                 table, or deleted its newest chunks, a new chunk would otherwise take an old id,
                 below the web view's watermark); size retention drops the lowest ids first
        ts_ns    the time of all its records: the receive time (CLOCK_REALTIME ns of the
                 write() call), or a record's own integer ``ts_ns`` if it is a wall-clock time
                 (such a record starts a run of its own)
        n        how many records (1..MAX_CHUNK, 4096)
        keys     JSON array of the records' ``hash`` values, or NULL when they have none
        records  JSON array of the records, checked to be one with n elements
    index chunks_stream_ts(stream_id, ts_ns)  per-program time ranges and age retention
    view events(id, ts_ns, stream_id, key, record)
        one row per record, as schema 1 stored them: id = chunk id * 65536 + index in the
        chunk (so ids grow in insertion order), record = the object as JSON text; ad-hoc SQL,
        ``query`` and the web view read it (or ``chunks`` itself, for counts and time ranges)

Why chunks. Records have no fixed fields (each program has its own), so typed columns would
need a table per program and a JSON parse per record in Python on the write path (which
halved the insert rate in schema 1's time). A chunk is the write's records joined as they
came (``b"[" + b",".join(values) + b"]"``, no per-record Python work) in one row: one index
entry and one JSON check per chunk instead of per record. Measured by the lead (sqlite 3.40.1,
one core, 1M records of ~100 bytes, 2048 per transaction): schema 1 inserted 328k rows/s, 407k
without its CHECK, 584k without its index; chunks 2.58M records/s. Measured here for issue 17
(bench/bench_tsdb.py, 1M flood records in writes of 1024, a shared and noisy machine): schema 1
179k records/s, schema 2 743k through write_lines() and 578k through write(); the file is a
quarter smaller. What reading pays: ``events`` is a view over json_each(), which renders each
record as text that json_extract() then parses again, so a group-by over 1M rows took 1.6 s
against 1.2 s (count per group) and 4.4 s against 3.2 s (percentiles) with schema 1; the newest
rows (``query`` without a group) come through the (stream_id, ts_ns) index as fast as before.

Schema 1 (``events`` a table: one row, one index entry, one CHECK per record) is still read by
``query`` and the web view: both name ``events``. The writer refuses a schema-1 file rather than
rewriting it in place (a rewrite of a large store would hold up ``run`` for minutes, and the old
file stays useful as it is): the message names the file and says to move it away.

Writing. ``write()`` (records with keys) and ``write_lines()`` (the pipeline's newline-joined
batch, no keys: no reader uses them) only queue chunks of at most MAX_CHUNK records; the
flusher thread commits them in one transaction as soon as ``batch_rows`` records are queued, or
when the oldest has waited ``max_delay_s``; ``flush()`` commits at once and waits. SQLite lets
go of the GIL while it works, so decoding the next events goes on meanwhile; past MAX_QUEUED
records write() commits itself (the queue stays bounded). The WAL is checkpointed by a second
connection in a thread of its own (``_Checkpointer``), so the fsyncs of a checkpoint do not
hold up a commit either. ``synchronous=NORMAL``: a commit survives the process being killed; a
power loss can drop the last commits but never corrupts. A record that is not valid UTF-8 JSON
is counted as failed and the rest of its chunk kept: a chunk that fails its check is redone
record by record (json_valid() on each, only then); the rows of a transaction SQLite refused
are counted failed too (``last_error`` says why); nothing is dropped without being counted.

Retention. By age (``retention_s``, checked every second; at most RETAIN_CHUNKS whole chunks
per step, chosen by id and deleted by id, the next step at once, so a large backlog never holds
the writer long) and by size (``max_bytes``, checked after every commit): when the pages in use
exceed ``max_bytes`` the oldest chunks are deleted down to 90 % of it and ``PRAGMA
incremental_vacuum`` hands the freed pages back, so the file stops growing (the database is
created with ``auto_vacuum=INCREMENTAL``). The WAL is checkpointed every quarter of
``max_bytes / 8`` (256 KiB to 4 MiB) and truncated back to that size.
"""

from __future__ import annotations

import difflib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from loader.errors import BpfDepotError
from loader.model.settings import Settings
from loader.sinks import Record, SinkKind, SinkStats, register

SCHEMA = 2
READABLE = ("1", "2")     # the schemas query and the web view read
BATCH_ROWS = 2048         # records per transaction
MAX_QUEUED = 131072       # records queued before write() waits for the flusher and commits itself
MAX_CHUNK = 4096          # records per chunk (below 65536: the events view numbers them id *
                          # 65536 + index); 65535-record chunks (8 MB strings) wrote slower
MAX_DELAY_S = 0.1         # a queued record is committed at the latest this long after write()
AGE_CHECK_S = 1.0         # how often age retention runs
RETAIN_CHUNKS = 256       # chunks one step of age retention deletes (each one transaction)
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
CREATE TABLE IF NOT EXISTS chunks(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ns INTEGER NOT NULL,
    stream_id INTEGER NOT NULL,
    n INTEGER NOT NULL,
    keys TEXT,
    records TEXT NOT NULL CHECK (json_array_length(records) = n));
CREATE INDEX IF NOT EXISTS chunks_stream_ts ON chunks(stream_id, ts_ns);
CREATE VIEW IF NOT EXISTS events(id, ts_ns, stream_id, key, record) AS
    SELECT c.id * 65536 + j.key, c.ts_ns, c.stream_id, c.keys ->> j.key, j.value
    FROM chunks AS c, json_each(c.records) AS j;
"""
_INSERT = "INSERT INTO chunks(ts_ns, stream_id, n, keys, records) VALUES (?, ?, ?, ?, ?)"
_MALFORMED = "malformed JSON"  # json_array_length()'s error: the chunk is not JSON at all


def _refused(exc: sqlite3.Error) -> bool:
    """Whether an insert failed on the records' check (not on the file, the disk or a lock):
    a wrong count fails the CHECK, text that is not JSON makes json_array_length() raise."""
    return isinstance(exc, sqlite3.IntegrityError) or (
        isinstance(exc, sqlite3.OperationalError) and str(exc) == _MALFORMED)


_UNSAFE_KEY = re.compile(rb'["\\\x00-\x1f]')  # a key holding one of these needs JSON escaping


def default_path(settings: Settings) -> Path:
    """Where ``run`` writes and ``query`` reads unless told otherwise."""
    return settings.home / "tsdb" / "events.sqlite"


def _fix(path: Path) -> str:
    return f"move {path} away (it is not a bpfdepot time-series store) or use another path"


@dataclass(slots=True)
class _Chunk:
    """A queued chunk: its row, and how to get its records one by one should its check fail."""
    row: tuple[int, int, int, str | None, str]   # ts_ns, stream_id, n, keys, records
    values: Callable[[], list[bytes]]
    keys: list[bytes | None] | None


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
        self._checkpoints = _Checkpointer(path, self._db, _wal_pages(max_bytes) * 4096)
        self._streams: dict[str, int] = {
            name: sid for sid, name in self._db.execute("SELECT id, name FROM streams")}
        self._pending: list[_Chunk] = []
        self._pending_rows = 0     # records in _pending
        self._committing = 0       # records taken by a commit under way
        self._oldest = 0.0         # monotonic time the oldest pending row was queued
        self._next_age_check = 0.0
        self._stats = SinkStats()
        self._lock = threading.Lock()     # the queue and the counts, held briefly
        self._db_lock = threading.Lock()  # the connection, for a transaction; taken before _lock
        self._closed = False
        self._stop = threading.Event()
        self._full = threading.Event()    # a batch is queued: the flusher commits it at once
        with self._db_lock:
            self._retain()
        self._flusher = threading.Thread(target=self._flush_loop, name="bpfdepot-tsdb", daemon=True)
        self._flusher.start()

    # -- Sink ---------------------------------------------------------------------------------

    def write(self, stream: str, records: Sequence[Record]) -> None:
        """Queue ``records`` of ``stream``; the flusher thread commits them once a batch is
        full (or MAX_DELAY_S later), so SQLite's work runs beside the caller's."""
        values = [r.value for r in records]
        keys = [r.key for r in records]
        if len(values) > MAX_CHUNK:
            self._add_split(stream, values, keys)
        elif values:
            self._add(stream, b",".join(values), len(values), lambda: values, keys)

    def write_lines(self, stream: str, data: bytes, count: int) -> None:
        """Queue ``count`` records given as lines ending in a newline (the pipeline's batches,
        which carry no keys)."""
        if count > MAX_CHUNK:
            self._add_split(stream, data.split(b"\n")[:-1], None)
        elif count:
            self._add(stream, data[:-1].replace(b"\n", b","), count,
                      lambda: data.split(b"\n")[:-1], None)

    def flush(self, timeout_s: float = 10.0) -> SinkStats:
        """Commit what is queued (after a commit under way); returns the counts so far."""
        if self._db_lock.acquire(timeout=max(timeout_s, 0.0)):
            try:
                if not self._closed:
                    self._commit()
            finally:
                self._db_lock.release()
        return self.stats()

    def close(self) -> SinkStats:
        """Commit what is queued, apply retention, close the file (idempotent)."""
        self._stop.set()
        self._full.set()
        if self._flusher.is_alive() and self._flusher is not threading.current_thread():
            self._flusher.join()
        with self._db_lock:
            with self._lock:
                closed, self._closed = self._closed, True
            if not closed:
                self._commit()
                self._next_age_check = 0.0
                self._retain()
                try:
                    self._checkpoints.close()
                    self._db.execute("PRAGMA optimize")
                    self._db.close()  # the last connection checkpoints and removes the WAL
                except sqlite3.Error as exc:
                    self.last_error = f"closing {self.path}: {exc}"
        return self.stats()

    def stats(self) -> SinkStats:
        """A consistent view: a batch being committed counts as pending until it is in."""
        with self._lock:
            s = self._stats
            return SinkStats(delivered=s.delivered, failed=s.failed,
                             pending=self._pending_rows + self._committing)

    # -- queueing -----------------------------------------------------------------------------

    def _add_split(self, stream: str, values: list[bytes], keys: list[bytes | None] | None) -> None:
        """Queue a write of more records than a chunk holds, MAX_CHUNK at a time."""
        now = time.time_ns()
        for at in range(0, len(values), MAX_CHUNK):
            part = values[at:at + MAX_CHUNK]
            self._add(stream, b",".join(part), len(part), lambda part=part: part,
                      keys[at:at + MAX_CHUNK] if keys is not None else None, now=now)

    def _add(self, stream: str, body: bytes, count: int, values: Callable[[], list[bytes]],
             keys: list[bytes | None] | None, *, now: int | None = None) -> None:
        """Queue one write's records: ``body`` is their values joined by commas."""
        now = now or time.time_ns()
        sid = None if self._closed else self._streams.get(stream) or self._add_stream(stream, now)
        chunk = None
        if sid is not None and count <= MAX_CHUNK and not (b'"ts_ns":' in body and _WALL_TS.search(body)):
            try:  # the common case: one chunk, no per-record work
                chunk = _Chunk((now, sid, count, _keys_json(keys), "[" + body.decode() + "]"), values, keys)
            except UnicodeDecodeError:
                pass
        with self._lock:
            if self._closed:
                self._fail(count, f"{count} record(s) for {stream} written after close()")
                return
            if sid is None:
                self._fail(count, self.last_error)
                return
            if not self._pending:
                self._oldest = time.monotonic()
            if chunk is not None:
                self._queue(chunk)
            else:
                self._queue_each(stream, sid, now, values(), keys)
            queued = self._pending_rows
        if queued >= MAX_QUEUED:  # the flusher fell behind: wait for it and commit here
            with self._db_lock:
                if not self._closed:
                    self._commit()
        elif queued >= self._batch_rows:
            self._full.set()

    def _queue(self, chunk: _Chunk) -> None:
        self._pending.append(chunk)
        self._pending_rows += chunk.row[2]

    def _queue_each(self, stream: str, sid: int, now: int, values: list[bytes],
                    keys: list[bytes | None] | None) -> None:
        """The slow path, record by record: some record is not UTF-8, carries its own date, or
        there are more than a chunk holds. Runs of records with one ts_ns become chunks."""
        run: list[int] = []
        run_ts = now
        for i, value in enumerate(values):
            try:
                text = value.decode()
            except UnicodeDecodeError as exc:
                self._fail(1, f"a record of {stream} is not UTF-8: {exc}")
                continue
            ts = now
            if b'"ts_ns":' in value and _WALL_TS.search(value):
                ts = _own_ts(text, now)  # rare: parse only records that may carry a date
            if run and (ts != run_ts or len(run) == MAX_CHUNK):
                self._queue(_chunk_of(sid, run_ts, run, values, keys))
                run = []
            run_ts = ts
            run.append(i)
        if run:
            self._queue(_chunk_of(sid, run_ts, run, values, keys))

    # -- inside _lock (the queue) -------------------------------------------------------------

    def _fail(self, n: int, why: str) -> None:
        self._stats.failed += n
        self.last_error = why

    # -- inside _db_lock (the connection) -------------------------------------------------------

    def _add_stream(self, stream: str, now: int) -> int | None:
        with self._db_lock:
            if stream in self._streams:  # another thread added it meanwhile
                return self._streams[stream]
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
        """Commit every queued chunk in one transaction (the caller holds _db_lock)."""
        with self._lock:
            chunks, self._pending = self._pending, []
            rows, self._pending_rows = self._pending_rows, 0
            self._committing = rows
        if not chunks:
            return
        bad = 0
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("SAVEPOINT batch")
                try:
                    self._db.executemany(_INSERT, [c.row for c in chunks])
                    self._db.execute("RELEASE batch")
                except sqlite3.Error as exc:
                    if not _refused(exc):
                        raise
                    # some record is not valid JSON: redo the batch chunk by chunk, and a chunk
                    # that fails record by record, to keep the others
                    self._db.execute("ROLLBACK TO batch")
                    self._db.execute("RELEASE batch")
                    for chunk in chunks:
                        try:
                            self._db.execute(_INSERT, chunk.row)
                        except sqlite3.Error as exc:
                            if not _refused(exc):
                                raise
                            bad += self._insert_valid(chunk)
                    self.last_error = f"{bad} record(s) were not valid JSON"
        except sqlite3.Error as exc:
            with self._lock:
                self._committing = 0
                self._fail(rows, f"{self.path}: a batch of {rows} row(s) failed: {exc}")
            return
        with self._lock:
            self._committing = 0
            self._stats.delivered += rows - bad
            self._stats.failed += bad
        self._checkpoints.wrote(sum(len(c.row[4]) for c in chunks))
        self._retain()

    def _insert_valid(self, chunk: _Chunk) -> int:
        """Insert the valid records of a chunk that failed its check; the number left out."""
        values = chunk.values()
        good = [i for i, v in enumerate(values)
                if self._db.execute("SELECT json_valid(?)", (v.decode(),)).fetchone()[0]]
        if good:
            self._db.execute(_INSERT, _chunk_of(chunk.row[1], chunk.row[0], good, values, chunk.keys).row)
        return len(values) - len(good)

    def _retain(self) -> None:
        try:
            if self.retention_s is not None and time.monotonic() >= self._next_age_check:
                cutoff = time.time_ns() - int(self.retention_s * 1e9)
                # whole chunks, oldest first per stream through chunks_stream_ts (including
                # streams other writers added), a bounded step at a time: a backlog does not
                # hold the writer long. Chosen, then deleted by id, in one transaction: one
                # "DELETE ... WHERE id IN (SELECT ... LIMIT ?)" deleted new chunks of another
                # writer's streams in a run of two writers on one store (sqlite 3.40.1, with
                # ids that could then be reused; not reproduced with one process)
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    old = [(cid,) for sid, in self._db.execute("SELECT id FROM streams").fetchall()
                           for cid, in self._db.execute(
                               "SELECT id FROM chunks WHERE stream_id = ? AND ts_ns < ? ORDER BY "
                               "ts_ns LIMIT ?", (sid, cutoff, RETAIN_CHUNKS)).fetchall()][:RETAIN_CHUNKS]
                    self._db.executemany("DELETE FROM chunks WHERE id = ?", old)
                self._next_age_check = time.monotonic() + (0 if len(old) >= RETAIN_CHUNKS else AGE_CHECK_S)
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
        for _ in range(8):  # the bytes-per-chunk estimate is rough; a few rounds converge
            lo, hi = self._db.execute("SELECT min(id), max(id) FROM chunks").fetchone()
            if lo is None:
                break
            per_chunk = used / (hi - lo + 1)
            n = max(1, int((used - max_bytes * LOW_WATER) / per_chunk) + 1)
            with self._db:
                self._db.execute("DELETE FROM chunks WHERE id < ?", (lo + n,))
            used = self._used_bytes()
            if used <= max_bytes * LOW_WATER:
                break
        # a checkpoint before and after the vacuum, so each transaction starts the WAL afresh
        # (it stays within its bound) and the file shrinks (at the second checkpoint)
        self._checkpoints.now()
        # executescript steps it to the end; execute() would free one page (one step) only
        self._db.executescript("PRAGMA incremental_vacuum")
        self._checkpoints.now()

    # -- the flusher thread -------------------------------------------------------------------

    def _flush_loop(self) -> None:
        tick = min(self._max_delay_s / 2, AGE_CHECK_S) or 0.05
        while not self._stop.is_set():
            self._full.wait(tick)
            self._full.clear()  # a batch queued from here on sets it again
            with self._lock:
                due = bool(self._pending) and (self._pending_rows >= self._batch_rows or
                                               time.monotonic() - self._oldest >= self._max_delay_s)
            with self._db_lock:
                if self._closed or self._stop.is_set():
                    return  # close() commits the rest
                if due:
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


def _keys_json(keys: list[bytes | None] | None) -> str | None:
    """The keys as a JSON array of strings (null for none), or None when no record has one."""
    if not keys or keys.count(None) == len(keys):
        return None
    if None not in keys:
        joined = b'","'.join(keys)  # type: ignore[arg-type]
        if not _UNSAFE_KEY.search(joined):
            try:
                return '["' + joined.decode() + '"]'
            except UnicodeDecodeError:
                pass
    return json.dumps([None if k is None else k.decode(errors="replace") for k in keys])


def _chunk_of(sid: int, ts: int, picked: list[int], values: list[bytes],
              keys: list[bytes | None] | None) -> _Chunk:
    """A chunk of the records at the indices ``picked`` (all valid UTF-8)."""
    mine = [values[i] for i in picked]
    own = [keys[i] for i in picked] if keys is not None else None
    text = "[" + b",".join(mine).decode() + "]"
    return _Chunk((ts, sid, len(mine), _keys_json(own), text), lambda: mine, own)


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
        wal_pages = _wal_pages(max_bytes)
        db.execute("PRAGMA wal_autocheckpoint = 0")  # _Checkpointer does it, in a thread of its own
        db.execute(f"PRAGMA journal_size_limit = {wal_pages * 4096}")
        with db:
            db.execute("BEGIN IMMEDIATE")
            version = _schema_of(db)
            if version is None:
                for statement in filter(str.strip, _SCHEMA_SQL.split(";")):
                    db.execute(statement)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA),))
                version = str(SCHEMA)
    except sqlite3.Error as exc:
        raise BpfDepotError(f"cannot open the time-series store {path}: {exc}", hint=_fix(path)) from exc
    if mode != "wal":
        db.close()
        raise BpfDepotError(f"the time-series store {path} cannot use WAL mode (got {mode!r})",
                            hint="keep it on a local filesystem (not NFS), or set another path")
    if version != str(SCHEMA):
        db.close()
        old = " (one row per event, written by an older bpfdepot)" if version == "1" else ""
        readers = " (bpfdepot query --db and bpfdepot ui --db still read it)" if version in READABLE else ""
        raise BpfDepotError(f"the time-series store {path} has schema {version}{old}; this bpfdepot "
                            f"writes schema {SCHEMA} (one row per batch of events)",
                            hint=f"move {path} away{readers} and run again to start a new store, "
                                 "or give run another path with --tsdb PATH")
    return db


def _wal_pages(max_bytes: int | None) -> int:
    """The WAL's bound in 4 KiB pages: max_bytes / 8, from 256 KiB to 4 MiB."""
    return 1000 if max_bytes is None else max(64, min(1000, max_bytes // 8 // 4096))


class _Checkpointer:
    """Checkpoints the WAL from a connection and a thread of its own, every ``every_bytes``
    committed: a checkpoint's fsyncs then wait beside write() instead of inside it (SQLite lets
    a checkpoint run while another connection writes). The writer's own automatic checkpoints
    are off; ``check()`` checkpoints in the writer should the WAL outgrow ``limit_bytes`` anyway,
    and ``now()`` when retention needs the file to shrink. Measured here: a third to a half of
    the wall time of writing 1M records went to the writer's own checkpoints before."""

    def __init__(self, path: Path, db: sqlite3.Connection, limit_bytes: int) -> None:
        self.last_error = ""
        self._wal = path.with_name(path.name + "-wal")
        self._writer = db
        self._limit = limit_bytes
        self._every = limit_bytes // 4
        self._since = 0
        self._lock = threading.Lock()  # one checkpoint at a time: a second one would be refused
        self._due = threading.Event()
        self._stop = False
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_S)
        self._thread = threading.Thread(target=self._loop, name="bpfdepot-tsdb-wal", daemon=True)
        self._thread.start()

    def wrote(self, n: int) -> None:
        """``n`` more bytes were committed (the writer calls this after each commit)."""
        self._since += n
        if self._since >= self._every:
            self._since = 0
            self._due.set()
        try:
            grown = self._wal.stat().st_size > self._limit + self._every
        except OSError:
            grown = False
        if grown:  # the thread fell behind (or a reader held it back): bound the WAL here
            self.now()

    def now(self) -> None:
        """Checkpoint in the caller's thread, after any checkpoint under way."""
        with self._lock:
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self._stop = True
        self._due.set()
        self._thread.join()
        self._db.close()

    def _loop(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            if self._stop:
                return
            try:
                with self._lock:
                    self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # check() in the writer still bounds the WAL
                self.last_error = f"checkpoint: {exc}"


def _schema_of(db: sqlite3.Connection) -> str | None:
    """The schema a store says it has; None for a new (empty) file."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return None
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    return None if row is None else row[0]


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
    if row is None or row[0] not in READABLE:
        db.close()
        raise BpfDepotError(f"the time-series store {path} has schema {row and row[0]}; this "
                            f"bpfdepot reads schemas {', '.join(READABLE)}",
                            hint="query it with the bpfdepot that wrote it")
    return db  # both schemas have the events this module reads: a table (1) or a view (2)


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
