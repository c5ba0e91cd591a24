"""What libbpf's auto-attach cannot do, for the attach kinds of loader/attach/: perf events per
CPU, uprobes by function name, cgroups, socket filters, iterators; map sizing and byte knobs
written before load."""

from __future__ import annotations

import os

from loader._libbpf import ffi, lib
from loader.errors import LoadError
from loader.libbpf.core import BpfObject, LibbpfLink, _err, _str, take_log


def perf_event_open(type_: int, config: int, sample: int, *, freq: bool, cpu: int) -> int:
    """A sampling perf event on ``cpu`` for every task: its fd, or -errno."""
    return lib.bpfdepot_perf_event_open(type_, config, sample, int(freq), cpu)


def attach_perf_event(obj: BpfObject, program: str, pfd: int) -> LibbpfLink:
    """Attach ``program`` to the perf event ``pfd``; the link owns the fd from here on
    (libbpf's perf link closes it on destroy). On failure the fd is closed here."""
    take_log()
    link = lib.bpf_program__attach_perf_event(obj.program_handle(program), pfd)
    if link == ffi.NULL:
        code = ffi.errno
        os.close(pfd)
        raise LoadError(f"cannot attach program '{program}' of '{obj.label}' to a perf event: "
                        f"{_err(code)}", detail=take_log().strip(),
                        hint="is it a SEC(\"perf_event\") program?")
    return LibbpfLink(link)


def attach_uprobe(obj: BpfObject, program: str, *, pid: int, binary: str, function: str | None,
                  offset: int, retprobe: bool) -> tuple[LibbpfLink | None, int, str]:
    """Attach ``program`` as a u(ret)probe; (link, 0, "") or (None, errno, libbpf's log)."""
    take_log()
    func = ffi.new("char[]", function.encode()) if function else ffi.NULL
    link = lib.bpfdepot_attach_uprobe(obj.program_handle(program), pid, binary.encode(), func,
                                      offset, retprobe)
    if link == ffi.NULL:
        return None, ffi.errno, take_log().strip()
    return LibbpfLink(link), 0, ""


def size_map(obj: BpfObject, name: str, *, max_entries: int | None = None,
             value_size: int | None = None) -> None:
    """Set a map's max_entries and/or value_size (before load, as libbpf-tools do)."""
    m = obj._find_map(name)
    if m is None:
        raise LoadError(f"no map '{name}' in '{obj.label}' to size",
                        hint="name a map the program declares in SEC(\".maps\")")
    for what, value, setter in (("max_entries", max_entries, lib.bpf_map__set_max_entries),
                                ("value_size", value_size, lib.bpf_map__set_value_size)):
        if value is None:
            continue
        rc = setter(m, value)
        if rc:
            raise LoadError(f"cannot set {what} of map '{name}' of '{obj.label}' to {value}: "
                            f"{_err(rc)}", hint="maps are sized before load")


def write_rodata(obj: BpfObject, name: str, offset: int, raw: bytes) -> None:
    """Write a knob's bytes into the object's .rodata (before load: then it is frozen)."""
    m = lib.bpf_object__next_map(obj._obj, ffi.NULL)
    while m != ffi.NULL:
        if lib.bpf_map__is_internal(m) and _str(lib.bpf_map__name(m)).endswith(".rodata"):
            break
        m = lib.bpf_object__next_map(obj._obj, m)
    psize = ffi.new("size_t *")
    data = lib.bpf_map__initial_value(m, psize) if m != ffi.NULL else ffi.NULL
    if data == ffi.NULL or offset + len(raw) > psize[0]:
        raise LoadError(f"'{obj.label}' has no .rodata room for knob '{name}'",
                        hint="knobs are `const volatile` globals of the program")
    ffi.memmove(ffi.cast("char *", data) + offset, raw, len(raw))


# --- cgroup, socket filter and iterator attach kinds; plain words for objects that do not open ---
# Used by loader/attach/cgroup.py, socket_filter.py, iter.py and loader/outputs/iterator.py.

def program_fd(obj: BpfObject, program: str) -> int:
    """The fd of a loaded program (for setsockopt(SO_ATTACH_BPF) and the like)."""
    fd = lib.bpf_program__fd(obj.program_handle(program))
    if fd < 0:
        raise LoadError(f"program '{program}' of '{obj.label}' is not loaded",
                        hint="it may be kept out by autoload: false in the manifest")
    return fd


def attach_cgroup(obj: BpfObject, program: str, cgroup_fd: int, path: str) -> LibbpfLink:
    """Attach a cgroup program (cgroup_skb, sockops, cgroup/...) to the cgroup2 directory open
    at ``cgroup_fd``; the caller keeps the fd and closes it once the link is destroyed."""
    take_log()
    link = lib.bpf_program__attach_cgroup(obj.program_handle(program), cgroup_fd)
    if link == ffi.NULL:
        code = ffi.errno
        raise LoadError(f"cannot attach program '{program}' of '{obj.label}' to cgroup {path}: "
                        f"{_err(code)}", detail=take_log().strip(),
                        hint="is it a SEC(\"cgroup_skb/...\"), SEC(\"sockops\") or "
                             "SEC(\"cgroup/...\") program?")
    return LibbpfLink(link)


def attach_iter(obj: BpfObject, program: str, *, map_fd: int = 0, tid: int = 0,
                pid: int = 0) -> LibbpfLink:
    """Attach an iterator program (SEC("iter/...")): the link iterator fds are made from."""
    take_log()
    link = lib.bpfdepot_attach_iter(obj.program_handle(program), map_fd, tid, pid)
    if link == ffi.NULL:
        code = ffi.errno
        raise LoadError(f"cannot attach iterator '{program}' of '{obj.label}': {_err(code)}",
                        detail=take_log().strip(),
                        hint="is it a SEC(\"iter/...\") program, and does this kernel have "
                             "that iterator? (`bpftool btf dump file /sys/kernel/btf/vmlinux | "
                             "grep bpf_iter_`)")
    return LibbpfLink(link)


def iter_link_fd(obj: BpfObject, program: str) -> int | None:
    """The fd of the link that attached ``program`` (an iterator), found by program id among
    the object's links whatever attached it (libbpf's auto-attach or the ``iter`` kind)."""
    prog_id = lib.bpfdepot_prog_id(program_fd(obj, program))
    for link in obj._links:
        handle = getattr(link, "_link", None)
        if isinstance(link, LibbpfLink) and handle is not None:
            fd = lib.bpf_link__fd(handle)
            if fd >= 0 and lib.bpfdepot_link_prog_id(fd) == prog_id:
                return fd
    return None


def iter_read(link_fd: int, chunk: int = 1 << 16) -> bytes:
    """Run the iterator once: a fresh iterator fd from its link, read to EOF (the kernel walks
    its objects as we read, calling the program for each), closed."""
    fd = lib.bpf_iter_create(link_fd)
    if fd < 0:
        raise LoadError(f"cannot create an iterator from link fd {link_fd}: {_err(fd)}")
    parts = []
    try:
        while True:
            try:
                data = os.read(fd, chunk)
            except OSError as exc:
                raise LoadError(f"reading an iterator of link fd {link_fd} failed: "
                                f"{exc.strerror}") from None
            if not data:
                return b"".join(parts)
            parts.append(data)
    finally:
        os.close(fd)
