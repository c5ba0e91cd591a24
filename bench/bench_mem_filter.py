"""What the in-kernel process filter costs and saves in the file and memory catalog: three C
loops, each run untraced, under its program tracing every process, and under the same program
filtered to a unit the loop is not in (``--unit``). The loop runs two cgroup levels deep
(``bench.slice/loop.service``, the unit a sibling service), so the filtered run pays the
ancestor lookups a real service would. Interleaved in one run; each ratio is against untraced.

- pagefault: 8 × (map 64 MiB, write every page, unmap): 131,072 user faults, each an event,
  counts, an address histogram slot and a user stack when traced;
- kmemleak: 200,000 × close(eventfd()): each allocation tracked by address and summed per site
  and pid when traced (the filtered run still looks the address up, to drop a stale record);
- filelat: 1,000,000 × pread 4 KiB of a cached file: one histogram update per call when traced.

Issue 13's goal, as for opensnoop in bench_filter.py: the filtered slowdown is at most half the
traced one. Where the traced work per hit is small (filelat: one histogram slot), most of either
slowdown is the hooks' own cost, which no filter avoids; so each case also runs under a bundle of
empty programs (return 0) on the same tracepoints, attached by bpfdepot the same way: the floor,
and the filtered run is shown against it too.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import harness
from bench_filelat import PREAD_C
from bench_memory import EFD_C, FAULT_C
from bench_probes import start, stop
from harness import ROOT, Row, median, paired

# Each program's tracepoints that the loop hits (for filelat all eight syscall pairs, as it
# attaches them): the floor bundle puts an empty program on each.
FLOORS = {
    "pagefault": ["exceptions/page_fault_user", "exceptions/page_fault_kernel"],
    "kmemleak": ["kmem/kmalloc", "kmem/kmem_cache_alloc", "kmem/kfree", "kmem/kmem_cache_free"],
    "filelat": [f"syscalls/sys_{side}_{op}" for side in ("enter", "exit")
                for op in ("read", "write", "pread64", "pwrite64", "readv", "writev", "fsync",
                           "fdatasync")],
}
FLOOR_MANIFEST = """kind: ebpfprogram
name: "{name}"
description: empty programs on the tracepoints of {program} (bench floor)
version: "0.1"
author: bench
spec:
  programs:
    - name: "{name}"
      path: file://./{name}.bpf.c
      type: ebpf_object
"""


def floor_bundle(tmp: Path, program: str) -> Path:
    """A bundle of empty tracepoint programs (return 0) on ``program``'s tracepoints."""
    name = f"floor_{program}"
    out = tmp / name
    out.mkdir()
    progs = "".join(f'SEC("tp/{tp}")\nint fl_{i}(void *ctx) {{ return 0; }}\n'
                    for i, tp in enumerate(FLOORS[program]))
    (out / f"{name}.bpf.c").write_text('#include "vmlinux.h"\n#include <bpf/bpf_helpers.h>\n'
                                       f'{progs}char LICENSE[] SEC("license") = "GPL";\n')
    (out / "manifest.yaml").write_text(FLOOR_MANIFEST.format(name=name, program=program))
    return out


def loop(exe: Path, cgroup: Path, *args: str) -> float:
    """One run of ``exe`` inside ``cgroup`` (moved there before exec); its own timing, s."""
    def enter() -> None:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    return float(harness.run([str(exe), *args], preexec_fn=enter).stdout)


def case(tmp: Path, home: Path, cgroup: Path, unit: str, name: str, src: str, args: list[str],
         reps: int, what: str) -> list[Row]:
    c = tmp / f"{name}.c"
    c.write_text(src)
    exe = harness.gcc(c, tmp / f"{name}_loop")
    bundle = ROOT / "bpf" / name
    empty = floor_bundle(tmp, name)
    for b in (bundle, empty):
        harness.run([*harness.bpfdepot_exe(), "build", str(b)], env=harness.env_for(home), cwd=ROOT)
    loop(exe, cgroup, *args)  # warm the page cache and the binary
    plain, traced, filtered, floor = [], [], [], []
    for i in range(reps):
        plain.append(loop(exe, cgroup, *args))
        p = start(home, bundle, tmp / f"{name}-all-{i}.jsonl")
        traced.append(loop(exe, cgroup, *args))
        stop(p)
        out = tmp / f"{name}-filtered-{i}.jsonl"
        p = start(home, bundle, out, "--unit", unit)
        filtered.append(loop(exe, cgroup, *args))
        stop(p)
        kept = out.read_text().count("\n") if out.exists() else 0
        if kept:
            raise SystemExit(f"bench: the filtered {name} run wrote {kept} records")
        p = start(home, empty, tmp / f"{name}-floor-{i}.jsonl")
        floor.append(loop(exe, cgroup, *args))
        stop(p)
    base = f"{median(plain) * 1e3:.0f} ms untraced"
    traced_cost, filter_cost = paired(traced, plain) - 1, paired(filtered, plain) - 1
    return [
        Row(metric=f"{what}, {name} tracing every process", value=f"{median(traced) * 1e3:.0f} ms",
            baseline=base, ratio=paired(traced, plain)),
        Row(metric=f"same, {name} filtered to a unit the loop is not in",
            value=f"{median(filtered) * 1e3:.0f} ms", baseline=base, ratio=paired(filtered, plain)),
        Row(metric=f"{name}: filtered slowdown / traced slowdown",
            value=f"{filter_cost * 100:.1f}% vs {traced_cost * 100:.1f}%",
            ratio=filter_cost / traced_cost if traced_cost > 0 else None,
            goal="≤ 0.5×", met=filter_cost <= 0.5 * traced_cost),
        Row(metric=f"floor: empty programs on {name}'s tracepoints",
            value=f"{median(floor) * 1e3:.0f} ms", baseline=base, ratio=paired(floor, plain)),
        Row(metric=f"{name}: filtered run / floor", value=f"{median(filtered) * 1e3:.0f} ms",
            baseline=f"{median(floor) * 1e3:.0f} ms floor", ratio=paired(filtered, floor)),
    ]


def measure(args: argparse.Namespace) -> list[Row]:
    from loader.attach.cgroup import cgroup2_mounts

    mounts = cgroup2_mounts()
    if not mounts:
        return [Row(metric="file and memory catalog under the filter", value="skipped: no cgroup2 mount")]
    slice_ = mounts[0] / f"bpfdepot-bench-memf-{os.getpid()}.slice"
    where, unit = slice_ / "loop.service", slice_ / f"unit-{os.getpid()}.service"  # unit: empty
    made = [slice_, where, unit]
    for path in made:
        path.mkdir()
    try:
        with harness.scratch("mem_filter") as tmp:
            home = tmp / "home"
            data = tmp / "data.bin"
            data.write_bytes(b"x" * (256 * 4096))  # what PREAD_C reads: 1 MiB, cached
            return (case(tmp, home, where, unit.name, "pagefault", FAULT_C, [], args.reps,
                         "8 × (map 64 MiB, write each page, unmap): 131,072 faults")
                    + case(tmp, home, where, unit.name, "kmemleak", EFD_C, [], args.reps,
                           "200,000 × close(eventfd())")
                    + case(tmp, home, where, unit.name, "filelat", PREAD_C, [str(data)], args.reps,
                           "1,000,000 × pread 4 KiB (cached)"))
    finally:
        for path in reversed(made):
            for pid in (path / "cgroup.procs").read_text().split():  # none: the loops exited
                (mounts[0] / "cgroup.procs").write_text(pid)
            path.rmdir()


if __name__ == "__main__":
    sys.exit(harness.main("bench_mem_filter", measure, reps=5))
