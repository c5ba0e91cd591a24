"""Stack counts in the running kernel: bpf/cpu_profile on a frame-pointer C `burn` program (live
and exited before the only read), bpf/offcpu on 10 × nanosleep(50 ms), bpf/wakeuptime on pipe
wakeups made by this test, a tiny stack map whose losses are counted, and a bad `stacks:`; the
three under the process filter (`--unit`), each judged by the task whose stacks it records."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from loader.outputs.stack_counts import LOST_FRAME
from tests.kernel.conftest import ROOT, Running, bpfdepot
from tests.kernel.monitor import received, workers
from tests.kernel.test_attach import link_progs_named
from tests.kernel.test_cpu_sample import BURN

BURN_C = r"""
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec / 1e9; }
volatile unsigned long sink;
__attribute__((noinline)) void burn_leaf(double secs) {
    double end = now() + secs;
    for (;;) { for (int i = 0; i < 100000; i++) sink += i; if (now() > end) break; }
}
__attribute__((noinline)) void burn_mid(double secs) { burn_leaf(secs); }
int main(int argc, char **argv) {
    char c;
    if (read(0, &c, 1) != 1) return 1;     /* start when the test says so */
    burn_mid(argc > 1 ? atof(argv[1]) : 2.0);
    return 0;
}
"""

# nap() keeps a frame pointer, so the unwinder walks from libc's nanosleep (no frame pointer)
# through nap's frame to main: main is the frame the test looks for.
NAP_C = r"""
#include <time.h>
#include <unistd.h>
__attribute__((noinline)) void nap(void) {
    struct timespec t = {0, 50 * 1000 * 1000};
    nanosleep(&t, 0);
}
int main(void) {
    char c;
    if (read(0, &c, 1) != 1) return 1;
    for (int i = 0; i < 10; i++) nap();
    return 0;
}
"""


def compile_c(tmp: Path, name: str, source: str) -> Path:
    (tmp / f"{name}.c").write_text(source)
    subprocess.run(["gcc", "-O0", "-fno-omit-frame-pointer", "-o", str(tmp / name),
                    str(tmp / f"{name}.c")], check=True)
    return tmp / name


def bundle(tmp: Path, program: str, channel: str) -> Path:
    """A copy of catalog program ``program`` with the test's channel options."""
    out = tmp / f"bundle-{program}"
    out.mkdir()
    for f in (ROOT / "bpf" / program).iterdir():
        if f.suffix in (".c", ".h"):
            shutil.copy(f, out / f.name)
    text = (ROOT / "bpf" / program / "manifest.yaml").read_text()
    head, _, _ = text.partition("  channels:\n")
    (out / "manifest.yaml").write_text(head + "  channels:\n    counts:\n" + "".join(
        f"      {line}\n" for line in channel.strip().splitlines()))
    return out


def run_burn(home: Path, tmp: Path, b: Path, seconds: float = 2.0,
             extra: tuple[str, ...] = ()) -> tuple[int, object]:
    burn = subprocess.Popen([str(compile_c(tmp, "burn", BURN_C)), str(seconds)],
                            stdin=subprocess.PIPE)
    try:
        run = Running(home, str(b), tmp / "stacks.jsonl",
                      extra=["--set", f"targ_tgid={burn.pid}", *extra])
        burn.stdin.write(b"x")
        burn.stdin.close()
        burn.wait(timeout=30)
        time.sleep(0.5)
        return burn.pid, run.stop()
    finally:
        burn.kill()


def names(frames: list[str]) -> set[str]:
    """Kernel frames without their +0xOFF."""
    return {re.sub(r"\+0x[0-9a-f]+$", "", f) for f in frames}


def channel_lost(stderr: str, program: str) -> int:
    m = re.search(rf"{program}/counts\s+(\d+)\s+(\d+)", stderr)
    assert m, stderr
    return int(m.group(2))


def assert_burn_named(pid: int, events: list[dict]) -> None:
    mine = [e for e in events if e["pid"] == pid]
    total = sum(e["value"] for e in mine)
    named = sum(e["value"] for e in mine if e["stack"].endswith("main;burn_mid;burn_leaf"))
    # 99 Hz for 2 s is ~198 samples with a CPU to itself; the loader shares the 2 CPUs
    assert total >= 100, mine
    assert named >= 0.8 * total, mine
    assert all(e["unit"] == "samples" and e["comm"] == "burn" for e in mine)
    assert {e["pid"] for e in events} == {pid}          # the knob filtered the rest
    leaf = next(e for e in mine if e["stack"].endswith("burn_leaf"))
    assert leaf["user"][:3] == ["burn_leaf", "burn_mid", "main"]   # innermost first
    assert leaf["stack"].startswith("burn;")
    assert "kern_stack_id" not in leaf and "user_stack_id" not in leaf


def test_cpu_profile_names_the_burn_stack(home: Path, tmp_path: Path) -> None:
    b = bundle(tmp_path, "cpu_profile", "type: stack_counts\nunit: samples\ninterval: 1s")
    pid, done = run_burn(home, tmp_path, b)
    assert done.rc == 0, done.stderr
    assert_burn_named(pid, done.events)
    assert channel_lost(done.stderr, "cpu_profile") == 0


def test_cpu_profile_names_frames_of_a_process_that_exited_before_the_only_read(
        home: Path, tmp_path: Path) -> None:
    # interval 1 h: the only read is the one after detach, when burn is long gone; its maps
    # were snapshotted by a peek while it ran
    b = bundle(tmp_path, "cpu_profile", "type: stack_counts\ninterval: 3600s\npeek: 200ms")
    pid, done = run_burn(home, tmp_path, b)
    assert not Path(f"/proc/{pid}").exists()
    assert done.rc == 0, done.stderr
    assert_burn_named(pid, done.events)


def test_offcpu_counts_the_time_asleep_on_the_nanosleep_stack(home: Path, tmp_path: Path) -> None:
    b = bundle(tmp_path, "offcpu", "type: stack_counts\nunit: ns\ninterval: 1s")
    nap = subprocess.Popen([str(compile_c(tmp_path, "nap", NAP_C))], stdin=subprocess.PIPE)
    try:
        run = Running(home, str(b), tmp_path / "off.jsonl", extra=["--set", f"targ_tgid={nap.pid}"])
        nap.stdin.write(b"x")
        nap.stdin.close()
        nap.wait(timeout=30)
        done = run.stop()
    finally:
        nap.kill()
    assert done.rc == 0, done.stderr
    assert {e["pid"] for e in done.events} == {nap.pid}
    sleeping = [e for e in done.events
                if {"do_nanosleep", "hrtimer_nanosleep"} & names(e["kernel"]) and "main" in e["user"]]
    total_ms = sum(e["value"] for e in sleeping) / 1e6
    assert 400 <= total_ms <= 600, done.events
    assert all(e["unit"] == "ns" for e in done.events)
    # folded: nap;<user outer → inner>;<kernel outer → inner, without offsets>
    assert any(e["stack"].startswith("nap;") and ";main;" in e["stack"] and
               ";do_nanosleep;schedule;" in e["stack"] for e in sleeping), sleeping


def test_wakeuptime_charges_the_blocked_time_to_the_waker(home: Path, tmp_path: Path) -> None:
    script = "import os\nfor _ in range(5): os.read(0, 1)\n"
    reader = subprocess.Popen(["python3", "-c", script], stdin=subprocess.PIPE)
    try:
        run = Running(home, str(bundle(tmp_path, "wakeuptime", "type: stack_counts\nunit: ns")),
                      tmp_path / "wake.jsonl", extra=["--set", f"targ_tgid={reader.pid}",
                                                      "--set", "min_block_us=100000"])
        # the reader blocked in read() before the programs attached: that first stretch has no
        # start time and is not counted; the next 4 blocks last 200 ms each, ended by this test
        os.write(reader.stdin.fileno(), b"x")
        for _ in range(4):
            time.sleep(0.2)
            os.write(reader.stdin.fileno(), b"x")
        reader.wait(timeout=30)
        done = run.stop()
    finally:
        reader.kill()
    assert done.rc == 0, done.stderr
    mine = [e for e in done.events if e["pid"] == os.getpid()]
    total_ms = sum(e["value"] for e in mine) / 1e6
    assert 4 * 200 * 0.8 <= total_ms <= 4 * 200 * 1.2, done.events
    assert {e["target"] for e in mine} == {"python3"}
    # the waker's kernel stack: write(2) into the pipe (anon_pipe_write on 6.18, pipe_write before)
    assert any(n.endswith("pipe_write") for e in mine for n in names(e["kernel"])), mine


def test_a_full_stack_map_loses_stacks_counted_and_shown(home: Path, tmp_path: Path) -> None:
    # 8 stack slots, every process on both CPUs: collisions (-EEXIST) and a full map (-ENOMEM)
    # come within a second; each is a "[lost stack]" frame and counts in the summary's lost
    b = bundle(tmp_path, "cpu_profile", "type: stack_counts\ninterval: 200ms")
    manifest = b / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("max_entries: 16384", "max_entries: 8"))
    spin = "import json, re\nwhile True: json.loads(json.dumps({'a': [1] * 100})); re.purge()"
    busy = [subprocess.Popen(["python3", "-c", spin]) for _ in range(2)]
    try:
        run = Running(home, str(b), tmp_path / "lost.jsonl")
        time.sleep(3)
        done = run.stop()
    finally:
        for p in busy:
            p.kill()
    assert done.rc == 0, done.stderr
    lost_records = [e for e in done.events if "[lost stack]" in e["kernel"] + e["user"]]
    assert lost_records
    assert channel_lost(done.stderr, "cpu_profile") >= len(lost_records) > 0
    # reads keep emptying the stack map: named stacks keep coming all run long
    assert any(e["user"] and "[lost stack]" not in e["user"] for e in done.events)


def test_stacks_naming_a_map_that_is_not_a_stack_map_is_refused(home: Path, tmp_path: Path) -> None:
    b = bundle(tmp_path, "cpu_profile", "type: stack_counts\nstacks: counts_lost")
    done = bpfdepot(home, "run", str(b), "--duration", "1")
    assert done.returncode == 2, done.stderr
    assert ("channel 'counts' of 'cpu_profile': stacks: counts_lost is not a "
            "BPF_MAP_TYPE_STACK_TRACE map of the object") in done.stderr
    assert "its stack-trace maps: stacks" in done.stderr
    assert link_progs_named("do_sample") == 0


@pytest.fixture(autouse=True)
def _need_gcc() -> None:
    if not shutil.which("gcc"):
        pytest.skip("the stack tests compile their C subjects with gcc")


def test_run_writes_a_flame_graph_of_the_burn_stack(home: Path, tmp_path: Path) -> None:
    """`run --flamegraph --folded --speedscope`: the pictures are of the same records, and most
    of burn's samples sit on main;burn_mid;burn_leaf (by name, in the folded file)."""
    b = bundle(tmp_path, "cpu_profile", "type: stack_counts\nunit: samples\ninterval: 1s")
    svg, folded, speedscope = tmp_path / "cpu.svg", tmp_path / "cpu.folded", tmp_path / "cpu.json"
    pid, done = run_burn(home, tmp_path, b, extra=["--flamegraph", str(svg), "--folded", str(folded),
                                                   "--speedscope", str(speedscope)])
    assert done.rc == 0, done.stderr
    burn = [line.rsplit(" ", 1) for line in folded.read_text().splitlines()
            if line.startswith("burn;")]
    total = sum(int(n) for _, n in burn)
    on_leaf = sum(int(n) for stack, n in burn if stack.endswith("main;burn_mid;burn_leaf"))
    assert total > 0 and on_leaf >= 0.8 * total, burn
    assert "burn_leaf" in svg.read_text() and svg.read_text().lstrip().startswith("<?xml")
    profile = json.loads(speedscope.read_text())
    assert profile["profiles"][0]["type"] == "sampled"
    assert "burn_leaf" in {f["name"] for f in profile["shared"]["frames"]}


# --- under the process filter (bpfdepot run --unit) ---------------------------------------------

# wake(n): a thread of this process, named bdwake (its comm, set by prctl(PR_SET_NAME)), blocks
# in read() on a pipe; the main thread wakes it n times, 50 ms apart, with a write: n wakeups
# whose waker is this process (its stack: pipe_write) and whose target is bdwake. (The worker's
# "done" also wakes the test itself, a python3 blocked reading it: another wakeup.)
WAKE = """
import ctypes, threading

def _read(r, n):
    ctypes.CDLL(None).prctl(15, b"bdwake", 0, 0, 0)
    for _ in range(n):
        os.read(r, 1)

def wake(n):
    r, w = os.pipe()
    reader = threading.Thread(target=_read, args=(r, n))
    reader.start()
    for _ in range(n):
        time.sleep(0.05)
        os.write(w, b"x")
    reader.join()
    os.close(r)
    os.close(w)
"""


def _by_pid(events: list[dict], pids: tuple[int, ...]) -> dict[int, list[dict]]:
    return {pid: [e for e in events if e["pid"] == pid] for pid in pids}


def _accounted(done, program: str) -> None:
    """Every map entry read reached a record (entries whose stacks have the same names merge),
    and what was lost is a stack-map collision shown as such, never a dropped entry."""
    got, lost = received(done, f"{program}/counts")
    assert got >= len(done.events) > 0
    shown = sum(LOST_FRAME in e["kernel"] + e["user"] for e in done.events)
    assert (lost > 0) == (shown > 0) and lost >= shown, (lost, shown)


def _filtered(home: Path, tmp: Path, tree: dict[str, Path], program: str, channel: str,
              orders: tuple[tuple[str, int], ...], ops: str = "", extra: tuple[str, ...] = ()):
    """Workers in the unit, its child and the other service each run one order while
    ``program`` runs under --unit; (the workers, the finished run)."""
    with workers("/dev/null", 3, ops=ops) as made:
        for worker, where in zip(made, ("unit", "child", "other")):
            worker.move(tree[where])
        run = Running(home, str(bundle(tmp, program, channel)), tmp / "out.jsonl",
                      extra=["--unit", tree["unit"].name, *extra])
        try:
            for worker, (op, n) in zip(made, orders):
                worker.do(op, n)
            time.sleep(0.5)
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    return made, done


def test_cpu_profile_under_a_unit_filter_samples_the_units_processes_only(
        home: Path, tmp_path: Path, tree: dict[str, Path]) -> None:
    """The interrupted task decides: busy workers in the unit and its child are sampled (label
    1); one as busy in the other service, and the idle task, are not."""
    (unit, child, _other), done = _filtered(
        home, tmp_path, tree, "cpu_profile", "type: stack_counts\nunit: samples\ninterval: 1s",
        (("burn", 10), ("burn", 10), ("burn", 10)), ops=BURN)
    assert {e["pid"] for e in done.events} == {unit.pid, child.pid}
    assert {e["label"] for e in done.events} == {1}
    for pid, mine in _by_pid(done.events, (unit.pid, child.pid)).items():
        # 99 Hz for 1 s with a CPU to itself is ~99; the machine is shared, so a floor
        assert sum(e["value"] for e in mine) >= 10, (pid, mine)
        assert all(e["comm"] == "python3" and e["stack"].startswith("python3;") for e in mine)
    _accounted(done, "cpu_profile")


def test_offcpu_under_a_unit_filter_counts_the_units_sleeps_only(
        home: Path, tmp_path: Path, tree: dict[str, Path]) -> None:
    """The task going off CPU decides: the unit's and the child's 20 sleeps of 2 ms are counted
    on a nanosleep stack (label 1); the other service's 40 are not."""
    (unit, child, _other), done = _filtered(
        home, tmp_path, tree, "offcpu", "type: stack_counts\nunit: ns\ninterval: 1s",
        (("sleep", 20), ("sleep", 20), ("sleep", 40)))
    assert {e["pid"] for e in done.events} == {unit.pid, child.pid}
    assert {e["label"] for e in done.events} == {1}
    for pid, mine in _by_pid(done.events, (unit.pid, child.pid)).items():
        asleep = sum(e["value"] for e in mine
                     if {"do_nanosleep", "hrtimer_nanosleep"} & names(e["kernel"]))
        # 20 sleeps of 2 ms: time.sleep sleeps to a deadline taken just before the call (a
        # little less than 2 ms off CPU each) and wakes late by timer slack and scheduling
        assert 20 * 1_500_000 <= asleep <= 20 * 2_000_000 + 1_000_000_000, (pid, mine)
    _accounted(done, "offcpu")


def test_wakeuptime_under_a_unit_filter_charges_the_units_wakers_only(
        home: Path, tmp_path: Path, tree: dict[str, Path]) -> None:
    """The waker decides (its stacks are the ones recorded): the unit's and the child's 5
    pipe wakeups, each ending a 50 ms block, are charged to them (label 1); the other service's
    are not counted at all."""
    (unit, child, other), done = _filtered(
        home, tmp_path, tree, "wakeuptime", "type: stack_counts\nunit: ns\ninterval: 1s",
        (("wake", 5), ("wake", 5), ("wake", 5)), ops=WAKE, extra=("--set", "min_block_us=20000"))
    assert {e["label"] for e in done.events} == {1}
    assert other.pid not in {e["pid"] for e in done.events}
    for pid, mine in _by_pid(done.events, (unit.pid, child.pid)).items():
        woke = [e for e in mine if e["target"] == "bdwake"]
        total_ms = sum(e["value"] for e in woke) / 1e6
        assert 5 * 50 * 0.8 <= total_ms <= 5 * 50 * 1.2, (pid, mine)
        assert all(any(n.endswith("pipe_write") for n in names(e["kernel"])) for e in woke), woke
    _accounted(done, "wakeuptime")
