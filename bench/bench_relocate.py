"""The relocation check per (object, kernel): ``builder.relocate.check_relocations`` with the
kernel's BTF already indexed, against ``bpftool gen min_core_btf`` on the same pair (a process
that parses the whole kernel BTF and runs libbpf's CO-RE matching each time; it also writes the
min BTF, which the farm wants from the same step).

Objects: every C program of the catalog (bpf/*/), built once against the newest reference
kernel's header (as the farm builds once per variant), each checked against the three reference
kernels in ../shared/kernels. Also printed: the one-off cold index per kernel (read + parse +
index), and the cold parse of an object's .BTF.ext. Goal: ≤ 20 ms per pair.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import harness
from harness import ROOT, Row, median, paired

KERNELS = ROOT.parent / "shared" / "kernels"
RELEASES = ("6.1.0-50-amd64", "6.12.100+deb12-amd64", "6.18.44-fc-v669")


def catalog_objects(home: Path) -> dict[str, bytes]:
    """program name → object, each built for the newest reference kernel."""
    from loader.artifacts.store import LocalStore
    from loader.model.manifest import load_bundle
    from tests.build.test_build import _build, catalog_bundles

    btf = KERNELS / f"{RELEASES[-1]}.btf"
    out = {}
    for bundle in catalog_bundles():
        for program in load_bundle(bundle).kernel_programs:
            if program.is_source and program.name not in out:
                built = _build(home, bundle, btf, program.name)
                out[program.name] = LocalStore(home).read_blob(built.meta.digest)
    return out


def measure(args: argparse.Namespace) -> list[Row]:
    from builder import relocate
    from loader.kernel.btf import Btf

    if not all((KERNELS / f"{r}.btf").exists() for r in RELEASES):
        return [Row(metric="relocation check", value=f"skipped: no reference kernels at {KERNELS}")]
    rows: list[Row] = []
    with harness.scratch("relocate") as tmp:
        objects = catalog_objects(tmp / "home")
        paths = {}
        for name, data in objects.items():
            paths[name] = tmp / f"{name}.o"
            paths[name].write_bytes(data)
        kernels = {}
        for release in RELEASES:
            btf = KERNELS / f"{release}.btf"
            t0 = time.perf_counter()
            relocate.KernelTypes(Btf.parse(btf.read_bytes()), release)  # cold, uncached
            cold = time.perf_counter() - t0
            kernels[release] = relocate.kernel_types(btf)
            t0 = time.perf_counter()
            relocate.kernel_types(btf)
            warm = time.perf_counter() - t0
            rows.append(Row(metric=f"cold index of {release} (read+parse+index, once)",
                            value=f"{cold * 1e3:.0f} ms", baseline=f"{warm * 1e6:.1f} µs warm"))
        t0 = time.perf_counter()
        for data in objects.values():
            relocate._parse_object(data, "bench")
        parse = (time.perf_counter() - t0) / len(objects)
        rows.append(Row(metric=f"cold parse of an object's relocations ({len(objects)} objects)",
                        value=f"{parse * 1e3:.2f} ms each"))
        pairs = [(name, release) for name in objects for release in RELEASES]
        relocate._OBJECTS.clear()
        first = []
        for name, release in pairs:  # also decodes the kernel types each object touches
            t0 = time.perf_counter()
            relocate.check_relocations(objects[name], kernels[release])
            first.append(time.perf_counter() - t0)
        rows.append(Row(metric="first check of each pair (object parse, first type decodes)",
                        value=f"{median(first) * 1e3:.2f} ms (worst {max(first) * 1e3:.1f} ms)"))
        ours: list[float] = []
        theirs: list[float] = []
        worst = 0.0
        for _ in range(args.reps):
            for name, release in pairs:
                t0 = time.perf_counter()
                relocate.check_relocations(objects[name], kernels[release])
                mine = time.perf_counter() - t0
                worst = max(worst, mine)
                t0 = time.perf_counter()
                subprocess.run(["bpftool", "gen", "min_core_btf", str(KERNELS / f"{release}.btf"),
                                str(tmp / "min.btf"), str(paths[name])], check=True,
                               capture_output=True)
                theirs.append(time.perf_counter() - t0)
                ours.append(mine)
        per_pair = median(ours)
        rows.append(Row(metric=f"check per (object, kernel), warm index ({len(pairs)} pairs)",
                        value=f"{per_pair * 1e3:.2f} ms (worst {worst * 1e3:.1f} ms)",
                        baseline=f"{median(theirs) * 1e3:.1f} ms bpftool gen min_core_btf",
                        ratio=paired(ours, theirs), goal="≤ 20 ms", met=per_pair <= 0.020))
        total = sum(ours) / args.reps
        rows.append(Row(metric=f"whole catalog × {len(RELEASES)} kernels",
                        value=f"{total * 1e3:.0f} ms",
                        baseline=f"{sum(theirs) / args.reps * 1e3:.0f} ms bpftool",
                        ratio=total / (sum(theirs) / args.reps)))
    return rows


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sys.exit(harness.main("bench_relocate", measure, reps=3))
