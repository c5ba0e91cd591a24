"""A process's address space, snapshotted from ``/proc/PID/maps`` while it lives.

CATALOG §0.8: bpftrace printed raw hex for the stacks of a process that had exited, because it
read the maps at print time. A ``ProcessMaps`` is taken when the pid is first seen and keeps,
per mapping, the file, its offset and the file's build-id, which is all a frame needs later.
JIT runtimes (V8, the JVM with perf-map-agent, LuaJIT, Python 3.12 ``-X perf``) describe their
anonymous code in ``/tmp/perf-PID.map``; it is read with the snapshot.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

from loader.symbols.elf import ElfSymbols, read_build_id

_DELETED = " (deleted)"


@dataclass(slots=True)
class Mapping:
    """One line of /proc/PID/maps; ``path`` has " (deleted)" removed and ``deleted`` set."""

    start: int
    end: int
    offset: int
    perms: str
    inode: int
    path: str
    deleted: bool = False
    build_id: str | None = None
    symbols: ElfSymbols | None = None  # filled on first use (or at once for deleted files)

    @property
    def is_file(self) -> bool:
        return bool(self.inode) and self.path.startswith("/")

    @property
    def label(self) -> str:
        """What a frame in this mapping is called when it has no symbol."""
        if self.is_file:
            return os.path.basename(self.path)
        return self.path if self.path.startswith("[") else "[anon]"


def parse_maps(text: str) -> list[Mapping]:
    """The mappings of a /proc/PID/maps text, sorted by start address."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, _, hi = parts[0].partition("-")
        path = parts[5].strip() if len(parts) > 5 else ""
        deleted = path.endswith(_DELETED)
        if deleted:
            path = path[: -len(_DELETED)]
        out.append(Mapping(start=int(lo, 16), end=int(hi, 16), offset=int(parts[2], 16),
                           perms=parts[1], inode=int(parts[4]), path=path, deleted=deleted))
    out.sort(key=lambda m: m.start)
    return out


def parse_perf_map(text: str) -> list[tuple[int, int, str]]:
    """(start, end, name) of each ``START SIZE name`` line of a perf-PID.map, sorted."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        try:
            start, size = int(parts[0], 16), int(parts[1], 16)
        except ValueError:
            continue
        out.append((start, start + size, parts[2].strip()))
    out.sort()
    return out


@dataclass(slots=True)
class ProcessMaps:
    """The snapshot of one pid: its mappings, main executable, perf map and resolved frames."""

    pid: int
    mappings: list[Mapping]
    exe: str
    perf_map: list[tuple[int, int, str]] = field(default_factory=list)
    perf_map_stamp: tuple[int, int] | None = None
    memo: dict[int, str] = field(default_factory=dict)  # address → frame, once resolved
    starts: list[int] = field(default_factory=list)
    perf_starts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.starts = [m.start for m in self.mappings]
        self.perf_starts = [s for s, _e, _n in self.perf_map]

    def find(self, addr: int) -> Mapping | None:
        i = bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.mappings[i].end:
            return self.mappings[i]
        return None

    def jit_name(self, addr: int) -> str | None:
        i = bisect_right(self.perf_starts, addr) - 1
        if i >= 0 and addr < self.perf_map[i][1]:
            return self.perf_map[i][2]
        return None


def snapshot_text(pid: int, text: str, *, exe: str | None = None,
                  perf_map: Path | None = None) -> ProcessMaps:
    """A snapshot from a maps text (no /proc access except for the files it names).

    ``exe`` defaults to the lowest file-backed mapping, which is the executable for PIE
    (0x55…) and non-PIE (0x400000) programs alike.
    """
    mappings = parse_maps(text)
    if exe is None:
        exe = next((m.path for m in mappings if m.is_file), "")
    snap = ProcessMaps(pid=pid, mappings=mappings, exe=exe)
    if perf_map is not None:
        read_perf_map(snap, perf_map)
    return snap


def read_perf_map(snap: ProcessMaps, path: Path) -> None:
    """(Re)load a perf map into ``snap`` when the file changed since the last read."""
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == snap.perf_map_stamp:
            return
        snap.perf_map = parse_perf_map(path.read_text(errors="replace"))
        snap.perf_map_stamp = stamp
        snap.perf_starts = [s for s, _e, _n in snap.perf_map]
    except OSError:
        return


def snapshot_live(pid: int, build_ids: dict[tuple[int, int, int, int], str | None]) -> ProcessMaps | None:
    """Snapshot a running process: its maps, exe, and the build-id of each file it maps.

    ``build_ids`` caches build-ids by (dev, inode, size, mtime) across processes, so a second
    process of the same binary costs a stat per file. Files are read through
    ``/proc/PID/map_files``: the very file mapped, even if deleted or replaced since. None when
    the process is gone.
    """
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    try:
        exe = os.readlink(f"/proc/{pid}/exe").removesuffix(_DELETED)
    except OSError:
        exe = None
    snap = snapshot_text(pid, text, exe=exe)
    files: dict[str, str | None] = {}
    for m in snap.mappings:
        if not m.is_file:
            continue
        if m.path in files and not m.deleted:
            m.build_id = files[m.path]
            continue
        via = live_path(pid, m)
        try:
            st = os.stat(via)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in build_ids:
            build_ids[key] = read_build_id(via)
        m.build_id = files[m.path] = build_ids[key]
    return snap


def live_path(pid: int, m: Mapping) -> str:
    """The path that opens the very file a live process maps (also when deleted or replaced,
    and across mount namespaces)."""
    return f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"
