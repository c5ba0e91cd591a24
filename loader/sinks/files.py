"""JSON-lines sinks: stdout, and files rotated by size and count with no torn lines.

Each record becomes one line (its value and ``\\n``). A batch goes to the file as one ``write()``
of whole lines on an ``O_APPEND`` descriptor, fsynced per batch with ``fsync="batch"``, so a
crash can leave at most one partial line, at the end of the live file. Opening the file again
cuts that partial line off and counts it (``dropped_partial_lines``), so a reader never parses
half a record.

Rotation: when the next lines would take the live file past ``max_bytes``, ``path`` becomes
``path.1``, ``path.1`` becomes ``path.2`` … up to ``path.<keep>``, and the oldest is dropped
(``keep=0`` keeps no old file at all). A line is never split across files. A single line longer
than ``max_bytes`` is written alone into a fresh file: the only way a file passes ``max_bytes``.

A value holding a raw newline would break the framing; it is not written but counted failed.
The sinks are not thread-safe: one writer thread per sink.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import sys
from pathlib import Path
from typing import BinaryIO, Literal, Sequence

from loader.errors import BpfDepotError
from loader.sinks import LogThrottle, Record, SinkKind, SinkStats, register

log = logging.getLogger("bpfdepot.sink.file")

_TAIL_BLOCK = 64 * 1024  # bytes read at a time when looking back for the last newline


class FileSinkError(BpfDepotError):
    """A file or stdout sink cannot be opened."""


def _join(records: Sequence[Record]) -> tuple[bytes, int, int]:
    """Whole lines for ``records``: (bytes, lines, values refused for holding a newline)."""
    if not records:
        return b"", 0, 0
    data = b"\n".join([r.value for r in records]) + b"\n"
    if data.count(b"\n") == len(records):  # one pass in C; the common case
        return data, len(records), 0
    good = [r.value for r in records if b"\n" not in r.value]
    bad = len(records) - len(good)
    return (b"\n".join(good) + b"\n" if good else b""), len(good), bad



class _Counted:
    """What the line sinks share: counting what was written and what was given up on."""

    name: str
    _stats: SinkStats
    last_error: str

    _throttle: LogThrottle

    def _fail(self, count: int, why: str) -> None:
        self._stats.failed += count
        self.last_error = why
        kind = re.sub(r"\d+", "N", why)  # "3 value(s) hold…" and "5 value(s) hold…" are one kind
        self._throttle.log(logging.ERROR, kind, f"{self.name}: {count} record(s) not written: {why}")

    def stats(self) -> SinkStats:
        return SinkStats(delivered=self._stats.delivered, failed=self._stats.failed)

class FileSink(_Counted):
    """Appends JSON lines to ``path``, rotating by size (``max_bytes``) and count (``keep``)."""

    def __init__(self, path: Path | str, *, max_bytes: int, keep: int,
                 fsync: Literal["never", "batch"] = "batch", name: str = "file") -> None:
        self.name = name
        self.path = Path(path)
        if max_bytes < 1:
            raise FileSinkError(f"file sink {self.path}: max_bytes must be at least 1, not {max_bytes}",
                                hint="give the size a file may reach before it rotates, e.g. 100 MiB")
        if keep < 0:
            raise FileSinkError(f"file sink {self.path}: keep must be 0 or more, not {keep}",
                                hint="give the number of rotated files to keep beside the live one")
        if fsync not in ("never", "batch"):
            raise FileSinkError(f"file sink {self.path}: fsync must be 'never' or 'batch', not {fsync!r}",
                                hint="use fsync='batch' to survive power loss, 'never' for speed")
        self.max_bytes, self.keep, self.fsync = max_bytes, keep, fsync
        self.dropped_partial_lines = 0  # torn lines cut off at open (left by a crash)
        self.dropped_partial_bytes = 0
        self.rotations = 0
        self.last_error = ""
        self._stats = SinkStats()
        self._throttle = LogThrottle(log)
        self._fd = -1
        self._open(first=True)

    # -- opening and recovery ---------------------------------------------------------------

    def _open(self, *, first: bool = False) -> None:
        parent = self.path.parent
        if not parent.is_dir():
            what = "is not a folder" if parent.exists() else "does not exist"
            raise FileSinkError(f"cannot write JSON lines to {self.path}: the folder {parent} {what}",
                                hint=f"create it (mkdir -p {parent}) or choose another path")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except IsADirectoryError:
            raise FileSinkError(f"cannot write JSON lines to {self.path}: it is a folder",
                                hint=f"name a file inside it, e.g. {self.path / 'events.jsonl'}") from None
        except PermissionError:
            raise FileSinkError(f"cannot write JSON lines to {self.path}: permission denied",
                                hint=f"choose a folder this user may write to, or fix its owner and mode "
                                     f"(ls -ld {parent})") from None
        except OSError as e:
            raise FileSinkError(f"cannot write JSON lines to {self.path}: {e.strerror}",
                                hint="choose a writable path on a local file system") from None
        try:
            # A second writer would interleave rotations with ours: refuse it at start.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if first:
                os.close(fd)
                raise FileSinkError(f"another process is writing {self.path}",
                                    hint="give each loader its own output file") from None
            # Taken between our rename and this open: keep ours; the other writer was refused at start.
        self._fd = fd
        self._size = self._cut_partial_line(fd)

    def _cut_partial_line(self, fd: int) -> int:
        """Truncate a line a crash left without its newline; return the file's size."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        keep, pos = 0, size
        while pos > 0:
            start = max(0, pos - _TAIL_BLOCK)
            at = os.pread(fd, pos - start, start).rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            pos = start
        os.ftruncate(fd, keep)
        os.fsync(fd)
        self.dropped_partial_lines += 1
        self.dropped_partial_bytes += size - keep
        log.warning("%s: cut off a partial last line of %d bytes (left by a crash)", self.path, size - keep)
        return keep

    # -- writing ----------------------------------------------------------------------------

    def write(self, stream: str, records: Sequence[Record]) -> None:
        """Append one line per record; rotates between lines, never inside one."""
        data, lines, bad = _join(records)
        if bad:
            self._fail(bad, f"{bad} value(s) of {stream} hold a raw newline")
        self.write_lines(stream, data, lines)

    def write_lines(self, stream: str, data: bytes, count: int) -> None:
        """Append ``data``, ``count`` whole lines ending in a newline (the loader's batches)."""
        if self._fd < 0:
            raise FileSinkError(f"file sink {self.path} is closed", hint="open a new FileSink")
        try:
            while data:
                room = max(0, self.max_bytes - self._size)
                if len(data) <= room:
                    chunk, data = data, b""
                else:
                    cut = data.rfind(b"\n", 0, room) + 1  # end of the last whole line that fits
                    if cut == 0:
                        if self._size > 0:
                            self._rotate()
                            continue
                        cut = data.index(b"\n") + 1  # one line over max_bytes: alone in a fresh file
                    chunk, data = data[:cut], data[cut:]
                self._append(chunk)
                if data:
                    self._rotate()
        except (FileSinkError, OSError) as e:  # rotation failed (folder gone?): the sink is dead
            self._fail(data.count(b"\n"), f"rotating {self.path}: {e}")
            if isinstance(e, FileSinkError):
                raise
            raise FileSinkError(f"cannot rotate {self.path}: {e.strerror or e}",
                                hint=f"keep its folder {self.path.parent} in place and writable") from e

    def _append(self, chunk: bytes) -> None:
        lines, before = chunk.count(b"\n"), self._size
        try:
            view = memoryview(chunk)
            while view:  # a regular file writes it all at once unless the disk is full
                view = view[os.write(self._fd, view):]
            if self.fsync == "batch":
                os.fsync(self._fd)
        except OSError as e:
            try:  # take back what part of the chunk landed, so no torn line stays
                os.ftruncate(self._fd, before)
            except OSError:
                pass
            self._fail(lines, f"writing {self.path}: {e.strerror or e}")
            return
        self._size += len(chunk)
        self._stats.delivered += lines

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        if self.keep == 0:
            _unlink(self.path)
        else:
            for n in range(self.keep - 1, 0, -1):
                try:
                    os.replace(self._rotated(n), self._rotated(n + 1))
                except FileNotFoundError:
                    pass
            os.replace(self.path, self._rotated(1))
        if self.fsync == "batch":
            _fsync_dir(self.path.parent)  # make the renames durable before new lines follow
        self.rotations += 1
        self._open()

    def _rotated(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")


    # -- the Sink protocol --------------------------------------------------------------------


    def flush(self, timeout_s: float = 10.0) -> SinkStats:
        """Lines are written at once; flushing makes them durable (fsync) whatever ``fsync`` says."""
        if self._fd >= 0:
            os.fsync(self._fd)
        return self.stats()

    def close(self) -> SinkStats:
        self._throttle.summary()
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        return self.stats()

    def __enter__(self) -> FileSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StdoutSink(_Counted):
    """JSON lines on stdout (or any binary stream), one flushed write per batch; no rotation."""

    def __init__(self, out: BinaryIO | None = None, *, name: str = "stdout") -> None:
        self.name = name
        self._out = out if out is not None else sys.stdout.buffer
        self._stats = SinkStats()
        self._throttle = LogThrottle(log)
        self.last_error = ""

    def write(self, stream: str, records: Sequence[Record]) -> None:
        data, lines, bad = _join(records)
        if bad:
            self._fail(bad, f"{bad} value(s) of {stream} hold a raw newline")
        self.write_lines(stream, data, lines)

    def write_lines(self, stream: str, data: bytes, lines: int) -> None:
        """Write ``data``, ``lines`` whole lines ending in a newline, and flush."""
        if not data:
            return
        try:
            self._out.write(data)
            self._out.flush()
        except (OSError, ValueError) as e:  # a closed pipe (reader gone) or a closed stream
            self._fail(lines, f"writing {self.name}: {e}")
            return
        self._stats.delivered += lines



    def flush(self, timeout_s: float = 10.0) -> SinkStats:
        return self.stats()

    def close(self) -> SinkStats:
        self._throttle.summary()
        try:
            self._out.flush()
        except (OSError, ValueError):
            pass
        return self.stats()


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:  # some file systems cannot fsync a folder; nothing to do there
            raise
    finally:
        os.close(fd)


def _open_file(storage, target: str, first: bool) -> FileSink:
    f = storage.file
    path = Path(target)
    return FileSink(path, max_bytes=f.max_bytes, keep=f.keep, fsync=f.fsync,
                    name="file" if path == f.path else f"file:{path.name}")


register(SinkKind(name="stdout", order=0, target=lambda want: "" if want.stdout else None,
                  open=lambda storage, target, first: StdoutSink()))
register(SinkKind(name="file", order=1,
                  target=lambda want: str(want.file) if want.file is not None else None,
                  open=_open_file))
