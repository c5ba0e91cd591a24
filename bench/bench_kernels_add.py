"""Adding Debian kernel packages to the catalog: ``bpfdepot kernels add --package`` for N
packages, cold (an empty .deb cache: download, verify, read) and warm (every .deb cached),
against the same work done by hand in a shell loop — ``apt-get download``, then
``dpkg-deb --fsys-tarfile | tar x`` of boot/, then the .BTF out of the vmlinuz with the same
decompressor (the first offset where lz4/zstd/xz yields an ELF, as scripts/extract-vmlinux
finds it) and ``objcopy`` — once with the download (cold) and once from the cached .debs (warm).
bpfdepot also hashes each .deb against the index, stores BTF, image and config as blobs and
derives features; the loop only leaves files behind.

The packages are old ABIs in Debian 12's default suites (their .debs never change). Downloads
go through whatever apt is configured with (a mirror or a proxy), so cold times depend on the
network.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import harness
from harness import ROOT, Row, median, paired

PACKAGES = ("linux-image-6.1.0-47-cloud-amd64", "linux-image-6.1.0-48-cloud-amd64",
            "linux-image-6.12.101+deb12-cloud-amd64", "linux-image-6.12.107+deb12-cloud-amd64")

# What a person types: one package at a time, no verification beyond apt's own.
BY_HAND = r"""
set -eu
export LC_ALL=C
fetch=$1; shift
for pkg in "$@"; do
  if [ "$fetch" = 1 ]; then apt-get download -q "$pkg" >/dev/null 2>&1; fi
  deb=$(ls "${pkg}"_*.deb)
  mkdir -p "x-$pkg" && dpkg-deb --fsys-tarfile "$deb" | tar -x -C "x-$pkg" ./boot
  img=$(ls "x-$pkg"/boot/vmlinuz-*)
  found=
  for pair in '\x02\x21\x4c\x18:lz4' '\x28\xb5\x2f\xfd:zstd' '\xfd\x37\x7a\x58\x5a\x00:xz'; do
    for off in $(grep -aboP "${pair%%:*}" "$img" | cut -d: -f1); do
      tail -c +$((off + 1)) "$img" | "${pair##*:}" -dc > "x-$pkg/vmlinux" 2>/dev/null || true
      if [ "$(head -c 4 "x-$pkg/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ]; then
        objcopy -O binary --only-section=.BTF "x-$pkg/vmlinux" "x-$pkg/btf"; found=1; break 2
      fi
    done
  done
  [ -n "$found" ] && [ -s "x-$pkg/btf" ] || { echo "no BTF found in $img" >&2; exit 1; }
  rm -f "x-$pkg/vmlinux"
done
"""


def by_hand(work: Path, packages: list[str], *, fetch: bool) -> float:
    t0 = time.perf_counter()
    harness.run(["bash", "-c", BY_HAND, "by-hand", "1" if fetch else "0", *packages], cwd=work)
    return time.perf_counter() - t0


def ours(home: Path, cache: Path, packages: list[str]) -> float:
    t0 = time.perf_counter()
    # python -m from the checkout: the same code whether or not the console script is installed
    out = harness.run([sys.executable, "-m", "builder.cli", "kernels", "add", "--package", *packages,
                       "--deb-cache", str(cache)], env=harness.env_for(home), cwd=ROOT)
    took = time.perf_counter() - t0
    if f"{len(packages)} added" not in out.stderr:
        raise SystemExit(f"bench: kernels add did not add all {len(packages)}:\n{out.stderr}")
    return took


def measure(args: argparse.Namespace) -> list[Row]:
    packages = list(args.packages or PACKAGES)
    cold, warm, hand_cold, hand_warm = [], [], [], []
    with harness.scratch("kernels") as tmp:
        for rep in range(args.reps):
            cache, hand = tmp / f"debs-{rep}", tmp / f"hand-{rep}"
            hand.mkdir()
            hand_cold.append(by_hand(hand, packages, fetch=True))
            cold.append(ours(tmp / f"cold-{rep}", cache, packages))
            warm.append(ours(tmp / f"warm-{rep}", cache, packages))
            for extracted in hand.glob("x-*"):
                shutil.rmtree(extracted)
            hand_warm.append(by_hand(hand, packages, fetch=False))
            shutil.rmtree(hand)
            shutil.rmtree(cache)
    n = len(packages)
    size = sum(int(subprocess.run(["apt-cache", "show", "--no-all-versions", p], capture_output=True,
                                  text=True).stdout.split("\nSize: ")[1].split()[0]) for p in packages)
    return [
        Row(metric=f"cold: {n} packages ({size / 1e6:.0f} MB) downloaded and read",
            value=f"{median(cold):.2f} s", baseline=f"{median(hand_cold):.2f} s by hand",
            ratio=paired(cold, hand_cold), goal="≤ 1×", met=paired(cold, hand_cold) <= 1),
        Row(metric=f"warm: the same {n} from the .deb cache",
            value=f"{median(warm):.2f} s", baseline=f"{median(hand_warm):.2f} s by hand",
            ratio=paired(warm, hand_warm), goal="≤ 1×", met=paired(warm, hand_warm) <= 1),
        Row(metric="warm / cold (what the cache saves)", value=f"{median(warm):.2f} s",
            baseline=f"{median(cold):.2f} s cold", ratio=paired(warm, cold)),
        Row(metric="per package, warm", value=f"{median(warm) / n:.2f} s",
            baseline=f"{median(hand_warm) / n:.2f} s by hand"),
    ]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--packages", nargs="+", metavar="PKG",
                   help=f"kernel packages to add (default: {' '.join(PACKAGES)})")


if __name__ == "__main__":
    raise SystemExit(harness.main("bench_kernels_add", measure, reps=3, add_args=add_args))
