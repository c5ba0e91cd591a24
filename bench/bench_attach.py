"""Start-up to attached: ``bpfdepot run bpf/tcp_connlat`` with its artifact already in the store,
against loading the same object with bpftool and with plain libbpf in C.

bpfdepot: wall time from the process start to its stderr line "... attached ... in X ms"
(X, its own in-process figure, is reported too), with ``--duration 0.1`` so it ends by itself.
bpftool: ``bpftool prog loadall OBJ /sys/fs/bpf/<dir>`` wall time, then the pin dir is removed.
bpftool 7.1 has no ``autoattach`` (added in 7.2), so that baseline loads without attaching;
when the installed bpftool offers it, it is used. The C baseline (``flood/consumer.c -a``)
opens, loads and attaches the same object with libbpf: the like-for-like comparison.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import harness
from harness import BPFFS, ROOT, Row, median, ms, paired

BUNDLE = ROOT / "bpf" / "tcp_connlat"
# What `bpfdepot run` imports before its clock starts.
IMPORTS = "import builder.cli, loader.node, loader.session, loader.libbpf.core, loader.kernel.probe"


def bpftool_autoattach() -> bool:
    out = subprocess.run(["bpftool", "prog", "help"], capture_output=True, text=True)
    return "autoattach" in out.stdout + out.stderr


def run_bpfdepot(home: Path) -> tuple[float, float, float]:
    """(wall s to the 'attached' line, its self-reported ms, wall s to exit)."""
    cmd = [*harness.bpfdepot_exe(), "run", str(BUNDLE), "--duration", "0.1"]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=harness.env_for(home))
    try:
        line = harness.wait_for_line(p, p.stderr, "attached", "bpfdepot run")
        attached = time.perf_counter() - t0
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if p.returncode != 0:
        raise SystemExit(f"bench: bpfdepot run failed ({p.returncode}):\n{line}{err}")
    own = re.search(r"in ([0-9.]+) ms", line)
    return attached, float(own.group(1)) / 1000 if own else float("nan"), time.perf_counter() - t0


def run_bpftool(blob: Path, pin: Path, autoattach: bool) -> float:
    cmd = ["bpftool", "prog", "loadall", str(blob), str(pin)]
    cmd += ["autoattach"] if autoattach else []
    try:
        return harness.timed(cmd)[0]
    finally:
        shutil.rmtree(pin, ignore_errors=True)  # unpinning is what unloads them


def run_c(consumer: Path, blob: Path) -> tuple[float, float]:
    """Wall seconds from exec to the C consumer's 'ready' (attached) line, and to its exit."""
    t0 = time.perf_counter()
    p = subprocess.Popen([str(consumer), "-a", str(blob)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    harness.wait_for_line(p, p.stdout, "ready", "consumer -a")
    ready = time.perf_counter() - t0
    p.communicate(timeout=30)
    return ready, time.perf_counter() - t0


def measure(args: argparse.Namespace) -> list[Row]:
    autoattach = bpftool_autoattach()
    with harness.scratch("attach") as tmp:
        home = tmp / "home"
        blob = harness.build_blob(BUNDLE, home)
        consumer = harness.gcc(harness.BENCH / "flood" / "consumer.c", tmp / "consumer", "-lbpf")
        harness.ensure_bpffs()
        run_bpfdepot(home)  # warm-up: probes the kernel's features once, then they are cached
        wall, own, total, tool, c, c_total, py, imp = [], [], [], [], [], [], [], []
        for i in range(args.reps):
            a, o, t = run_bpfdepot(home)
            wall.append(a), own.append(o), total.append(t)
            tool.append(run_bpftool(blob, BPFFS / f"{tmp.name}-{i}", autoattach))
            ready, whole = run_c(consumer, blob)
            c.append(ready), c_total.append(whole)
            py.append(harness.timed([sys.executable, "-c", "pass"])[0])
            imp.append(harness.timed([sys.executable, "-c", IMPORTS], cwd=ROOT)[0])
    w, b, cc = median(wall), median(tool), median(c)
    print(f"  start → attached {ms(w)}, of which: python start-up {ms(median(py))}, imports "
          f"{ms(median(imp) - median(py))}, its own {ms(median(own))} (manifest, kernel identity, "
          "artifact, open/load/attach); medians of separate runs, so they need not add up")
    how = "loadall autoattach" if autoattach else "loadall, no attach: 7.1 has no autoattach"
    return [
        Row(metric="run tcp_connlat: start → attached, wall", value=ms(w),
            baseline=f"{ms(b)} (bpftool {how})", ratio=paired(wall, tool)),
        Row(metric="run tcp_connlat: start → attached, wall", value=ms(w),
            baseline=f"{ms(cc)} (C libbpf open+load+attach)", ratio=paired(wall, c)),
        Row(metric="run tcp_connlat: in-process to attached (own)", value=ms(median(own)),
            baseline=f"{ms(cc)} (C libbpf, incl. exec)", ratio=paired(own, c)),
        Row(metric="run tcp_connlat --duration 0.1: whole process", value=ms(median(total)),
            baseline=f"{ms(median(c_total))} (C: attach, detach, exit)"),
    ]


if __name__ == "__main__":
    sys.exit(harness.main("bench_attach", measure, reps=5))
