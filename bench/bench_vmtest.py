"""The VM load test (builder/vmtest): a Debian cloud kernel booted in QEMU (TCG) with 1 and with
5 objects loaded and attached in it, against the bare boot of the same kernel and initramfs with
no objects (the loader finds none and powers off) in the same run.

Goal (issue 15): boot + all of a submission's objects + power-off ≤ 5 s for a cloud kernel.
The kernel packages are downloaded once per machine into $BPFDEPOT_TEST_CACHE/debs (default
/var/cache/bpfdepot-test/debs), as the VM tests do.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import harness
from harness import ROOT, Row, median, paired

KERNELS = ("linux-image-6.1.0-50-cloud-amd64", "linux-image-6.12.100+deb12-cloud-amd64")
SOURCES = ROOT / "tests" / "vm" / "bpf"
GOAL_S = 5.0


@contextlib.contextmanager
def child_cpu(into: list[float]) -> Iterator[None]:
    """CPU seconds of the child processes that ended in the block (QEMU: one vCPU thread under
    TCG), which other jobs on the machine disturb far less than wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    yield
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    into.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)


def build_objects(tmp: Path, btf: Path) -> dict[str, bytes]:
    """The VM tests' getpid (a tracepoint) and mixed (a raw tracepoint + a socket filter),
    built against the header of ``btf``."""
    header = harness.run(["bpftool", "btf", "dump", "file", str(btf), "format", "c"]).stdout
    (tmp / "vmlinux.h").write_text(header)
    built = {}
    for name in ("getpid", "mixed"):
        harness.run(["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", f"-I{tmp}",
                     "-c", str(SOURCES / f"{name}.bpf.c"), "-o", str(tmp / f"{name}.o")])
        built[name] = (tmp / f"{name}.o").read_bytes()
    return built


def measure(args: argparse.Namespace) -> list[Row]:
    from builder.kernels import add_package
    from builder.vmtest import load_test, vm_image
    from builder.vmtest.run import boot, qemu_argv
    from loader.artifacts.store import LocalStore
    from tests.vm.debian import cache_root, fetch_package

    rows = []
    with harness.scratch("vmtest") as tmp:
        store, cache = LocalStore(tmp / "store"), tmp / "cache"
        entries = [add_package(store, fetch_package(package, cache_root(os.environ)))
                   for package in KERNELS]
        objects = build_objects(tmp, store.blob_path(entries[-1].btf_blob))
        one = [("getpid", objects["getpid"])]
        five = [(f"{name}{i}", objects[name]) for i, name in
                enumerate(("getpid", "mixed", "getpid", "mixed", "getpid"))]
        for entry in entries:
            vmlinuz, base = vm_image(store, entry, cache)  # built once, outside the timing
            bare_argv = qemu_argv(entry.arch, vmlinuz, base)
            wall: dict[str, list[float]] = {"bare": [], "1": [], "5": []}
            cpu: dict[str, list[float]] = {"bare": [], "1": [], "5": []}
            for _ in range(args.reps):
                with child_cpu(cpu["bare"]):
                    console, seconds = boot(bare_argv, timeout_s=60, what="the bare VM")
                if "BPFDEPOT-BEGIN 0" not in console:
                    raise SystemExit(f"bench: the bare VM of {entry} did not run its loader:\n{console}")
                wall["bare"].append(seconds)
                for key, batch in (("1", one), ("5", five)):
                    with child_cpu(cpu[key]):
                        report = load_test(store, entry, batch, cache_dir=cache)
                    if not all(v.ok for v in report.verdicts.values()):
                        raise SystemExit(f"bench: an object failed on {entry}: {report.verdicts}")
                    wall[key].append(report.seconds)
            for key, label in (("1", "1 object"), ("5", "5 objects")):
                rows.append(Row(metric=f"{entry.release}: boot + {label} + power-off (wall)",
                                value=f"{median(wall[key]):.2f} s",
                                baseline=f"{median(wall['bare']):.2f} s bare boot",
                                ratio=paired(wall[key], wall["bare"]), goal=f"≤ {GOAL_S:g} s",
                                met=median(wall[key]) <= GOAL_S))
            rows.append(Row(metric=f"{entry.release}: QEMU CPU time, 5 objects",
                            value=f"{median(cpu['5']):.2f} s", baseline=f"{median(cpu['bare']):.2f} s bare boot",
                            ratio=paired(cpu["5"], cpu["bare"])))
            rows.append(Row(metric=f"{entry.release}: QEMU CPU time per object after the first",
                            value=f"{(median(cpu['5']) - median(cpu['1'])) / 4:.3f} s"))
            print(f"bench: {entry.release}: wall {wall}, cpu {cpu}", flush=True)
    return rows


if __name__ == "__main__":
    raise SystemExit(harness.main("bench_vmtest", measure, reps=3))
