"""The process table of ``--labels`` through libbpf: tgid → (cgroup id, exit time), written in
the kernel at exec and exit by the two programs of loader/native/bpfdepot_procs.c. What is done
with it (grace period, sweeping) is loader/labels/procs.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from loader._libbpf import ffi, lib
from loader.errors import LoadError
from loader.libbpf.core import _err

ENOENT = 2


class ProcTable:
    """The table and its two attached programs, owned by one run; ``close()`` detaches."""

    def __init__(self, max_entries: int) -> None:
        self._p = ffi.new("struct bpfdepot_procs *")
        rc = lib.bpfdepot_procs_open(self._p, max_entries)
        if rc:
            raise LoadError(f"cannot start the process table (exec/exit tracking): {_err(rc)}",
                            hint="it needs root (CAP_BPF and CAP_PERFMON) and raw tracepoints")
        self._entry = ffi.new("struct bpfdepot_procs_entry *")
        # lookups come from the pipeline's thread, close() from the run's: a lookup on an fd
        # closed and reused meanwhile would write another map's value into our 16 bytes
        self._lock = threading.Lock()

    @property
    def fd(self) -> int:
        return self._p.map_fd

    def lookup(self, tgid: int) -> tuple[int, int] | None:
        """(cgroup id, exit ns on CLOCK_MONOTONIC or 0 while alive), None for an unknown tgid."""
        if not 0 < tgid < 1 << 32:
            return None
        with self._lock:
            if self._p.map_fd < 0 or lib.bpfdepot_procs_lookup(self._p.map_fd, tgid, self._entry):
                return None
            return int(self._entry.cgroup_id), int(self._entry.exit_ns)

    def tgids(self) -> Iterator[int]:
        """Every tgid in the table (a walk: entries may come and go meanwhile)."""
        key, nxt = ffi.NULL, ffi.new("uint32_t *")
        while True:
            with self._lock:
                if self._p.map_fd < 0 or lib.bpfdepot_procs_next(self._p.map_fd, key, nxt):
                    return
            yield int(nxt[0])
            key = ffi.new("uint32_t *", nxt[0])

    def remove(self, tgid: int) -> None:
        with self._lock:
            rc = lib.bpfdepot_procs_remove(self._p.map_fd, tgid) if self._p.map_fd >= 0 else 0
        if rc and rc != -ENOENT:
            raise LoadError(f"cannot remove pid {tgid} from the process table: {_err(rc)}")

    def close(self) -> None:
        with self._lock:
            lib.bpfdepot_procs_close(self._p)
