"""Pinned instances: an agent's run leaves its maps and links in bpffs, so the programs stay
attached if the agent dies, and a new agent adopts them instead of attaching again.

    pin_object   after attach: every map at <dir>/maps/<name>, every link at <dir>/links/<n>;
                 a link that is not a BPF link (a socket filter, a followed library's uprobes)
                 cannot outlive its process: NotPinnable, and the instance runs unpinned
    reuse_pins   before load, on a freshly opened copy of the same object: every map reuses
                 the pinned one (the ring buffer still holds what was written meanwhile) and no
                 program loads — the pinned links keep the old programs attached
    adopt_links  the pinned links as links of the run: destroying one closes its fd, which
                 detaches it once its pin is gone (``unpin`` first)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from loader.errors import LoadError
from loader.libbpf.core import BpfObject, LibbpfLink, _err, _str, ffi, lib


class NotPinnable(LoadError):
    """The run has an attachment bpffs cannot hold."""


def pin_name(name: str) -> str:
    """bpffs refuses names with a dot (EPERM): ``x.rodata`` is pinned as ``x_rodata``."""
    return name.replace(".", "_")


def _maps(obj: BpfObject):
    m = lib.bpf_object__next_map(obj._obj, ffi.NULL)
    while m != ffi.NULL:
        yield _str(lib.bpf_map__name(m)), m
        m = lib.bpf_object__next_map(obj._obj, m)


def pin_object(obj: BpfObject, folder: Path) -> None:
    for link in obj._links:
        if not isinstance(link, LibbpfLink):
            raise NotPinnable(f"'{obj.label}' has an attachment that is not a BPF link "
                              f"({type(link).__name__}): it cannot outlive its process")
    (folder / "maps").mkdir(parents=True, exist_ok=True)
    (folder / "links").mkdir(exist_ok=True)
    for name, m in _maps(obj):
        rc = lib.bpf_map__pin(m, str(folder / "maps" / pin_name(name)).encode())
        if rc:
            raise LoadError(f"cannot pin map '{name}' of '{obj.label}' at {folder}: {_err(rc)}")
    for index, link in enumerate(obj._links):
        rc = lib.bpf_link__pin(link._link, str(folder / "links" / str(index)).encode())
        if rc:
            raise LoadError(f"cannot pin link {index} of '{obj.label}' at {folder}: {_err(rc)}")


def reuse_pins(obj: BpfObject, folder: Path) -> None:
    for name, m in _maps(obj):
        path = folder / "maps" / pin_name(name)
        fd = lib.bpf_obj_get(str(path).encode())
        if fd < 0:
            raise LoadError(f"cannot adopt '{obj.label}': map '{name}' is not pinned at {path} "
                            f"({_err(ffi.errno)})", hint="the pins are incomplete: unload it")
        try:
            rc = lib.bpf_map__reuse_fd(m, fd)
        finally:
            os.close(fd)  # reuse_fd keeps its own duplicate
        if rc:
            raise LoadError(f"cannot adopt '{obj.label}': pinned map '{name}' does not match "
                            f"the object ({_err(rc)})", hint="the artifact changed while the "
                                                             "agent was down: unload and load it")
    for prog in obj.programs():
        obj.set_autoload(prog.name, False)  # the pinned links keep the old programs running


class AdoptedLink:
    """A pinned link held by fd; destroy closes it (detaching it when its pin is gone)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def destroy(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def adopt_links(obj: BpfObject, folder: Path) -> int:
    """Hold the pinned links of ``folder`` as ``obj``'s; how many."""
    links = sorted((folder / "links").iterdir(), key=lambda p: int(p.name))
    for path in links:
        fd = lib.bpf_obj_get(str(path).encode())
        if fd < 0:
            raise LoadError(f"cannot adopt link {path}: {_err(ffi.errno)}")
        obj._links.append(AdoptedLink(fd))
    return len(links)


def unpin(folder: Path) -> None:
    """Remove an instance's pins (bpffs files): its links detach when their last fd closes."""
    shutil.rmtree(folder, ignore_errors=True)
