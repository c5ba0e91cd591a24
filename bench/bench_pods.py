"""``--container``/``--pod`` filters and the exec/exit process table of ``--labels``.

On the tree bench_labels makes (250 unit cgroups, 250 pods of one container each, with their
containerd bundles and kubelet log dirs under a temp root), measures:

- one rescan of a ``--pod`` and of a ``--container`` target (what Monitor.refresh does every
  second: the labels of every indexed cgroup, warm cache), against one rescan of a ``--unit``
  target (``unit_dirs``: a walk of the cgroup2 tree), in the same run;
- fork+exec+exit of ``/bin/true`` ×N with the exec/exit table attached, against the same with
  nothing attached (what the two raw_tracepoint programs add to every process);
- the label of a pid that has exited (the table), against one that lives (/proc read).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

import harness
from bench_labels import N, make_tree, remove_tree
from harness import Row, median, paired

SPAWNS = 300


def spawn_loop(n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(["/bin/true"], check=True)
    return time.perf_counter() - t0


def measure(args: argparse.Namespace) -> list[Row]:
    from loader.labels import LabelResolver, LabelSettings, find_cgroup2_mount
    from loader.labels.pods import PodFinder
    from loader.labels.procs import track_processes
    from loader.monitor import unit_dirs

    mount = find_cgroup2_mount(Path("/proc/self/mounts").read_text())
    if mount is None:
        raise SystemExit("bench_pods: no cgroup2 mount on this host")
    base = mount / f"bpfdepot-bench-pods-{os.getpid()}"
    pod_s, cont_s, unit_s, traced, plain, exited, alive = [], [], [], [], [], [], []
    with harness.scratch("pods") as tmp:
        try:
            make_tree(mount, base, tmp)
            resolver = LabelResolver(LabelSettings(root=tmp, cgroup2=mount,
                                                   track_processes=False))
            resolver.index.rescan()
            finder = PodFinder(resolver)
            last = f"{N - 1:064x}"
            assert finder.pod(f"shop/web-{N - 1}").ids and finder.container(last).ids
            for _ in range(args.reps):
                t0 = time.perf_counter()
                finder.pod(f"shop/web-{N // 2}")
                pod_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                finder.container(last)
                cont_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                unit_dirs(mount, f"svc{N // 2}.service")
                unit_s.append(time.perf_counter() - t0)
                plain.append(spawn_loop(SPAWNS))
                tracker = track_processes()
                try:
                    traced.append(spawn_loop(SPAWNS))
                    # one process in a unit cgroup, reaped: its label from the table
                    unit = base / "system.slice" / "svc0.service"
                    proc = subprocess.Popen(["/bin/sh", "-c", f"echo $$ > {unit}/cgroup.procs"])
                    proc.wait()
                    resolver.procs = tracker
                    t0 = time.perf_counter()
                    for _ in range(1000):
                        resolver.cgroup_of_pid(proc.pid)
                    exited.append((time.perf_counter() - t0) / 1000)
                    assert resolver.cgroup_of_pid(proc.pid) == f"/{base.name}/system.slice/svc0.service"
                    t0 = time.perf_counter()
                    for _ in range(1000):
                        resolver.cgroup_of_pid(os.getpid())
                    alive.append((time.perf_counter() - t0) / 1000)
                finally:
                    resolver.procs = None
                    tracker.close()
        finally:
            if base.exists():
                remove_tree(mount, base)
    msf = lambda s: f"{s * 1e3:.2f} ms"
    usf = lambda s: f"{s * 1e6:.2f} µs"
    spawn = paired(traced, plain)
    return [
        Row(metric=f"--pod rescan ({2 * N} cgroups indexed, warm)", value=msf(median(pod_s)),
            baseline=f"--unit rescan (tree walk): {msf(median(unit_s))}",
            ratio=paired(pod_s, unit_s), goal="< 10 ms a second", met=median(pod_s) < 0.01),
        Row(metric="--container rescan (full id)", value=msf(median(cont_s)),
            baseline=f"--unit rescan: {msf(median(unit_s))}", ratio=paired(cont_s, unit_s),
            goal="< 10 ms a second", met=median(cont_s) < 0.01),
        Row(metric=f"{SPAWNS} × fork+exec+exit of /bin/true, exec/exit table attached",
            value=msf(median(traced)), baseline=f"nothing attached: {msf(median(plain))}",
            ratio=spawn, goal="≤ 1.05×", met=spawn <= 1.05),
        Row(metric="cgroup of an exited pid (the table)", value=usf(median(exited)),
            baseline=f"a live pid (/proc): {usf(median(alive))}", ratio=paired(exited, alive),
            goal="≤ 2×", met=paired(exited, alive) <= 2),
    ]


if __name__ == "__main__":
    raise SystemExit(harness.main("bench_pods", measure, reps=5))
