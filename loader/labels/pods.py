"""``--container ID`` and ``--pod NS/NAME`` → the cgroup2 directories the process filter
monitors, found through the label resolver (so the same tiers name them: the cgroup path for
container ids and pod uids, kubelet log dirs and containerd bundles for names).

A container id is its full 64 hex digits or a prefix of 12 or more (what ``crictl ps`` and
``docker ps`` print; ``containerd://…``, ``docker://…`` and ``cri-o://…`` as ``kubectl`` shows
them are taken too); its directories are the topmost cgroups whose path holds that id (the
runtime's scope and nothing of another container). A pod is ``namespace/name`` (DNS-1123
names); its directory is the pod's cgroup (``kubepods-…-pod<uid>.slice`` or
``/kubepods/<qos>/pod<uid>``) named by the kubelet's ``var/log/pods/<ns>_<name>_<uid>``.
Everything below a directory is monitored by the kernel's ancestor walk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from loader.errors import ManifestError
from loader.labels.resolver import LabelResolver, LabelSettings

_CONTAINER_ID = re.compile(r"^[0-9a-f]{12,64}$")
_RUNTIME_URI = re.compile(r"^(?:containerd|docker|cri-o|crio)://")
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_POD = re.compile(rf"^(?P<ns>{_DNS_LABEL})/(?P<name>[a-z0-9](?:[-.a-z0-9]{{0,251}}[a-z0-9])?)$")


def container_id(value: object, where: str) -> str:
    """A container id or prefix as asked, checked; ManifestError naming it otherwise."""
    text = _RUNTIME_URI.sub("", str(value).strip())
    if not _CONTAINER_ID.match(text):
        raise ManifestError(f"{where}: {value!r} is not a container id",
                            hint="give the container's id in lowercase hex, whole (64) or its "
                                 "first 12 or more digits, as `crictl ps` prints it")
    return text


def pod_name(value: object, where: str) -> str:
    """``namespace/name`` as asked, checked; ManifestError naming it otherwise."""
    text = str(value).strip()
    if not _POD.match(text):
        raise ManifestError(f"{where}: {value!r} is not a pod as namespace/name",
                            hint="e.g. shop/cart-7c9f8-x2x4q (lowercase DNS names, one '/')")
    return text


@dataclass(frozen=True, slots=True)
class Found:
    """What one container or pod resolves to now: cgroup paths (relative to the cgroup2
    mount) and their ids; ``container`` is the full id a prefix stands for; ``problem`` says why
    nothing is monitored when the answer is ambiguous."""

    paths: tuple[str, ...] = ()
    ids: tuple[int, ...] = ()
    container: str = ""
    problem: str = ""


class PodFinder:
    """Containers and pods → cgroup directories through a resolver whose index a
    CgroupWatcher keeps current (started by ``open``; ``close`` stops it)."""

    def __init__(self, resolver: LabelResolver, watcher=None) -> None:
        self.resolver = resolver
        self.watcher = watcher

    @classmethod
    def open(cls, *, root: Path, cgroup2: Path) -> PodFinder:
        """A finder reading the node's files under ``root`` (``--labels ROOT``, else ``/``)."""
        from loader.labels.updater import CgroupWatcher

        # the filter needs no exec/exit table: it matches cgroups, not pids
        resolver = LabelResolver(LabelSettings(root=root, cgroup2=cgroup2, track_processes=False))
        watcher = CgroupWatcher(resolver)
        watcher.start()
        return cls(resolver, watcher)

    def _found(self, paths: list[str]) -> tuple[tuple[str, ...], tuple[int, ...]]:
        pairs = [(p, self.resolver.index.cgroup_id(p)) for p in paths]
        kept = [(p, cg) for p, cg in pairs if cg is not None]  # removed meanwhile
        return tuple(p for p, _ in kept), tuple(cg for _, cg in kept)

    def container(self, cid: str) -> Found:
        """The directories of the one container whose id is or starts with ``cid``."""
        paths = self.resolver.cgroups_matching({"container_id": cid})
        full: dict[str, list[str]] = {}
        for rel in paths:
            cg = self.resolver.index.cgroup_id(rel)
            labels = self.resolver.labels_for_cgroup_id(cg) if cg is not None else {}
            full.setdefault(labels.get("container_id", ""), []).append(rel)
        full.pop("", None)
        if len(full) > 1:
            names = ", ".join(sorted(i[:16] + "…" for i in full))
            return Found(problem=f"{cid} matches {len(full)} containers ({names})")
        if not full:
            return Found()
        (whole, mine), = full.items()
        paths_, ids = self._found(mine)
        return Found(paths=paths_, ids=ids, container=whole)

    def pod(self, name: str) -> Found:
        """The cgroup directories of pod ``namespace/name`` (one, or one per pod uid while an
        old pod of that name is still being torn down)."""
        ns, _, pod = name.partition("/")
        paths_, ids = self._found(self.resolver.cgroups_matching({"namespace": ns, "pod": pod}))
        return Found(paths=paths_, ids=ids)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
