"""Business labels: which systemd unit, or which pod and container, a cgroup (or pid) belongs to.

    cgpath.py    tier 1-2: cgroup path → unit / container id + pod uid (no files read)
    sources.py   tier 3-5: kubelet log dirs, containerd bundles' config.json, the
                 ContainerSource hook (a containerd API client would plug in here)
    resolver.py  CgroupIndex (cgroup id ↔ path), LabelResolver (cached by cgroup id, bounded)
    updater.py   CgroupWatcher: inotify on the cgroup2 tree, full rescans as fallback
    stamp.py     Stamper: ``"labels": {...}`` spliced into batches of encoded JSON records
    pods.py      container ids and ``ns/name`` pods → their cgroup ids (``--container``/``--pod``)
    procs.py     ProcTracker: pid → cgroup from exec/exit, kept 30 s after a process exited
    run.py       one run's labels, filter names and the stamp the pipeline applies
    inotify.py   the ctypes inotify binding

Use::

    resolver = LabelResolver(LabelSettings(cgroup2=find_cgroup2_mount(mounts)))
    with CgroupWatcher(resolver):
        resolver.labels_for_cgroup_id(event_cgroup_id)   # {"unit": "shop-api.service", ...}
        resolver.labels_for_pid(pid)                     # {"namespace": ..., "pod": ..., ...}

Label names: ``unit``, ``slice``, ``uid`` (user sessions) for systemd cgroups; ``namespace``,
``pod``, ``container``, ``pod_uid``, ``container_id``, ``image``, ``runtime``,
``container_type`` for containers. Keys with no value are left out.
"""

from loader.labels.cgpath import PathInfo, parse_cgroup_path
from loader.labels.resolver import (
    EMPTY,
    CgroupIndex,
    LabelResolver,
    LabelSettings,
    find_cgroup2_mount,
)
from loader.labels.sources import ContainerSource
from loader.labels.stamp import Stamper
from loader.labels.updater import CgroupWatcher

__all__ = [
    "EMPTY",
    "CgroupIndex",
    "CgroupWatcher",
    "ContainerSource",
    "LabelResolver",
    "LabelSettings",
    "PathInfo",
    "Stamper",
    "find_cgroup2_mount",
    "parse_cgroup_path",
]
