"""The monitor maps of the in-kernel process filter, through libbpf: one pair per run, created
here, handed to each object before load (``bpf_map__reuse_fd``), filled while the run goes on.
What goes in them is decided by loader/monitor.py."""

from __future__ import annotations

import os
import struct

from loader._libbpf import ffi, lib
from loader.errors import LoadError
from loader.libbpf.core import BpfObject, _err, take_log

CGROUPS_MAP, PIDS_MAP = "bpfdepot_monitor_cgroups", "bpfdepot_monitor_pids"
MAX_ENTRIES = 4096  # as declared in bpf/include/bpfdepot.h


class MonitorMap:
    """One monitor map (u64 cgroup id or u32 tgid → u32 label id), owned by the run."""

    def __init__(self, name: str, key_format: str) -> None:
        self.name = name
        self._key = struct.Struct(key_format)
        # the kernel keeps 15 characters of a map's name
        fd = lib.bpfdepot_monitor_create(name.removeprefix("bpfdepot_")[:15].encode(),
                                         self._key.size, MAX_ENTRIES)
        if fd < 0:
            raise LoadError(f"cannot create the monitor map '{name}': {_err(fd)}",
                            hint="creating BPF maps needs root or CAP_BPF")
        self.fd = fd

    def put(self, key: int, label: int) -> None:
        rc = lib.bpfdepot_monitor_put(self.fd, self._key.pack(key), label)
        if rc:
            raise LoadError(f"cannot add {key} to the monitor map '{self.name}': {_err(rc)}",
                            hint=f"it holds at most {MAX_ENTRIES} entries" if rc == -7 else "")

    def remove(self, key: int) -> None:
        rc = lib.bpfdepot_monitor_remove(self.fd, self._key.pack(key))
        if rc and rc != -2:  # -ENOENT: already gone
            raise LoadError(f"cannot remove {key} from the monitor map '{self.name}': {_err(rc)}")

    def items(self) -> dict[int, int]:
        """Every key → label now in the map."""
        out: dict[int, int] = {}
        key, nxt = ffi.NULL, ffi.new("char[]", self._key.size)
        label = ffi.new("uint32_t *")
        while lib.bpfdepot_monitor_next(self.fd, key, nxt) == 0:
            raw = ffi.buffer(nxt, self._key.size)[:]
            if lib.bpfdepot_monitor_get(self.fd, nxt, label) == 0:
                out[self._key.unpack(raw)[0]] = label[0]
            key = ffi.new("char[]", raw)
        return out

    def share(self, obj: BpfObject) -> None:
        """Make ``obj`` (opened, not loaded) use this map instead of creating its own."""
        take_log()
        rc = lib.bpfdepot_monitor_share(obj._obj, self.name.encode(), self.fd)
        if rc:
            raise LoadError(f"'{obj.label}' cannot share the monitor map '{self.name}': {_err(rc)}",
                            detail=take_log().strip(),
                            hint="it must be declared as in bpf/include/bpfdepot.h: rebuild "
                                 "the program against this bpfdepot")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def monitor_maps() -> tuple[MonitorMap, MonitorMap]:
    """The run's (cgroups, pids) pair, empty."""
    cgroups = MonitorMap(CGROUPS_MAP, "=Q")
    try:
        return cgroups, MonitorMap(PIDS_MAP, "=I")
    except BaseException:
        cgroups.close()
        raise
