"""perf_buffer channels in the running kernel: execsnoop's variable-length argv comes back whole,
a 1-page perf ring overflowed by a burst counts every sample it lost, and the manifest's channel
type and `event:` are checked against the object at build time."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

from tests.kernel.conftest import ROOT, Running, bpfdepot, prog_names

ARGSIZE = 128          # execsnoop.h: bytes read per argument, NUL included
TOTAL_MAX_ARGS = 60    # execsnoop.h: arguments read per exec
BURST = 100_000        # getppid() calls into a 1-page perf ring


def _summary(stderr: str, channel: str) -> tuple[int, int]:
    row = re.search(rf"{re.escape(channel)}\s+(\d+)\s+(\d+)", stderr)
    assert row, stderr
    return int(row.group(1)), int(row.group(2))


def _own_comm() -> str:
    return Path("/proc/self/comm").read_text().strip()


def test_execsnoop_gives_each_exec_of_this_process_with_its_argv(home: Path, tmp_path: Path) -> None:
    marker = f"bpfdepot-marker-{secrets.token_hex(6)}"
    long_arg = "y" * 300
    run = Running(home, "bpf/execsnoop", tmp_path / "events.jsonl",
                  extra=["--set", f"targ_ppid={os.getpid()}"])
    echo = subprocess.run(["/bin/echo", marker, "second-arg"], stdout=subprocess.DEVNULL, check=True)
    many = subprocess.Popen(["/bin/true", long_arg, *(f"z{i}" for i in range(80))])
    many.wait()
    # a grandchild's exec has another parent: the knob keeps it out
    subprocess.run(["/bin/sh", "-c", "/bin/echo grandchild >/dev/null; exit 0"], check=True)
    done = run.stop()
    assert done.rc == 0, done.stderr

    mine = {tuple(e["args"][:1]): e for e in done.events}
    assert len(done.events) == 3, done.events
    first = next(e for e in done.events if marker in e["args"])
    assert first["args"] == ["/bin/echo", marker, "second-arg"]
    assert first["args_count"] == 3 and first["args_size"] == len("/bin/echo") + len(marker) + 13
    assert first["ppid"] == os.getpid() and first["pid"] != os.getpid()
    assert first["comm"] == _own_comm()  # before the exec the child still has our name
    assert first["uid"] == os.getuid()
    assert first["label"] == 0  # no process filter asked
    # variable length: each argument cut at ARGSIZE - 1 bytes, at most TOTAL_MAX_ARGS of them
    second = mine[("/bin/true",)]
    assert second["pid"] == many.pid and second["ppid"] == os.getpid()
    assert second["args"] == ["/bin/true", "y" * (ARGSIZE - 1),
                              *(f"z{i}" for i in range(TOTAL_MAX_ARGS - 2))]
    assert second["args_count"] == TOTAL_MAX_ARGS
    shell = mine[("/bin/sh",)]
    assert shell["args"] == ["/bin/sh", "-c", "/bin/echo grandchild >/dev/null; exit 0"]
    assert not any("grandchild" == e["args"][-1] for e in done.events)
    assert echo.returncode == 0

    assert _summary(done.stderr, "execsnoop/events") == (3, 0)
    assert "shorter than the event struct" not in done.stderr
    assert "execsnoop" not in " ".join(prog_names())  # detached and unloaded


def test_a_full_perf_ring_counts_what_it_lost(home: Path, tmp_path: Path) -> None:
    """A burst into a 1-page ring overflows it; received + lost is exactly what was sent."""
    out = tmp_path / "events.jsonl"
    run = Running(home, "tests/kernel/bundles/perf_lost", out,
                  extra=["--set", f"target_tgid={os.getpid()}"])
    # The burst and the loader on one CPU: the loader drains only when the scheduler preempts
    # the burst, so the 1-page ring overflows every time. On two CPUs the loader kept up with
    # the burst in about one run in five, and the test had nothing to check.
    mine, cpu = os.sched_getaffinity(0), min(os.sched_getaffinity(0))
    for task in Path(f"/proc/{run.proc.pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})
    os.sched_setaffinity(0, {cpu})
    try:
        for _ in range(BURST):
            os.getppid()
    finally:
        os.sched_setaffinity(0, mine)
    done = run.stop()
    assert done.rc == 0, done.stderr

    received, lost = _summary(done.stderr, "perf_lost/perf_lost_events")
    assert received + lost == BURST, done.stderr
    assert lost > 0, "a 1-page ring kept up with the burst: nothing was tested"
    assert len(done.events) == received
    seqs = [e["seq"] for e in done.events]
    assert len(set(seqs)) == received and all(0 <= s < BURST for s in seqs)
    assert {e["pid"] for e in done.events} == {os.getpid()}
    # the anchored stack struct decodes by name, every field where the program put it
    assert {(e["arg0"], e["arg1"], e["arg2"]) for e in done.events} == {(1, 2, 3)}


def _bundle_copy(tmp_path: Path, source: str, old: str, new: str) -> Path:
    folder = tmp_path / Path(source).name
    shutil.copytree(ROOT / source, folder)
    manifest = folder / "manifest.yaml"
    text = manifest.read_text()
    assert old in text
    manifest.write_text(text.replace(old, new))
    return folder


def test_a_perf_buffer_channel_over_a_ring_buffer_map_is_a_build_error(home: Path,
                                                                       tmp_path: Path) -> None:
    folder = _bundle_copy(tmp_path, "bpf/runqlat", "type: ring_buffer", "type: perf_buffer")
    out = bpfdepot(home, "build", str(folder))
    assert out.returncode == 8, out.stderr
    assert ("channel 'runqlat_events' is a ringbuf map, but the manifest says perf_buffer "
            "(a perf_event_array map)") in out.stderr


def test_an_event_struct_the_source_lacks_is_a_build_error(home: Path, tmp_path: Path) -> None:
    folder = _bundle_copy(tmp_path, "bpf/execsnoop", "event: event", "event: exec_event")
    out = bpfdepot(home, "build", str(folder))
    assert out.returncode == 8, out.stderr
    assert ("channel 'events': the manifest says `event: exec_event`, but the source of "
            "'execsnoop' defines no struct exec_event") in out.stderr


def test_without_event_the_unanchored_struct_cannot_be_decoded(home: Path, tmp_path: Path) -> None:
    """The negative of anchoring: the same source without `event:` has no struct to decode."""
    folder = _bundle_copy(tmp_path, "bpf/execsnoop", "      event: event\n", "")
    out = bpfdepot(home, "build", str(folder))
    assert out.returncode != 0
    assert "channel 'events': the object does not say which struct it carries" in out.stderr
