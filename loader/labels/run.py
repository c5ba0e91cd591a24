"""Labels for one ``bpfdepot run --labels``: the resolver, its cgroup2 watcher and the stamper
the pipeline applies to every batch before its taps and sinks (so every sink, file, Kafka or
TSDB, gets the same ``labels`` object in each record)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from loader.errors import ManifestError
from loader.labels.resolver import LabelResolver, LabelSettings, find_cgroup2_mount
from loader.labels.stamp import Stamper
from loader.labels.updater import CgroupWatcher


class RunLabels:
    """Started by ``open_labels``; ``stamp`` goes to the pipeline, ``close`` at the run's end."""

    def __init__(self, root: Path, cgroup2: Path) -> None:
        self.resolver = LabelResolver(LabelSettings(root=root, cgroup2=cgroup2))
        self.watcher = CgroupWatcher(self.resolver)
        self.stamper = Stamper(self.resolver)
        self.watcher.start()

    def stamp(self, lines: bytes) -> bytes:
        return self.stamper.stamp(lines)

    def summary(self) -> str:
        note = f"; {self.watcher.degraded}" if self.watcher.degraded else ""
        return (f"labels: {self.stamper.labelled} record(s) labelled, "
                f"{self.stamper.unlabelled} without a cgroup, unit or pod{note}")

    def close(self) -> None:
        self.watcher.stop()


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
