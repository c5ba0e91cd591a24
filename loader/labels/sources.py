"""Container id / pod uid → names, from files the kubelet and containerd leave on the node.

Tiers 3-5 of the label sources (``../shared/CATALOG.md`` §4g), all read under one configurable
root (``/`` on a node, a temp dir in tests):

3. kubelet log dirs ``var/log/pods/<ns>_<pod>_<uid>/<container>/`` → namespace, pod, container
   names by pod uid; ``var/log/containers/<pod>_<ns>_<container>-<id>.log`` (the kubelet's
   per-container links; only their *names* are read) → the same by container id;
4. containerd runtime-v2 bundles
   ``run/containerd/io.containerd.runtime.v2.task/<ns>/<id>/config.json`` → the CRI annotations
   (container, pod, namespace, pod uid, image);
5. the containerd socket: not implemented. Anything with ``lookup(container_id) -> dict`` (the
   :class:`ContainerSource` protocol) can be passed to the resolver as an extra source; a gRPC
   client (PyPI ``containerd`` stubs, Coroot ``containers/containerd.go``) would fill pod labels
   (``app=…``), which no file on the node holds.

Everything read is untrusted: no path component may be a symlink (a container can plant one in
its own log dir), ``..`` never appears, and ``config.json`` is read up to ``MAX_CONFIG_BYTES``.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

MAX_CONFIG_BYTES = 1 << 20  # an OCI config.json is 10-100 KiB; 1 MiB leaves room for big envs
BUNDLES = "run/containerd/io.containerd.runtime.v2.task"
POD_LOGS = "var/log/pods"
CONTAINER_LOGS = "var/log/containers"

_CRI = "io.kubernetes.cri."
# CRI annotation → label name. Pod labels (app=…) are not in the bundle: only the API has them.
_ANNOTATIONS = {
    "container-name": "container",
    "sandbox-name": "pod",
    "sandbox-namespace": "namespace",
    "sandbox-uid": "pod_uid",
    "image-name": "image",
    "container-type": "container_type",
}
# DNS-1123 names cannot hold "_", so the first two "_" split a pod log dir unambiguously.
_POD_LOG_DIR = re.compile(r"^(?P<ns>[a-z0-9.-]+)_(?P<pod>[a-z0-9.-]+)_(?P<uid>[0-9a-f-]{32,36})$")
_CONTAINER_LOG = re.compile(
    r"^(?P<pod>[a-z0-9.-]+)_(?P<ns>[a-z0-9.-]+)_(?P<container>[a-z0-9-]+)-(?P<id>[0-9a-f]{64})\.log$"
)


class ContainerSource(Protocol):
    """One more source of labels by container id (e.g. a containerd API client)."""

    def lookup(self, container_id: str) -> dict[str, str]:
        """Labels for the container, ``{}`` when unknown; must not raise for an unknown id."""
        ...


def _open_dir(root: Path, rel: str) -> int:
    """An fd for ``root/rel``, refusing symlinks in every component of ``rel``; raises OSError."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in (p for p in rel.split("/") if p):
            if part in (".", ".."):
                raise OSError(f"refused path component {part!r}")
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(root: Path, rel: str, max_bytes: int) -> bytes | None:
    """The bytes of ``root/rel``, None when absent; ValueError when it is there but refused: a
    symlink anywhere below root, not a regular file, or more than ``max_bytes``."""
    head, _, name = rel.rpartition("/")
    if name in ("", ".", ".."):
        return None
    try:
        dfd = _open_dir(root, head)
    except OSError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: the file is a symlink
        raise ValueError(f"{rel}: {exc.strerror}") from None
    finally:
        os.close(dfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{rel}: not a regular file")
        chunks, size = [], 0
        while size <= max_bytes:  # a short read is not EOF on every filesystem
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise ValueError(f"{rel}: larger than {max_bytes} bytes")
        return data
    finally:
        os.close(fd)


def list_dir(root: Path, rel: str) -> list[str]:
    """Entry names of ``root/rel`` (no symlinks on the way), ``[]`` when it is absent."""
    try:
        fd = _open_dir(root, rel)
    except OSError:
        return []
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


class KubeletLogs:
    """Tier 3: names from the kubelet's log directories, rescanned at most every ``min_rescan`` s."""

    def __init__(self, root: Path, *, min_rescan: float = 0.5) -> None:
        self.root = root
        self.min_rescan = min_rescan
        self._pods: dict[str, dict[str, str | list[str]]] = {}
        self._containers: dict[str, dict[str, str]] = {}
        self._scanned_at = float("-inf")

    def _rescan(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._scanned_at < self.min_rescan:
            return
        self._scanned_at = now
        pods: dict[str, dict[str, str | list[str]]] = {}
        for name in list_dir(self.root, POD_LOGS):
            if m := _POD_LOG_DIR.match(name):
                names = sorted(list_dir(self.root, f"{POD_LOGS}/{name}"))
                pods[m["uid"]] = {"namespace": m["ns"], "pod": m["pod"], "containers": names}
        containers = {}
        for name in list_dir(self.root, CONTAINER_LOGS):
            if m := _CONTAINER_LOG.match(name):
                containers[m["id"]] = {"namespace": m["ns"], "pod": m["pod"],
                                       "container": m["container"]}
        self._pods, self._containers = pods, containers

    def by_container(self, container_id: str) -> dict[str, str]:
        """Namespace, pod and container for a container id, from ``var/log/containers``."""
        if container_id not in self._containers:
            self._rescan()
        return dict(self._containers.get(container_id, {}))

    def by_pod(self, pod_uid: str) -> dict[str, str]:
        """Namespace and pod for a pod uid; the container too when the pod has exactly one."""
        if pod_uid not in self._pods:
            self._rescan()
        entry = self._pods.get(pod_uid)
        if entry is None:
            return {}
        out = {"namespace": str(entry["namespace"]), "pod": str(entry["pod"])}
        containers = entry["containers"]
        if isinstance(containers, list) and len(containers) == 1:
            out["container"] = containers[0]
        return out


class ContainerdBundles:
    """Tier 4: CRI annotations from containerd's runtime-v2 bundle of a running container."""

    def __init__(self, root: Path, *, max_bytes: int = MAX_CONFIG_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.refused = 0  # config.json files too big, not regular, or not JSON

    def _candidates(self, container_id: str) -> Iterator[str]:
        # The containerd namespace (k8s.io, moby, default…) is not in the cgroup path: try each.
        for ns in sorted(list_dir(self.root, BUNDLES)):
            yield f"{BUNDLES}/{ns}/{container_id}/config.json"

    def lookup(self, container_id: str) -> dict[str, str]:
        """Labels from the first bundle holding the container; ``{}`` when there is none."""
        for rel in self._candidates(container_id):
            try:
                data = read_bounded(self.root, rel, self.max_bytes)
                if data is None:
                    continue
                spec = json.loads(data)
                annotations = spec.get("annotations") or {}
            except (ValueError, AttributeError):
                self.refused += 1
                continue
            if not isinstance(annotations, dict):
                self.refused += 1
                continue
            out = {}
            for key, label in _ANNOTATIONS.items():
                value = annotations.get(_CRI + key)
                if isinstance(value, str) and value:
                    out[label] = value
            return out
        return {}
