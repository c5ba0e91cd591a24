"""Cgroup path → what the path alone says: the systemd unit, or the container id and pod uid.

Tiers 1 and 2 of the label sources (``../shared/CATALOG.md`` §4g): they need no file besides the
path, so they work for a cgroup that is already gone. The patterns cover the layouts the
kubelet and the runtimes make (learned from Coroot ``cgroup/cgroup.go`` and Parca
``containermetadata.go``; written anew here):

    systemd driver   /kubepods.slice/kubepods-burstable.slice/
                       kubepods-burstable-pod<uid with _>.slice/cri-containerd-<64hex>.scope
                     …/docker-<64hex>.scope, …/crio-<64hex>.scope
    cgroupfs driver  /kubepods/<qos>/pod<uid>/<64hex>   (guaranteed pods: /kubepods/pod<uid>/<id>)
                     /docker/<64hex>
    systemd units    /system.slice/shop-api.service/worker → shop-api.service
                     /user.slice/user-1000.slice/user@1000.service/app.slice/foo.service
                       → foo.service, uid 1000

When containers nest (kind, docker-in-docker) the innermost id wins: it names the process's own
container.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEX64 = r"[0-9a-f]{64}"
# A container scope of the systemd driver; crio's "crio-conmon-<id>.scope" is the monitor
# process, not the container, so it is deliberately not matched.
_SCOPE = re.compile(rf"^(?P<rt>cri-containerd|docker|crio|libpod)-(?P<id>{_HEX64})\.scope$")
_POD_SLICE = re.compile(
    r"^kubepods(?:-(?:besteffort|burstable|guaranteed))?-pod(?P<uid>[0-9a-f_]{32,36})\.slice$"
)
_POD_DIR = re.compile(r"^pod(?P<uid>[0-9a-f-]{32,36})$")
_BARE_ID = re.compile(rf"^(?:cri-containerd:)?(?P<id>{_HEX64})$")
_USER_MANAGER = re.compile(r"^user@(?P<uid>\d+)\.service$")
_RUNTIME_NAMES = {"cri-containerd": "containerd", "docker": "docker", "crio": "cri-o",
                  "libpod": "podman"}


@dataclass(frozen=True, slots=True, kw_only=True)
class PathInfo:
    """What one cgroup path says by its name alone; empty strings where it says nothing."""

    unit: str = ""
    slice: str = ""
    uid: str = ""  # the user of a user@UID.service session
    container_id: str = ""
    runtime: str = ""
    pod_uid: str = ""  # with dashes, as the API server and /var/log/pods spell it

    def labels(self) -> dict[str, str]:
        """The non-empty fields as a labels dict."""
        out = {}
        for key in ("unit", "slice", "uid", "container_id", "runtime", "pod_uid"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out


def pod_uid_from_slice(text: str) -> str:
    """``7d3f_…`` (systemd escapes ``-`` in slice names as ``_``) → the API server's form."""
    return text.replace("_", "-")


def parse_cgroup_path(path: str) -> PathInfo:
    """Split a cgroup2 path (relative to the mount, ``/`` first or not) into unit/container facts.

    Container facts and unit facts are exclusive: the scope of a container is the runtime's unit,
    not a service the user named, so a path with a container id carries no ``unit``.
    """
    parts = [p for p in path.strip().split("/") if p]
    container_id = runtime = pod_uid = ""
    in_kubepods = False
    for part in parts:
        if part in ("kubepods", "kubepods.slice"):
            in_kubepods = True
            continue
        if m := _SCOPE.match(part):
            container_id, runtime = m["id"], _RUNTIME_NAMES[m["rt"]]
            continue
        if m := _POD_SLICE.match(part):
            pod_uid = pod_uid_from_slice(m["uid"])
            continue
        if in_kubepods and (m := _POD_DIR.match(part)):
            pod_uid = m["uid"]
            continue
        if m := _BARE_ID.match(part):
            # cgroupfs driver (kubelet, plain docker): the directory is the id itself.
            container_id, runtime = m["id"], ""
    if container_id or pod_uid:
        return PathInfo(container_id=container_id, runtime=runtime, pod_uid=pod_uid)
    return _unit_info(parts)


def _unit_info(parts: list[str]) -> PathInfo:
    """The innermost ``.service``/``.scope`` (else the innermost ``.slice``), and the user."""
    unit = slice_ = uid = ""
    for part in parts:
        if m := _USER_MANAGER.match(part):
            uid = m["uid"]
        if part.endswith((".service", ".scope")):
            unit = part
        elif part.endswith(".slice"):
            slice_ = part
    if not unit:  # only slices: the innermost slice is the unit
        return PathInfo(unit=slice_, uid=uid)
    return PathInfo(unit=unit, slice=slice_, uid=uid)
