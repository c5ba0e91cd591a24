"""Labels for one ``bpfdepot run --labels``: the resolver, its cgroup2 watcher and the stamper
the pipeline applies to every batch before its taps and sinks (so every sink, file, Kafka or
TSDB, gets the same ``labels`` object in each record).

With a process filter (``--unit``/``--cgroup``/``--pid``, loader/monitor.py) the run also names
each record's filter label id (:class:`FilterNames`): ``"filter":"unit:shop-api.service"`` in
every filtered record, with or without ``--labels``; with ``--labels`` a record that carries
the label id but no cgroup id is labelled by the cgroup of the target it matched (a unit's
directory, a ``--cgroup`` path, a container's or pod's cgroup), not only by its pid (a process that exited before its record
was read has no /proc entry left). ``run_stamp`` composes the two for the pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from loader.errors import ManifestError
from loader.labels.resolver import LabelResolver, LabelSettings, find_cgroup2_mount
from loader.labels.stamp import FilterStamper, Stamper
from loader.labels.updater import CgroupWatcher
from loader.sinks.prometheus_labels import SeriesLabels

UNIT_LOOKUP_S = 1.0  # a unit not started yet is looked for again at most this often


class RunLabels:
    """Started by ``open_labels``; ``stamp`` goes to the pipeline, ``close`` at the run's end."""

    def __init__(self, root: Path, cgroup2: Path) -> None:
        self.resolver = LabelResolver(LabelSettings(root=root, cgroup2=cgroup2))
        self.watcher = CgroupWatcher(self.resolver)
        self.stamper = Stamper(self.resolver)
        self.series: SeriesLabels | None = None  # made by series_labels() for --metrics
        self.watcher.start()

    def stamp(self, lines: bytes) -> bytes:
        return self.stamper.stamp(lines)

    def series_labels(self) -> SeriesLabels:
        """Unit/pod labels for the Prometheus series keyed by a cgroup id (``--metrics``)."""
        self.series = SeriesLabels(lambda cg: dict(self.resolver.labels_for_cgroup_id(cg)))
        return self.series

    def summary(self) -> str:
        note = f"; {self.watcher.degraded}" if self.watcher.degraded else ""
        over = sum(self.series.over.values()) if self.series is not None else 0
        if over:
            note += (f"; {over} Prometheus series without unit/pod labels (more than "
                     f"{self.series.max_series} in one metric: "
                     "bpfdepot_series_labels_over_limit)")
        return (f"labels: {self.stamper.labelled} record(s) labelled, "
                f"{self.stamper.unlabelled} without a cgroup, unit or pod{note}")

    def close(self) -> None:
        self.watcher.stop()


class FilterNames:
    """Filter label id → the target it stands for, read from the monitor's public
    ``labels: dict[Target, int]`` (label ids are never reused within a run)."""

    def __init__(self, monitor) -> None:
        self.monitor = monitor
        self._by_label: dict[int, object] = {}
        self._paths: dict[int, tuple[str | None, float]] = {}  # label → (cgroup path, looked at)

    def _target(self, label: int):
        if label not in self._by_label:
            # the monitor thread may add targets (a filter file): copy before reading
            self._by_label = {v: t for t, v in dict(self.monitor.labels).items()}
        return self._by_label.get(label)

    def name(self, label: int) -> str | None:
        """``unit:NAME``, ``cgroup:PATH`` or ``pid:N``; None for an id no target has."""
        target = self._target(label)
        return None if target is None else f"{target.kind}:{target.value}"

    def cgroup_path(self, label: int, mount: Path,
                    id_path: Callable[[int], str | None] | None = None) -> str | None:
        """The target's cgroup2 directory as ``/a/b`` under ``mount``; None for a pid target,
        a unit not started yet or a directory outside ``mount``. Looked up at most once a
        second per label (the Stamper asks for every record)."""
        path, at = self._paths.get(label, (None, float("-inf")))
        now = time.monotonic()
        if now - at < UNIT_LOOKUP_S:
            return path
        path = self._lookup(label, mount, id_path)
        self._paths[label] = (path, now)
        return path

    def _lookup(self, label: int, mount: Path,
                id_path: Callable[[int], str | None] | None) -> str | None:
        # the monitor's own ids (units, cgroups, containers and pods), else by name
        ids = self.monitor.cgroup_ids(label)
        if ids and id_path is not None and (found := id_path(ids[0])) is not None:
            return found
        target = self._target(label)
        if target is None or target.kind not in ("unit", "cgroup"):
            return None
        from loader.monitor import unit_dirs

        root = Path(self.monitor.root)
        if target.kind == "unit":
            dirs = unit_dirs(root, target.value)
            where = dirs[0] if dirs else None
        else:
            where = Path(target.value) if target.value.startswith("/") else root / target.value
        if where is None or not where.is_relative_to(mount):
            return None
        rel = str(where.relative_to(mount))
        return "/" if rel == "." else "/" + rel


def run_stamp(labels: RunLabels | None, monitor) -> Callable[[bytes], bytes] | None:
    """What the pipeline applies to every batch: filter names when a filter runs, then the
    labels (by the filter target's cgroup when a record has no cgroup id of its own)."""
    stampers: list[Callable[[bytes], bytes]] = []
    if monitor is not None:
        names = FilterNames(monitor)
        stampers.append(FilterStamper(names.name).stamp)
        if labels is not None:
            index = labels.resolver.index
            labels.stamper.label_paths = lambda label: names.cgroup_path(label, index.mount,
                                                                         index.path)
    if labels is not None:
        stampers.append(labels.stamp)
    if len(stampers) <= 1:
        return stampers[0] if stampers else None
    first, second = stampers

    def both(lines: bytes) -> bytes:
        return second(first(lines))

    return both


def open_labels(root: str, say: Callable[[str], None]) -> RunLabels:
    """Labels from the node's files under ``root`` (``/``; a container's view of the host may
    mount it elsewhere), keyed by the cgroup2 ids and pids the records carry."""
    cgroup2 = find_cgroup2_mount(Path("/proc/self/mounts").read_text())
    if cgroup2 is None:
        raise ManifestError("--labels needs cgroup2, which this host does not mount",
                            hint="mount cgroup2 (e.g. on /sys/fs/cgroup/unified) or run without "
                                 "--labels")
    if not Path(root).is_dir():
        raise ManifestError(f"--labels root {root} is not a directory",
                            hint="give the directory holding the node's var/log/pods and run/containerd")
    labels = RunLabels(Path(root), cgroup2)
    say(f"bpfdepot: labels from {cgroup2} and {root} (units, pods, containers)")
    return labels
