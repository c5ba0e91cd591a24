"""``follow: true`` for the uprobe attach kinds: also probe every other file of a library name
that processes map, at start and while the run lasts (a copy in a container, a vendored
``libssl.so.3`` found through LD_LIBRARY_PATH, a library dlopen()ed later).

Uprobes are per inode, so one attach per distinct file (st_dev, st_ino) covers every process
that maps it, now and later. One watcher thread serves every followed program of the run: it
rescans ``/proc`` every ``INTERVAL`` seconds, and reads ``/proc/PID/maps`` only for pids it has
not seen with the same signature: the inode of the ``/proc/PID`` directory (from readdir, free;
a reused pid is a new inode) and the virtual size in ``/proc/PID/statm`` (an exec or an mmap,
such as a dlopen, changes it). A process that only runs changes neither, so an idle node costs
one small ``statm`` read per process and scan (bench/bench_uprobe_follow.py). An exec or dlopen
that left the size exactly unchanged would be missed until the next change.

Each attach made here is said on stderr (``uprobe l7_tls:SSL_write_ex attached to
/tmp/x/libssl.so.3 (pid 1234)``), as is a copy that cannot be probed (its function missing,
say); that copy is not tried again. Everything is detached with the program's other links.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

INTERVAL = 1.0  # s between rescans: a process that loads the library is probed within this
Key = tuple[int, int]  # (st_dev, st_ino) of a library file
# attach(open_path) → a link, or raises with a message; the subscription's own attach call
Attacher = Callable[[str], object]


def matches(name: str, path: str) -> bool:
    """Whether a mapped ``path`` is a file of library ``name`` (``libssl.so.3`` or
    ``libssl.so.3.0.2``; what ``library_in_maps`` takes for the library)."""
    base = path.rsplit("/", 1)[-1]
    return base == name or base.startswith(name + ".")


def mapped_paths(maps_text: str, names: set[str]) -> Iterator[tuple[str, str]]:
    """(name, path) for each distinct file of one of ``names`` in a ``/proc/PID/maps`` text."""
    seen = set()
    for line in maps_text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("/") or parts[5] in seen:
            continue
        path = parts[5]
        if path.endswith(" (deleted)"):
            continue  # replaced on disk: the process's copy is only reachable by map_files
        for name in names:
            if matches(name, path):
                seen.add(path)
                yield name, path


def read_small(path: str) -> bytes:
    """A /proc file of one page at most, with raw syscalls (half the cost of open())."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def read_all(path: str) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        parts = []
        while chunk := os.read(fd, 1 << 16):
            parts.append(chunk)
        return b"".join(parts).decode("utf-8", "surrogateescape")
    finally:
        os.close(fd)


@dataclass(slots=True, eq=False)
class Subscription:
    """One followed program: its library name, what is probed, and how to attach one more."""

    name: str                          # library file name (libssl.so.3)
    label: str                         # "uprobe object:program" for messages
    attach: Attacher
    known: set[Key] = field(default_factory=set)
    links: list[object] = field(default_factory=list)


class Watcher:
    """The scans of ``/proc`` and the subscriptions they serve (one per process: ``WATCHER``)."""

    def __init__(self, proc: str = "/proc", say: Callable[[str], None] | None = None,
                 interval: float = INTERVAL) -> None:
        self.proc, self.interval = proc, interval
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self._subs: list[Subscription] = []
        self._seen: dict[int, tuple[int, bytes]] = {}  # pid → signature when its maps were read
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.scans = 0
        self.maps_read = 0

    def subscribe(self, sub: Subscription) -> None:
        """Add ``sub`` and probe what processes map now (every pid's maps are read: the new
        name was never looked for), then keep following in the background."""
        with self._lock:
            self._subs.append(sub)
            self._scan(full=True)
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="bpfdepot-uprobe-follow",
                                                daemon=True)
                self._thread.start()

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove ``sub`` and destroy its links; the thread ends with the last subscription."""
        thread = None
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
            while sub.links:
                sub.links.pop().destroy()
            if not self._subs and self._thread is not None:
                thread, self._thread = self._thread, None
                self._stop.set()
                self._seen.clear()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    self._scan(full=False)
                except Exception as exc:  # noqa: BLE001 - the watcher must outlive one bad scan
                    self.say(f"bpfdepot: uprobe follow: scan failed: {exc!r}")

    def scan(self) -> None:
        """One incremental rescan now (what the thread does every ``INTERVAL``)."""
        with self._lock:
            self._scan(full=False)

    def _scan(self, *, full: bool) -> None:
        subs = list(self._subs)
        if not subs:
            return
        self.scans += 1
        names = {s.name for s in subs}
        alive = set()
        for entry in os.scandir(self.proc):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            alive.add(pid)
            try:
                size = read_small(f"{self.proc}/{pid}/statm").split(b" ", 1)[0]
                signature = (entry.inode(), size)
                if not full and self._seen.get(pid) == signature:
                    continue
                maps = read_all(f"{self.proc}/{pid}/maps")
            except OSError:
                continue  # exited meanwhile
            self.maps_read += 1
            self._seen[pid] = signature
            for name, path in mapped_paths(maps, names):
                self._offer(pid, name, path, subs)
        for pid in set(self._seen) - alive:
            del self._seen[pid]

    def _offer(self, pid: int, name: str, path: str, subs: list[Subscription]) -> None:
        """Probe ``path`` (as pid sees it) for each subscription of ``name`` that lacks it."""
        root = f"{self.proc}/{pid}/root"
        try:
            st = os.stat(root + path)
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        # the plain path when it is the same file here (stable after the process exits)
        try:
            here = os.stat(path)
            open_path = path if (here.st_dev, here.st_ino) == key else root + path
        except OSError:
            open_path = root + path
        for sub in subs:
            if sub.name != name or key in sub.known:
                continue
            sub.known.add(key)  # tried once, whatever the outcome
            try:
                sub.links.append(sub.attach(open_path))
            except Exception as exc:  # noqa: BLE001 - one bad copy must not stop the run
                self.say(f"{sub.label} not attached to {path} (pid {pid}): "
                         f"{getattr(exc, 'message', str(exc))}")
                continue
            self.say(f"{sub.label} attached to {path} (pid {pid})")


WATCHER = Watcher()


class FollowLink:
    """The link of a followed program: its ld.so.cache attach (if any) plus every copy found
    later; ``destroy()`` stops following and detaches all of them."""

    def __init__(self, watcher: Watcher, sub: Subscription) -> None:
        self._watcher, self._sub = watcher, sub
        self._done = False

    @property
    def attached(self) -> int:
        """Files probed now."""
        return len(self._sub.links)

    def destroy(self) -> None:
        if not self._done:
            self._done = True
            self._watcher.unsubscribe(self._sub)


def follow(name: str, label: str, attach: Attacher, first: tuple[Key, object] | None,
           watcher: Watcher | None = None) -> FollowLink:
    """Follow library ``name`` for one program; ``first`` is the ld.so.cache file's key and
    link when there is one (never probed twice)."""
    sub = Subscription(name=name, label=label, attach=attach)
    if first is not None:
        sub.known.add(first[0])
        sub.links.append(first[1])
    (watcher or WATCHER).subscribe(sub)
    return FollowLink(watcher or WATCHER, sub)
