"""The farm at fleet scale: the catalog for 30 kernels against the catalog for one.

Everything is real and on loopback (bench_farm.py's set-up: redis-server, a single-node Ceph
radosgw, ONE ``bpfdepot worker --concurrency 2``). The catalog of kernels holds the three in
``../shared/kernels`` plus Debian's newest cloud images from the apt index (``bpfdepot kernels
add --package --from-index --flavour cloud``, downloaded once into a cache kept between runs),
30 kernels in all. Each round submits every bundle under bpf/ as fresh copies (a unique comment:
new keys), all at once, and times the first ``submit()`` to the last job's result:

- baseline: the catalog for ONE kernel (the reference 6.18);
- measured: the catalog for all 30 kernels, in the same run, alternating with the baseline.

With one compile per variant, each extra kernel costs a relocation check and its publishing,
not a compile: goal ≤ 1.5× the one-kernel round. An uncounted warm-up round for all 30 first
(vmlinux.h headers, each worker process's kernel indexes, clients), as a long-running farm has.
No load tests here (no node is announced and the kernels' images are not booted:
BPFDEPOT_VM_TESTS=0): they are measured by bench_vmtest.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import harness
from bench_farm import (KERNELS, TOOLS, _cli, _failed, _jobs, _submit_all, catalog, ceph_daemons,
                        cpu_snapshot, farm, fresh_copies)
from harness import Row, median, ms, paired

KERNEL_COUNT = 30
GOAL = 1.5
DEB_CACHE = Path(os.environ.get("BPFDEPOT_BENCH_DEB_CACHE", "/var/cache/bpfdepot-test/kernel-debs"))
ONE = "release=6.18.44-fc-v669"


def add_fleet(env: dict[str, str], count: int) -> int:
    """Debian cloud images until the catalog holds ``count`` kernels; how many it holds."""
    done = _cli(env, "kernels", "add", "--from-index", "--flavour", "cloud",
                "--limit", str(count - 3), "--deb-cache", str(DEB_CACHE))
    print("\n".join("    " + line for line in done.stderr.splitlines()[-3:]), flush=True)
    listed = _cli(env, "kernels", "list")
    return len([line for line in listed.stdout.splitlines()[1:] if line.strip()])


def measure(args: argparse.Namespace) -> list[Row]:
    from loader.model.settings import Settings

    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing or not KERNELS.is_dir():
        why = f"{', '.join(missing)} not installed" if missing else f"no {KERNELS}"
        print(f"bench/bench_fleet_build: skipped: {why}", file=sys.stderr)
        return [Row(metric=f"farm at fleet scale: skipped ({why})", value="—")]
    if ceph_daemons():
        raise SystemExit("bench/bench_fleet_build: Ceph is already running here (fixed ports): "
                         "wait for it to end, then run again")
    os.environ["BPFDEPOT_VM_TESTS"] = "0"  # the workers inherit it: relocation checks only
    with harness.scratch("fleet") as tmp, farm(tmp) as f:
        kernels = add_fleet(f.env, args.kernels)
        print(f"  {kernels} kernels in the catalog", flush=True)
        settings = Settings.from_env(f.env)
        bundles = catalog()
        one: list[float] = []
        many: list[float] = []
        for rep in range(-1, args.reps):
            rounds = [("all", many)] if rep < 0 else [(ONE, one), ("all", many)]
            for selector, into in rounds:
                tag = f"fleet-{rep + 1}-{'one' if selector == ONE else 'all'}"
                copies = fresh_copies(bundles, tmp / "copies", tag)
                before = cpu_snapshot(f.services)
                t0 = time.perf_counter()
                builds = _submit_all(settings, list(copies.values()), selector, threads=len(copies))
                wall = time.perf_counter() - t0
                used = {k: v - before[k] for k, v in cpu_snapshot(f.services).items()}
                if _failed(builds):
                    raise SystemExit(f"bench: the farm failed a build:\n{_failed(builds)}")
                jobs = _jobs(builds)
                compiles = len({(j.program, j.object_key) for j in jobs})
                refused = sum(j.state == "refused" for j in jobs)
                print(f"  {'warm-up' if rep < 0 else f'rep {rep + 1}'} {selector}: {wall:.2f} s, "
                      f"{len(jobs)} jobs, {compiles} compiles, {refused} refused; CPU s: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in used.items()), flush=True)
                if rep >= 0:
                    into.append(wall)
    ratio = paired(many, one)
    return [Row(metric=f"farm: catalog × {kernels} kernels ({len(bundles)} bundles, 2 worker "
                       "processes), first submit → last result",
                value=ms(median(many)), baseline=f"{ms(median(one))} (catalog × 1 kernel)",
                ratio=ratio, goal=f"≤ {GOAL:.1f}×", met=ratio <= GOAL)]


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernels", type=int, default=KERNEL_COUNT,
                   help=f"kernels in the catalog (default {KERNEL_COUNT})")


if __name__ == "__main__":
    sys.exit(harness.main("bench_fleet_build", measure, reps=2, add_args=_args))
