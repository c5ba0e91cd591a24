"""Keeps the cgroup index current: inotify on every cgroup2 directory, a full rescan as fallback.

cgroup2 directories are made and removed through mkdir/rmdir on the mount, so the parent's
inotify watch sees ``IN_CREATE``/``IN_DELETE`` with ``IN_ISDIR`` (renames within a parent show
as ``IN_MOVED_FROM``/``IN_MOVED_TO``). inotify is not recursive: each new directory gets its own
watch, and its subtree is walked right after, because children made before the watch existed
send no event. When events are lost (``IN_Q_OVERFLOW``), a watch cannot be added (ENOSPC:
``fs.inotify.max_user_watches``) or inotify is unavailable, the index is rebuilt from the tree
every ``rescan_interval`` seconds (and on overflow at once); ``degraded`` says so.

With ``LabelSettings.track_processes`` the watcher also starts the exec/exit process table
(loader/labels/procs.py) and hands it to the resolver, so a pid that exited before its record
was read is still labelled; when BPF is not allowed, ``degraded`` says that too.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
from typing import Self

from loader.labels import inotify
from loader.labels.resolver import LabelResolver

log = logging.getLogger(__name__)

_ADDED = inotify.IN_CREATE | inotify.IN_MOVED_TO
_REMOVED = inotify.IN_DELETE | inotify.IN_MOVED_FROM


class CgroupWatcher:
    """A daemon thread applying cgroup2 mkdir/rmdir to a resolver's index and cache."""

    def __init__(self, resolver: LabelResolver) -> None:
        self.resolver = resolver
        self.index = resolver.index
        self.interval = resolver.settings.rescan_interval
        self.degraded = ""  # why the watcher fell back to rescans only ("" when it did not)
        self.rescans = 0
        self.events = 0
        self.procs = None  # the exec/exit tracker (loader/labels/procs.py) while started
        self._ino: inotify.Inotify | None = None
        self._wd_path: dict[int, str] = {}
        self._path_wd: dict[str, int] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Index the tree, watch every directory, then follow changes in a daemon thread."""
        try:
            self._ino = inotify.Inotify()
        except OSError as exc:
            self.degraded = f"inotify unavailable ({exc.strerror}); rescanning every {self.interval} s"
        self._full_rescan()
        if self.resolver.settings.track_processes:
            self._track_processes()
        self._thread = threading.Thread(target=self._run, name="bpfdepot-labels", daemon=True)
        self._thread.start()

    def _track_processes(self) -> None:
        from loader.errors import BpfDepotError
        from loader.labels.procs import track_processes

        settings = self.resolver.settings
        try:
            self.procs = track_processes(grace=settings.exited_grace)
        except BpfDepotError as exc:
            note = (f"exec/exit tracking off ({exc.message}): a process that exits before its "
                    "record is read gets no labels")
            self.degraded = f"{self.degraded}; {note}" if self.degraded else note
            return
        self.resolver.procs = self.procs

    def stop(self) -> None:
        """Stop the thread, the process tracker and drop every watch; idempotent."""
        self._stop.set()
        if self.procs is not None:
            self.resolver.procs = None
            self.procs.close()
            self.procs = None
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._ino is not None:
            self._ino.close()
            self._ino = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        fds = [self._wake_r] + ([self._ino.fd] if self._ino is not None else [])
        while not self._stop.is_set():
            ready, _, _ = select.select(fds, [], [], self.interval)
            if self._stop.is_set():
                return
            if not ready:
                self._full_rescan()  # the fallback: catches whatever inotify could not
                continue
            if self._ino is not None and self._ino.fd in ready:
                try:
                    self._apply(self._ino.read())
                except Exception:  # never let the thread die: a rescan repairs the index
                    log.exception("cgroup watcher: applying events failed; rescanning")
                    self._full_rescan()

    def _apply(self, events: list[inotify.Event]) -> None:
        for ev in events:
            self.events += 1
            if ev.mask & inotify.IN_Q_OVERFLOW:
                self._full_rescan()
                continue
            if ev.mask & inotify.IN_IGNORED:
                path = self._wd_path.pop(ev.wd, None)
                if path is not None and self._path_wd.get(path) == ev.wd:
                    del self._path_wd[path]
                continue
            parent = self._wd_path.get(ev.wd)
            if parent is None or not ev.name or not ev.mask & inotify.IN_ISDIR:
                continue  # cgroup control files, or an event of a watch already dropped
            rel = parent.rstrip("/") + "/" + ev.name
            if ev.mask & _REMOVED:
                self._drop(rel)
            elif ev.mask & _ADDED:
                self._follow(rel)

    def _follow(self, rel: str) -> None:
        """A directory appeared: watch it, then index and watch its subtree until no directory
        is new, so a child made between a walk and its parent's watch is not missed."""
        self._watch_tree([rel])
        while fresh := [p for p in self.index.add_tree(rel) if p not in self._path_wd]:
            self._watch_tree(fresh)
            if self._ino is None:
                return

    def _drop(self, rel: str) -> None:
        """A directory (and its subtree) left: forget ids, cached labels and watches."""
        self.resolver.forget(self.index.remove_tree(rel))
        prefix = rel + "/"
        for path in [p for p in self._path_wd if p == rel or p.startswith(prefix)]:
            wd = self._path_wd.pop(path)
            self._wd_path.pop(wd, None)
            if self._ino is not None:
                self._ino.remove(wd)

    def _watch_tree(self, paths: list[str]) -> None:
        if self._ino is None:
            return
        for rel in paths:
            if rel in self._path_wd:
                continue
            try:
                wd = self._ino.add_dir(self.index.abspath(rel))
            except OSError as exc:
                if exc.errno == errno.ENOSPC and not self.degraded:
                    self.degraded = (f"inotify watch limit reached at {rel}; rescanning every "
                                     f"{self.interval} s (raise fs.inotify.max_user_watches)")
                continue  # ENOENT: removed meanwhile, its parent's IN_DELETE follows
            # A re-used wd means the old directory's IN_IGNORED is still queued: replace it.
            self._wd_path[wd] = rel
            self._path_wd[rel] = wd

    def _full_rescan(self) -> None:
        self.rescans += 1
        _added, gone = self.index.rescan()
        self.resolver.forget(gone)
        live = set(self.index.paths())
        for path in [p for p in self._path_wd if p not in live]:
            wd = self._path_wd.pop(path)
            self._wd_path.pop(wd, None)
            if self._ino is not None:
                self._ino.remove(wd)
        self._watch_tree(sorted(live))
