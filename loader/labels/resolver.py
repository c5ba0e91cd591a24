"""Cgroup id / pid → business labels, cached by cgroup id with a bounded, evicting cache.

A cgroup2 id is the inode of the cgroup's directory (what ``bpf_get_current_cgroup_id()`` and
``bpf_get_current_ancestor_cgroup_id()`` return). :class:`CgroupIndex` maps ids to paths under
the cgroup2 mount; :class:`LabelResolver` turns a path into labels through the tiers of
``cgpath`` (unit, container id, pod uid) and ``sources`` (kubelet logs, containerd bundles, any
extra :class:`~loader.labels.sources.ContainerSource`). The updater (``updater.py``) keeps the
index current and evicts gone cgroups; without it, an unknown id triggers a rate-limited rescan.

Labels are read-only mappings shared between lookups: a sink copies them into its record.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from loader.labels.cgpath import parse_cgroup_path
from loader.labels.sources import ContainerdBundles, ContainerSource, KubeletLogs

EMPTY: Mapping[str, str] = MappingProxyType({})


def find_cgroup2_mount(mounts: str) -> Path | None:
    """The cgroup2 mount point in ``/proc/self/mounts`` text (``/sys/fs/cgroup/unified`` on a
    hybrid host), or None when cgroup2 is not mounted."""
    # Kept apart from loader.attach.cgroup.cgroup2_mounts, which would pull in libbpf/cffi.
    found = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            # /proc/mounts escapes spaces and the like as octal (\040)
            found.append(Path(fields[1].encode().decode("unicode_escape")))
    return min(found, key=lambda p: (len(p.parts), str(p))) if found else None


class PidSource(Protocol):
    """Where a process's cgroup id is remembered past its exit (loader/labels/procs.py)."""

    def cgroup_id(self, pid: int) -> int | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelSettings:
    """Where the node's files are and how much to keep; parsed once, passed in."""

    root: Path = Path("/")  # holds var/log/pods, var/log/containers, run/containerd
    cgroup2: Path = Path("/sys/fs/cgroup")
    proc: Path = Path("/proc")
    max_entries: int = 16384  # both the id index and the labels cache
    min_rescan: float = 0.5  # s between on-demand rescans (unknown id, unknown pod)
    retry_incomplete: float = 2.0  # s before a container with no names yet is resolved again
    rescan_interval: float = 60.0  # s between the updater's full rescans (inotify fallback)
    # the updater also tracks processes from exec/exit (loader/labels/procs.py: two programs in
    # the kernel), so a pid that exited before its record was read keeps its labels
    track_processes: bool = True
    exited_grace: float = 30.0  # s an exited process keeps its cgroup for records in flight
    extra_sources: Sequence[ContainerSource] = field(default_factory=tuple)


class CgroupIndex:
    """Cgroup id ↔ path (``/a/b`` relative to the cgroup2 mount; ``/`` is the root)."""

    def __init__(self, mount: Path, *, max_entries: int) -> None:
        self.mount = mount
        self.max_entries = max_entries
        self.untracked = 0  # directories not indexed because the index was full
        self._by_id: dict[int, str] = {}
        self._by_path: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_id)

    def path(self, cgroup_id: int) -> str | None:
        """The path of an indexed cgroup id."""
        return self._by_id.get(cgroup_id)

    def cgroup_id(self, rel: str) -> int | None:
        """The id of a path, indexing it when it is not yet (a process's cgroup named by /proc
        before the watcher saw it); None when there is no such directory."""
        cg = self._by_path.get(rel)
        if cg is not None:
            return cg
        try:
            cg = os.stat(self.abspath(rel), follow_symlinks=False).st_ino
        except OSError:
            return None
        self._insert([(rel, cg)])
        return cg

    def paths(self) -> list[str]:
        """Every indexed path (a snapshot)."""
        with self._lock:
            return list(self._by_path)

    def abspath(self, rel: str) -> str:
        """The directory of an index path on this host."""
        return str(self.mount) + (rel if rel != "/" else "")

    def _walk(self, rel: str) -> Iterable[tuple[str, int]]:
        """(path, id) of ``rel`` and every directory below it, never following symlinks."""
        try:
            st = os.stat(self.abspath(rel), follow_symlinks=False)
        except OSError:
            return
        yield rel, st.st_ino
        stack = [rel]
        while stack:
            cur = stack.pop()
            try:
                with os.scandir(self.abspath(cur)) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            child = (cur.rstrip("/") + "/" + entry.name)
                            yield child, entry.inode()
                            stack.append(child)
            except OSError:  # removed while walking: its own delete event follows
                continue

    def add_tree(self, rel: str) -> list[str]:
        """Index ``rel`` and everything below it; returns the paths newly indexed."""
        return self._insert(self._walk(rel))

    def _insert(self, pairs: Iterable[tuple[str, int]]) -> list[str]:
        added = []
        for path, cg in pairs:
            with self._lock:
                if self._by_path.get(path) == cg:
                    continue
                if len(self._by_id) >= self.max_entries and path not in self._by_path:
                    self.untracked += 1
                    continue
                old = self._by_path.pop(path, None)
                if old is not None:
                    self._by_id.pop(old, None)
                self._by_id[cg] = path
                self._by_path[path] = cg
            added.append(path)
        return added

    def remove_tree(self, rel: str) -> list[int]:
        """Forget ``rel`` and everything below it; returns the ids forgotten."""
        prefix = rel.rstrip("/") + "/"
        with self._lock:
            gone = [p for p in self._by_path if p == rel or p.startswith(prefix)]
            ids = [self._by_path.pop(p) for p in gone]
            for cg in ids:
                self._by_id.pop(cg, None)
        return ids

    def rescan(self) -> tuple[list[str], list[int]]:
        """Rebuild from the tree: (paths added, ids of cgroups gone)."""
        seen = dict(self._walk("/"))
        with self._lock:
            gone = [cg for p, cg in self._by_path.items() if seen.get(p) != cg]
            for cg in gone:
                self._by_path.pop(self._by_id.pop(cg), None)
        return self._insert(seen.items()), gone


class LabelResolver:
    """Labels for a cgroup id, a cgroup path or a pid; thread-safe, bounded, with counters."""

    def __init__(self, settings: LabelSettings, *, index: CgroupIndex | None = None) -> None:
        self.settings = settings
        self.index = index if index is not None else CgroupIndex(
            settings.cgroup2, max_entries=settings.max_entries)
        self.logs = KubeletLogs(settings.root, min_rescan=settings.min_rescan)
        self.bundles = ContainerdBundles(settings.root)
        self.sources: tuple[ContainerSource, ...] = (self.bundles, *settings.extra_sources)
        # cgroup id → (labels, re-resolve after this monotonic time or None when final)
        self._cache: OrderedDict[int, tuple[Mapping[str, str], float | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._rescanned_at = float("-inf")
        self.procs: PidSource | None = None  # set by the updater when it tracks exec/exit
        self.by_exit = 0  # pids labelled from the exec/exit table (gone from /proc)
        self.hits = self.misses = self.unresolved = self.evicted = 0

    def labels_for_path(self, rel: str) -> Mapping[str, str]:
        """Labels of a cgroup path (uncached): path facts, then runtime files by container id,
        then kubelet log names by container id and by pod uid; earlier tiers win."""
        labels = parse_cgroup_path(rel).labels()
        cid, pod_uid = labels.get("container_id"), labels.get("pod_uid")
        if cid:
            for source in self.sources:
                for key, value in source.lookup(cid).items():
                    labels.setdefault(key, value)
            for key, value in self.logs.by_container(cid).items():
                labels.setdefault(key, value)
        pod_uid = labels.get("pod_uid", pod_uid)
        if pod_uid:
            for key, value in self.logs.by_pod(pod_uid).items():
                labels.setdefault(key, value)
        return MappingProxyType(labels)

    def labels_for_cgroup_id(self, cgroup_id: int) -> Mapping[str, str]:
        """Labels of a cgroup id; ``{}`` for an id that is not (or no longer) a cgroup here."""
        now = time.monotonic()
        with self._lock:
            entry = self._cache.get(cgroup_id)
            if entry is not None and (entry[1] is None or now < entry[1]):
                self._cache.move_to_end(cgroup_id)
                self.hits += 1
                return entry[0]
            self.misses += 1
        rel = self.index.path(cgroup_id)
        if rel is None and now - self._rescanned_at >= self.settings.min_rescan:
            # Created before a watch saw it (or no updater runs): look at the tree again.
            self._rescanned_at = now
            self.forget(self.index.rescan()[1])
            rel = self.index.path(cgroup_id)
        if rel is None:
            with self._lock:
                self.unresolved += 1
            return EMPTY
        labels = self.labels_for_path(rel)
        # A container whose names are not on disk yet (bundle written late), or a pod whose
        # log directory is not there yet, is asked again: a --pod filter matches by the names.
        final = (("container_id" not in labels or "container" in labels)
                 and ("pod_uid" not in labels or "pod" in labels))
        with self._lock:
            if self.index.path(cgroup_id) != rel:  # removed meanwhile: do not cache a gone id
                return labels
            self._cache[cgroup_id] = (labels, None if final else now + self.settings.retry_incomplete)
            self._cache.move_to_end(cgroup_id)
            while len(self._cache) > self.settings.max_entries:
                self._cache.popitem(last=False)
                self.evicted += 1
        return labels

    def cgroup_of_pid(self, pid: int) -> str | None:
        """The cgroup2 path of a process: from ``/proc/PID/cgroup`` while it lives (read now:
        processes move), else where the exec/exit table saw it last (``procs``), for a
        process that exited less than ``exited_grace`` seconds ago; None when neither knows."""
        try:
            text = (self.settings.proc / str(pid) / "cgroup").read_text()
        except OSError:
            return self._cgroup_of_exited(pid)
        for line in text.splitlines():
            if line.startswith("0::"):
                rel = line[3:].removesuffix(" (deleted)") or "/"
                # "/../x" is what a reader inside a cgroup namespace sees: not under our mount
                return self._cgroup_of_exited(pid) if ".." in rel.split("/") else rel
        return None

    def _cgroup_of_exited(self, pid: int) -> str | None:
        cg = self.procs.cgroup_id(pid) if self.procs is not None else None
        if cg is None:
            return None
        rel = self.index.path(cg)
        now = time.monotonic()
        if rel is None and now - self._rescanned_at >= self.settings.min_rescan:
            self._rescanned_at = now  # made and left before a watch saw it
            self.forget(self.index.rescan()[1])
            rel = self.index.path(cg)
        if rel is not None:
            with self._lock:
                self.by_exit += 1
        return rel

    def labels_for_pid(self, pid: int) -> Mapping[str, str]:
        """Labels of a process's current cgroup; ``{}`` when the process is gone."""
        rel = self.cgroup_of_pid(pid)
        if rel is None:
            return EMPTY
        cg = self.index.cgroup_id(rel)
        return EMPTY if cg is None else self.labels_for_cgroup_id(cg)

    def cgroups_matching(self, match: Mapping[str, str]) -> list[str]:
        """The topmost indexed cgroup paths whose labels hold every ``match`` item, for a filter
        that covers a cgroup and everything below it (``--pod shop/cart``, ``--container ID``).

        ``container_id`` also matches by a prefix of 12 or more characters (what ``docker ps``
        and ``crictl ps`` print). An empty ``match`` matches nothing.
        """
        if not match:
            return []
        want = dict(match)
        cid = want.pop("container_id", None)
        if cid is not None and len(cid) < 12:
            return []
        found: list[str] = []
        for rel in sorted(self.index.paths()):  # sorted: a parent comes before its children
            if any(rel.startswith(top.rstrip("/") + "/") for top in found):
                continue
            cg = self.index.cgroup_id(rel)
            labels = EMPTY if cg is None else self.labels_for_cgroup_id(cg)
            if cid is not None and not labels.get("container_id", "").startswith(cid):
                continue
            if all(labels.get(k) == v for k, v in want.items()):
                found.append(rel)
        return found

    def forget(self, cgroup_ids: Iterable[int]) -> None:
        """Drop cached labels of cgroups that are gone (ids are reused by new cgroups)."""
        with self._lock:
            for cg in cgroup_ids:
                if self._cache.pop(cg, None) is not None:
                    self.evicted += 1

    def stats(self) -> dict[str, int]:
        """Counters for the run summary."""
        return {"cached": len(self._cache), "indexed": len(self.index), "hits": self.hits,
                "misses": self.misses, "unresolved": self.unresolved, "evicted": self.evicted,
                "by_exit": self.by_exit,
                "untracked": self.index.untracked, "refused_files": self.bundles.refused}
