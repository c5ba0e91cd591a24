"""The cost of ``follow: true`` on uprobes (loader/attach/uprobe_follow.py): one rescan of the
real /proc as the watcher thread does it every second (a ``statm`` read per process, maps only
of new or changed pids) against the naive rescan that reads every process's maps each time
(the baseline), with the machine's processes plus 300 idle ``sleep`` processes the bench starts
(each maps libc, so the naive scan has real maps to read). Also the watcher's CPU share at its
1 s interval (CPU time of a scan, so other load on the machine does not count), and the time
from a process mapping a new library copy to its attach (bounded by the interval). The attach
itself is a stub here: the kernel side is timed in bench_probes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import Row, median, paired

IDLE = 300
LOOPS = 20  # scans per timed sample


class Stub:
    def destroy(self) -> None:
        pass


def measure(args: argparse.Namespace) -> list[Row]:
    from loader.attach.uprobe_follow import INTERVAL, Watcher, follow

    sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(IDLE)]
    lib_dir = Path(tempfile.mkdtemp(prefix="bpfdepot-bench-follow-"))
    try:
        attached: list[float] = []
        watcher = Watcher(say=lambda _: None, interval=3600)  # scans driven by the bench
        link = follow("libssl.so.3", "uprobe bench:ssl_write",
                      lambda path: attached.append(time.perf_counter()) or Stub(), None,
                      watcher=watcher)
        pids = len(watcher._seen)
        incremental, full, cpu = [], [], []
        for _ in range(args.reps):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(LOOPS):
                watcher.scan()
            incremental.append((time.perf_counter() - t0) / LOOPS)
            cpu.append((time.process_time() - c0) / LOOPS)  # user + system, not waits
            t0 = time.perf_counter()
            for _ in range(LOOPS):
                with watcher._lock:
                    watcher._scan(full=True)  # every pid's maps, as a naive watcher would
            full.append((time.perf_counter() - t0) / LOOPS)
        # a new copy mapped by a new process: found by the next scan
        copy = lib_dir / "libssl.so.3"
        shutil.copy("/usr/lib/x86_64-linux-gnu/libssl.so.3", copy)
        proc = subprocess.Popen([sys.executable, "-c",
                                 f"import ctypes, time; ctypes.CDLL('{copy}'); time.sleep(30)"])
        before = len(attached)
        while f"{copy}" not in Path(f"/proc/{proc.pid}/maps").read_text():
            time.sleep(0.01)
        t0 = time.perf_counter()
        watcher.scan()
        found = attached[before] - t0 if len(attached) > before else None
        proc.kill()
        proc.wait()
        link.destroy()
    finally:
        for s in sleepers:
            s.kill()
        for s in sleepers:
            s.wait()
        shutil.rmtree(lib_dir, ignore_errors=True)
    share = median(cpu) / INTERVAL * 100
    if found is None:
        print("  the new copy was NOT found")
    else:
        print(f"  {pids} processes scanned; the new copy was attached {found * 1000:.2f} ms into "
              "the first scan after it was mapped")
    return [
        Row(metric=f"one rescan of /proc, {pids} processes, nothing new",
            value=f"{median(incremental) * 1000:.2f} ms",
            baseline=f"{median(full) * 1000:.2f} ms (every /proc/PID/maps read)",
            ratio=paired(incremental, full), goal="< 0.5×", met=paired(incremental, full) < 0.5),
        Row(metric=f"watcher CPU at one rescan per {INTERVAL:g} s",
            value=f"{share:.2f}% of one CPU",
            goal="< 1%", met=share < 1),
        Row(metric="a process maps a new libssl copy → probed",
            value=f"≤ {INTERVAL:g} s + {found * 1000:.1f} ms" if found is not None else "missed",
            goal="≤ 2 s", met=found is not None),
    ]


if __name__ == "__main__":
    sys.exit(harness.main("bench_uprobe_follow", measure, reps=5))
