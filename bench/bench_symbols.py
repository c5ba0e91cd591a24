"""Naming stack frames: ``loader.symbols.Symbolizer`` against binutils ``addr2line -f -e``.

Warm: 100,000 frames, 70,000 user frames inside the functions of libLLVM-14.so.1 (110 MB,
~34k exported functions) mapped by a real python3 process (``ctypes.CDLL``), plus 30,000
kernel frames from /proc/kallsyms. The symbol tables are loaded before timing; the per-pid
memo of already-named frames is cleared before each repetition, so every frame is looked up
(a real profile repeats frames, which the memo then answers: shown as its own row).
``addr2line`` gets the same user frames, as ELF addresses, in one batch on stdin.

Cold: the first sight of a ~20 MB library (libz3.so.4, 23 MB) by a fresh Symbolizer:
``seen(pid)`` + naming one frame in it (file in the page cache: the symbolizer's own work);
the same for libLLVM, and a "second run" reading the build-id-keyed disk cache.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

import harness
from harness import Row, median, paired

LLVM = Path("/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1")
Z3 = Path("/usr/lib/x86_64-linux-gnu/libz3.so.4")
USER_FRAMES, KERNEL_FRAMES = 70_000, 30_000


def functions(lib: Path) -> list[tuple[int, int, str]]:
    """(ELF address, size, name) of each sized exported function, from nm."""
    out = subprocess.run(["nm", "-D", "-S", "--defined-only", str(lib)], capture_output=True,
                         text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        f = line.split()
        if len(f) == 4 and f[2] in "Tt" and int(f[1], 16) > 0:
            rows.append((int(f[0], 16), int(f[1], 16), f[3].split("@")[0]))
    return rows


def holder(lib: Path) -> subprocess.Popen:
    """A python3 process that maps ``lib`` and waits on stdin."""
    code = "import ctypes, sys; ctypes.CDLL(sys.argv[1]); print('ready', flush=True); sys.stdin.read()"
    p = subprocess.Popen([sys.executable, "-c", code, str(lib)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    harness.wait_for_line(p, p.stdout, "ready", f"python3 mapping {lib.name}")
    return p


def base_of(pid: int, lib: Path) -> int:
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        f = line.split()
        if len(f) >= 6 and f[5] == str(lib) and int(f[2], 16) == 0:
            return int(f[0].split("-")[0], 16)
    raise SystemExit(f"bench: {lib} not mapped by {pid}")


def kernel_frames(n: int, rng: random.Random) -> list[int]:
    rows = [int(f[0], 16) for f in (line.split() for line in open("/proc/kallsyms"))
            if f[1] in "tT" and int(f[0], 16)]
    if not rows:
        return []
    return [rng.choice(rows) + rng.randrange(0, 0x40) for _ in range(n)]


def cold(lib: Path, cache: Path | None) -> tuple[float, str]:
    from loader.symbols import Symbolizer

    fns = functions(lib)
    fn = fns[len(fns) // 2]
    p = holder(lib)
    try:
        addr = base_of(p.pid, lib) + fn[0] + min(4, fn[1] - 1)
        t0 = time.perf_counter()
        sym = Symbolizer(cache_dir=cache)
        sym.seen(p.pid)
        name = sym.user(p.pid, [addr])[0]
        return time.perf_counter() - t0, name
    finally:
        p.kill()
        p.wait()


def measure(args: argparse.Namespace) -> list[Row]:
    from loader.symbols import Symbolizer
    from loader.symbols.demangle import demangle

    rng = random.Random(10)
    fns = functions(LLVM)
    picks = [rng.choice(fns) for _ in range(USER_FRAMES)]
    vaddrs = [a + rng.randrange(0, size) for a, size, _n in picks]
    kaddrs = kernel_frames(KERNEL_FRAMES, rng)
    batch = "".join(f"{v:x}\n" for v in vaddrs)
    p = holder(LLVM)
    try:
        base = base_of(p.pid, LLVM)
        uaddrs = [base + v for v in vaddrs]
        sym = Symbolizer()
        sym.seen(p.pid)
        sym.user(p.pid, uaddrs[:1])  # load libLLVM's table (cold cost measured below)
        sym.kernel(kaddrs[:1])
        snap = sym._procs[p.pid]
        ours_user, ours_kernel, ours_memo, a2l = [], [], [], []
        for _ in range(args.reps):
            snap.memo.clear()
            sym._kernel._memo.clear()
            t0 = time.perf_counter()
            names = sym.user(p.pid, uaddrs)
            t1 = time.perf_counter()
            sym.kernel(kaddrs)
            t2 = time.perf_counter()
            sym.user(p.pid, uaddrs)
            t3 = time.perf_counter()
            ours_user.append(t1 - t0)
            ours_kernel.append(t2 - t1)
            ours_memo.append(t3 - t2)
            t0 = time.perf_counter()
            out = subprocess.run(["addr2line", "-f", "-e", str(LLVM)], input=batch,
                                 capture_output=True, text=True, check=True).stdout
            a2l.append(time.perf_counter() - t0)
    finally:
        p.kill()
        p.wait()
    theirs = out.splitlines()[0::2]
    prefix = f"{LLVM.name}:"
    same = sum(demangle(t) == n.removeprefix(prefix) for t, n in zip(theirs, names))
    print(f"  names agreeing with addr2line (demangled): {same}/{len(names)}; "
          f"hex-only frames of ours: {sum(n.startswith('0x') for n in names)}")
    total = [u + k for u, k in zip(ours_user, ours_kernel)]
    with harness.scratch("symbols") as tmp:
        cold_z3 = [cold(Z3, None) for _ in range(args.reps)]
        cold_llvm = [cold(LLVM, None) for _ in range(args.reps)]
        cold(LLVM, tmp / "cache")  # fills the disk cache
        cached_llvm = [cold(LLVM, tmp / "cache") for _ in range(args.reps)]
    print(f"  cold names: {cold_z3[0][1]}, {cold_llvm[0][1]}, disk cache: {cached_llvm[0][1]}")
    n = USER_FRAMES + len(kaddrs)
    return [
        Row(metric=f"{USER_FRAMES:,} user frames (libLLVM, tables warm, frames new)",
            value=harness.ms(median(ours_user)),
            baseline=f"{harness.ms(median(a2l))} (addr2line -f -e, one batch)",
            ratio=paired(ours_user, a2l), goal="≤ 0.10× (10× faster)",
            met=paired(ours_user, a2l) <= 0.10),
        Row(metric=f"{n:,} frames: user + {len(kaddrs):,} kernel", value=harness.ms(median(total)),
            baseline=f"{harness.ms(median(a2l))} (addr2line, user frames only)",
            ratio=paired(total, a2l)),
        Row(metric="  per frame: user / kernel",
            value=f"{median(ours_user) / USER_FRAMES * 1e6:.2f} / "
                  f"{median(ours_kernel) / max(len(kaddrs), 1) * 1e6:.2f} µs",
            baseline=f"{median(a2l) / USER_FRAMES * 1e6:.2f} µs (addr2line)"),
        Row(metric=f"{USER_FRAMES:,} user frames again (memo: frames seen before)",
            value=harness.ms(median(ours_memo)), baseline=harness.ms(median(a2l)),
            ratio=paired(ours_memo, a2l)),
        Row(metric=f"cold: first sight of {Z3.name} ({Z3.stat().st_size >> 20} MB)",
            value=harness.ms(median([t for t, _ in cold_z3])), goal="< 1 s",
            met=median([t for t, _ in cold_z3]) < 1.0),
        Row(metric=f"cold: first sight of {LLVM.name} ({LLVM.stat().st_size >> 20} MB)",
            value=harness.ms(median([t for t, _ in cold_llvm])), goal="< 1 s",
            met=median([t for t, _ in cold_llvm]) < 1.0),
        Row(metric=f"second run: {LLVM.name} from the build-id disk cache",
            value=harness.ms(median([t for t, _ in cached_llvm])),
            baseline=harness.ms(median([t for t, _ in cold_llvm])) + " (cold)",
            ratio=paired([t for t, _ in cached_llvm], [t for t, _ in cold_llvm])),
    ]


if __name__ == "__main__":
    sys.exit(harness.main("bench_symbols", measure, reps=3))
