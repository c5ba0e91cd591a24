"""Processes tracked from exec and exit, so a record read after its process exited still finds
the process's cgroup (and so its labels).

The Stamper labels a record without a cgroup id by its pid, and /proc/PID/cgroup is gone once
the process is reaped: a short-lived process (``sh -c …``, a cron job, a failing health check)
has usually exited before its records are read. Two tiny programs in the kernel
(loader/native/bpfdepot_procs.c) keep a table tgid → (cgroup id, exit time): written at every
exec, overwritten at the exit of the thread-group leader (with the cgroup it died in) — by the
kernel, in the process's own context, before the process can emit anything later, so there is
no race with the records (a netlink proc connector would say *that* a pid exec'd, but not
where, and the process may be gone before /proc can be read). The table is an LRU hash of
``MAX_PROCS`` entries; exited processes are kept ``GRACE_S`` seconds for records still in flight,
then swept. A live process is still looked up in /proc first: it may have moved since exec.

Use::

    tracker = track_processes(resolver)   # resolver.cgroup_of_pid now falls back to it
    ...
    tracker.close()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

log = logging.getLogger(__name__)

GRACE_S = 30.0      # an exited process keeps its labels this long (records still in flight)
MAX_PROCS = 32768   # table entries (16 B each): live processes exec'd during the run + exited
SWEEP_S = 5.0       # how often exited entries older than GRACE_S are removed


class Table(Protocol):
    """What the tracker needs of the kernel table (loader/libbpf/procs.py ProcTable)."""

    def lookup(self, tgid: int) -> tuple[int, int] | None: ...
    def tgids(self) -> Iterator[int]: ...
    def remove(self, tgid: int) -> None: ...
    def close(self) -> None: ...


class ProcTracker:
    """Pid → cgroup id from the kernel's exec/exit table, honouring the grace period."""

    def __init__(self, table: Table, *, grace: float = GRACE_S, sweep_every: float = SWEEP_S,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.table = table
        self.grace_ns = int(grace * 1e9)
        self.sweep_every = sweep_every
        self.clock = clock  # CLOCK_MONOTONIC ns: what bpf_ktime_get_ns() counts
        self.found = self.expired = self.swept = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def cgroup_id(self, pid: int) -> int | None:
        """The cgroup id the process had at exec (or at exit); None when the table does not
        hold it or it exited more than the grace period ago."""
        entry = self.table.lookup(pid)
        if entry is None:
            return None
        cgroup_id, exit_ns = entry
        if exit_ns and self.clock() - exit_ns > self.grace_ns:
            self.expired += 1
            return None
        self.found += 1
        return cgroup_id

    def sweep(self) -> int:
        """Remove the processes that exited more than the grace period ago; how many."""
        now, removed = self.clock(), 0
        for tgid in list(self.table.tgids()):
            entry = self.table.lookup(tgid)
            if entry is not None and entry[1] and now - entry[1] > self.grace_ns:
                self.table.remove(tgid)
                removed += 1
        self.swept += removed
        return removed

    def start(self) -> None:
        """Sweep every ``sweep_every`` seconds in a daemon thread until close()."""
        self._thread = threading.Thread(target=self._loop, name="bpfdepot-procs", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.sweep_every):
            try:
                self.sweep()
            except Exception:  # a failed sweep is retried; meanwhile the LRU bounds the table
                log.exception("process table: sweep failed")

    def close(self) -> None:
        """Stop sweeping and detach the programs; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.table.close()


def track_processes(max_entries: int = MAX_PROCS, grace: float = GRACE_S) -> ProcTracker:
    """Attach the exec/exit programs and start sweeping; LoadError when BPF is not allowed."""
    from loader.libbpf.procs import ProcTable

    tracker = ProcTracker(ProcTable(max_entries), grace=grace)
    tracker.start()
    return tracker
