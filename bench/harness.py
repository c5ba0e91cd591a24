"""What every benchmark here shares: fresh stores, timed subprocesses, result rows, clean-up checks.

A benchmark measures bpfdepot and its baseline in the same run, several times, interleaved,
and reports medians and the median of the per-repetition ratios; nothing here asserts a
time. Each script calls ``main()`` with its measuring function:
``python bench/<x>.py [--reps N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BPFFS = Path("/sys/fs/bpf")
# Program names the benchmarks load; none may stay loaded after a script ends.
OUR_PROGRAMS = ("flood", "tcp_connlat")

if str(ROOT) not in sys.path:  # in-process measurements import builder/ and loader/
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One line of a summary table; ``ratio`` is value / baseline, ``met`` None when no goal."""

    metric: str
    value: str
    baseline: str = "—"
    ratio: float | None = None
    goal: str = "—"
    met: bool | None = None


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def paired(values: Sequence[float], baselines: Sequence[float]) -> float:
    """The median of per-repetition ratios: each pair ran back to back, so load that comes and
    goes on the machine (other jobs share its two cores) cancels out better than in a ratio
    of medians."""
    return median([v / b for v, b in zip(values, baselines, strict=True)])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def bpfdepot_exe() -> list[str]:
    """The real console script next to this interpreter (a pyenv shim on PATH adds ~0.1 s)."""
    beside = Path(sys.executable).parent / "bpfdepot"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("bpfdepot")
    return [found] if found else [sys.executable, "-m", "builder.cli"]


def env_for(home: Path) -> dict[str, str]:
    return {**os.environ, "BPFDEPOT_HOME": str(home)}


@contextlib.contextmanager
def scratch(tag: str) -> Iterator[Path]:
    """A temp folder for one benchmark run (stores, objects, outputs), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"bpfdepot-bench-{tag}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run(cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess:
    """Run a command that must succeed; on failure show what it said."""
    out = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if out.returncode != 0:
        raise SystemExit(f"bench: {' '.join(map(str, cmd))} failed ({out.returncode}):\n"
                         f"{out.stdout}{out.stderr}")
    return out


def timed(cmd: Sequence[str], **kw: object) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds of one command, from fork to exit."""
    t0 = time.perf_counter()
    out = run(cmd, **kw)
    return time.perf_counter() - t0, out


def wait_for_line(p: subprocess.Popen, stream: IO[str], word: str, what: str) -> str:
    """Read ``stream`` of ``p`` until a line containing ``word``; fail with what ``p`` said."""
    said = []
    while True:
        line = stream.readline()
        if not line:
            p.wait(timeout=60)
            said.append(p.stderr.read() if p.stderr and p.stderr is not stream else "")
            raise SystemExit(f"bench: {what} exited ({p.returncode}) before '{word}':\n"
                             + "".join(said))
        if word in line:
            return line
        said.append(line)


def build_blob(bundle: Path, home: Path) -> Path:
    """``bpfdepot build`` a bundle into ``home``; return the path of its object in the store."""
    out = run([*bpfdepot_exe(), "build", str(bundle)], env=env_for(home), cwd=ROOT)
    found = re.search(r"sha256:([0-9a-f]{64})", out.stdout)
    if not found:
        raise SystemExit(f"bench: no digest in the output of bpfdepot build:\n{out.stdout}")
    hexd = found.group(1)
    return home / "blobs" / "sha256" / hexd[:2] / hexd[2:]


def gcc(source: Path, out: Path, *libs: str) -> Path:
    run(["gcc", "-O2", "-Wall", "-o", str(out), str(source), *libs])
    return out


def ensure_bpffs() -> None:
    with open("/proc/self/mounts") as f:
        if any(line.split()[1] == str(BPFFS) for line in f):
            return
    run(["mount", "-t", "bpf", "bpf", str(BPFFS)])
    print(f"bench: mounted bpffs at {BPFFS}", file=sys.stderr)


def our_programs() -> dict[int, str]:
    """Loaded programs named like ours, by id."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    progs = json.loads(out.stdout or "[]")
    return {p["id"]: p["name"] for p in progs if p.get("name") in OUR_PROGRAMS}


def leftovers(before: dict[int, str]) -> tuple[list[str], list[str]]:
    """(our pin dirs still in bpffs, programs of our names loaded since ``before``).

    Once our processes have exited, the kernel frees every program that is not pinned, so a pin
    is the only way one of ours can stay; new programs that persist belong to another process
    on the machine (a test run, say) and are only reported.
    """
    pins = [str(p) for p in BPFFS.glob("bpfdepot-bench-*")] if BPFFS.is_dir() else []
    for _ in range(10):
        new = {i: n for i, n in our_programs().items() if i not in before}
        if not new:
            break
        time.sleep(0.2)  # detaching is asynchronous (RCU); give it a moment
    return pins, [f"{n} (id {i})" for i, n in new.items()]


def table(rows: Sequence[Row], *, title: str = "") -> str:
    head = ("metric", "bpfdepot", "baseline", "ratio", "goal", "met?")
    body = [(r.metric, r.value, r.baseline, f"{r.ratio:.2f}×" if r.ratio is not None else "—",
             r.goal, "—" if r.met is None else ("yes" if r.met else "NO")) for r in rows]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    lines = [title] if title else []
    for i, cells in enumerate((head, *body)):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(name: str, measure: Callable[[argparse.Namespace], list[Row]], *, reps: int,
         add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """Parse the common flags, measure, print the table, check nothing of ours stays loaded."""
    p = argparse.ArgumentParser(prog=f"bench/{name}.py")
    p.add_argument("--reps", type=int, default=reps, help=f"repetitions per case (default {reps})")
    p.add_argument("--json", metavar="FILE", help="also write the summary rows here (for run_all)")
    if add_args:
        add_args(p)
    args = p.parse_args()
    if os.geteuid() != 0:
        print(f"bench/{name}: needs root (loads BPF programs)", file=sys.stderr)
        return 1
    before = our_programs()
    rows = measure(args)
    print(table(rows, title=f"== {name} (medians of {args.reps})"))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows]))
    pins, programs = leftovers(before)
    if programs:
        print(f"bench/{name}: loaded now but not before, held by another process: "
              f"{', '.join(programs)}", file=sys.stderr)
    if pins:
        print(f"bench/{name}: pins left in bpffs: {', '.join(pins)}", file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def bpftrace(script: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """bpftrace running ``script`` (the anchor most benchmarks compare with), its probes
    attached when the block starts, stopped with SIGINT after it; its output is drained in the
    background so a printf-heavy script never blocks on a full pipe."""
    p = subprocess.Popen(["bpftrace", *args, str(script)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        wait_for_line(p, p.stdout, "Attaching", "bpftrace")
        time.sleep(0.5)  # bpftrace prints the line before its probes are all attached
        sink = subprocess.Popen(["cat"], stdin=p.stdout, stdout=subprocess.DEVNULL)
        yield p
        p.send_signal(signal.SIGINT)
        p.wait(timeout=120)
        sink.wait(timeout=60)
    finally:
        p.kill()
        p.wait()


def anchor_rows(program: str, plain: Sequence[float], ours: Sequence[float],
                theirs: Sequence[float], detail: Callable[[Sequence[float]], str] = lambda xs: ""
                ) -> list[Row]:
    """The rows comparing a program's overhead with bpftrace's on the same workload (all times
    in seconds, per repetition): bpftrace's slowdown against untraced, then our overhead over
    its overhead, the catalog's goal (no worse; aim half). ``theirs`` empty: bpftrace missing."""
    if not theirs:
        return [Row(metric="bpftrace equivalent", value="skipped: bpftrace not installed")]
    ours_cost, their_cost = paired(ours, plain) - 1, paired(theirs, plain) - 1
    return [Row(metric="same, bpftrace equivalent script",
                value=f"{median(theirs) * 1e3:.0f} ms{detail(theirs)}",
                baseline=f"{median(plain) * 1e3:.0f} ms untraced", ratio=paired(theirs, plain)),
            Row(metric=f"{program} overhead / bpftrace overhead",
                value=f"{ours_cost * 100:.1f}% vs {their_cost * 100:.1f}%",
                ratio=ours_cost / their_cost if their_cost > 0 else None,
                goal="≤ 1× (aim 0.5×)", met=ours_cost <= their_cost)]


@contextlib.contextmanager
def empty_unit(tag: str) -> Iterator[Path | None]:
    """A cgroup2 directory named like a systemd unit that no process is in (``--unit`` on it
    filters everything out: the filter benches' case); None on a host without cgroup2."""
    sys.path.insert(0, str(ROOT))
    from loader.attach.cgroup import cgroup2_mounts

    mounts = cgroup2_mounts()
    if not mounts:
        yield None
        return
    unit = mounts[0] / f"bpfdepot-bench-{tag}-{os.getpid()}.service"
    unit.mkdir()
    try:
        yield unit
    finally:
        unit.rmdir()


def filter_rows(*, loop: str, per: str, count: int, traced: str, filtered: str, ratio: str,
                plain: Sequence[float], traced_xs: Sequence[float],
                filtered_xs: Sequence[float]) -> list[Row]:
    """The three rows of a filter bench: the loop traced, the same filtered out in the kernel,
    and the filtered slowdown over the traced one (goal: at most half)."""
    def extra(xs: Sequence[float]) -> float:
        return (median(xs) - median(plain)) / count * 1e9

    base = f"{median(plain) * 1e3:.0f} ms untraced"
    traced_cost, filter_cost = paired(traced_xs, plain) - 1, paired(filtered_xs, plain) - 1
    return [
        Row(metric=f"{loop}, {traced}",
            value=f"{median(traced_xs) * 1e3:.0f} ms (+{extra(traced_xs):.0f} ns/{per})",
            baseline=base, ratio=paired(traced_xs, plain)),
        Row(metric=f"same, {filtered}",
            value=f"{median(filtered_xs) * 1e3:.0f} ms (+{extra(filtered_xs):.0f} ns/{per})",
            baseline=base, ratio=paired(filtered_xs, plain)),
        Row(metric=ratio, value=f"{filter_cost * 100:.1f}% vs {traced_cost * 100:.1f}%",
            ratio=filter_cost / traced_cost if traced_cost > 0 else None,
            goal="≤ 0.5×", met=filter_cost <= 0.5 * traced_cost),
    ]
