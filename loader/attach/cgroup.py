"""``cgroup``: attach a cgroup program (``SEC("cgroup_skb/ingress|egress")``, ``SEC("sockops")``,
``SEC("cgroup/sock_create")``, ``SEC("cgroup/connect4")``, ...) to a cgroup2 directory.

    attach:
      count_egress: {cgroup: {path: /sys/fs/cgroup/unified/shop.slice}}
      count_ingress: {cgroup: {}}          # the cgroup2 root: every socket on the host

The program runs for the sockets of the processes in that cgroup and below it. The default is
the cgroup2 root, found in /proc/self/mounts (type cgroup2): ``/sys/fs/cgroup`` on a unified
host, ``/sys/fs/cgroup/unified`` on a hybrid one. The directory is opened O_RDONLY and handed to
libbpf's ``bpf_program__attach_cgroup`` (a BPF link: it goes away with the link, and nothing is
left behind if the loader dies); the Link destroys the link and closes the directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from yaml.nodes import Node, ScalarNode

from loader.attach import AttachKind, register
from loader.errors import LoadError
from loader.libbpf.attach import attach_cgroup
from loader.libbpf.core import BpfObject, LibbpfLink
from loader.model.yamldoc import TAG, YamlDoc

MOUNTS = Path("/proc/self/mounts")


def cgroup2_mounts(mounts: str | None = None) -> list[Path]:
    """Where cgroup2 is mounted (first the shortest path), from /proc/self/mounts."""
    text = MOUNTS.read_text() if mounts is None else mounts
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            # /proc/mounts escapes spaces and the like as octal (\040)
            found.append(Path(fields[1].encode().decode("unicode_escape")))
    return sorted(set(found), key=lambda p: (len(p.parts), str(p)))


def cgroup2_root() -> Path:
    """The cgroup2 mount; a LoadError when this host has none."""
    mounts = cgroup2_mounts()
    if not mounts:
        raise LoadError("cgroup2 is not mounted on this host (no cgroup2 line in /proc/self/mounts)",
                        hint="mount it: mount -t cgroup2 none /sys/fs/cgroup/unified")
    return mounts[0]


def check_cgroup_dir(path: Path, mounts: list[Path]) -> Path:
    """``path`` resolved, when it is a directory of a cgroup2 hierarchy; else a LoadError
    naming it and where cgroup2 is mounted."""
    where = ", ".join(str(m) for m in mounts) or "nowhere (no cgroup2 in /proc/self/mounts)"
    real = path.resolve()
    if not real.is_dir():
        raise LoadError(f"cgroup {path} does not exist or is not a directory",
                        hint=f"give a cgroup2 directory; cgroup2 is mounted at {where} "
                             f"(create one with: mkdir {mounts[0] / 'NAME' if mounts else path})")
    if not any(real == m or real.is_relative_to(m) for m in mounts):
        raise LoadError(f"cgroup {path} is not a cgroup2 directory",
                        hint=f"cgroup programs attach to cgroup2 only; cgroup2 is mounted at "
                             f"{where}")
    return real


def parse(doc: YamlDoc, node: Node, at: str) -> Mapping[str, Any]:
    if isinstance(node, ScalarNode) and node.tag == TAG + "null":
        return {}
    fields = doc.fields(node, at, required=(), optional=("path",))
    if "path" not in fields:
        return {}
    path = doc.string(fields["path"], "path", at)
    if not path.startswith("/"):
        raise doc.error(fields["path"], f"path {path!r} in {at} is not absolute",
                        hint="give the cgroup2 directory's full path, e.g. "
                             "/sys/fs/cgroup/unified/my.slice")
    return {"path": path}


class CgroupLink:
    """A cgroup program attached to one directory: the BPF link, then the directory's fd."""

    def __init__(self, link: LibbpfLink, fd: int) -> None:
        self.link, self.fd = link, fd

    def destroy(self) -> None:
        self.link.destroy()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def attach(obj: BpfObject, program: str, options: Mapping[str, Any]) -> list[CgroupLink]:
    mounts = cgroup2_mounts()
    path = Path(options["path"]) if "path" in options else cgroup2_root()
    real = check_cgroup_dir(path, mounts)
    fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        link = attach_cgroup(obj, program, fd, str(path))
    except BaseException:
        os.close(fd)
        raise
    return [CgroupLink(link, fd)]


register(AttachKind(key="cgroup", summary="a cgroup2 directory (default: the cgroup2 root)",
                    sections=("cgroup_skb/", "sockops", "cgroup/"), parse=parse, attach=attach))
