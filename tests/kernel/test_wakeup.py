"""Batched wakeups (bpfdepot.h bpfdepot_submit, loader/outputs/ring_buffer.py `latency:`).

A program that submits with bpfdepot_submit wakes the reader only when an eighth of its ring
waits or its last wakeup is `latency` old; the reader reads on a timer while events come. What
must hold with that on: the loader really set the watermark and deadline in the loaded
program; every event of a flood arrives, in order, nothing lost; on overflow what is received
plus what the program counted lost is exactly what was sent; and a lone event after a quiet
spell arrives by itself, with no later event or stop to push it out. `latency: 0` keeps the
kernel's wake-per-event policy and loses nothing either."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.kernel.conftest import ROOT, Running, cli_env, wait_for
from tests.kernel.monitor import received, workers

FLOOD = ROOT / "bench" / "flood"


def _flood_copy(tmp: Path, *, ring: str | None = None, latency: str | None = None) -> Path:
    """bench/flood in ``tmp`` with another ring size (bytes, a C expression) or `latency:`."""
    bundle = tmp / "flood"
    shutil.copytree(FLOOD, bundle)
    if ring is not None:
        src = bundle / "flood.bpf.c"
        src.write_text(src.read_text().replace("64 * 1024 * 1024", ring))
    if latency is not None:
        manifest = bundle / "manifest.yaml"
        manifest.write_text(manifest.read_text().replace(
            "      type: ring_buffer\n", f"      type: ring_buffer\n      latency: {latency}\n"))
    return bundle


def _bpftool(*args: str):
    return json.loads(subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True,
                                     check=True).stdout)


def _rodata(prog: str, section: str = ".rodata") -> bytes:
    """The bytes of the .rodata (or .bss) map of the loaded program ``prog``."""
    [loaded] = [p for p in _bpftool("prog", "show") if p.get("name") == prog]
    [found] = [m for m in _bpftool("map", "show") if m["id"] in loaded.get("map_ids", ())
               and m.get("name", "").endswith(section)]
    dump = _bpftool("map", "dump", "id", str(found["id"]))
    entry = dump[0]
    return bytes(int(b, 16) for b in entry["value"]) if "value" in entry else b""


def test_a_flood_arrives_whole_and_in_order_with_the_wakeup_knobs_set(home: Path, tmp_path: Path) -> None:
    calls = 200_000
    out = tmp_path / "events.jsonl"
    with workers("/dev/null", 1) as (w,):
        run = Running(home, str(FLOOD), out, extra=["--set", f"target_tgid={w.pid}"])
        try:
            rodata = _rodata("flood")
            # target_tgid (u32, padded), then flood_events_wakeup_bytes and _wakeup_ns: an
            # eighth of the 64 MiB ring and the default latency of 5 ms
            assert (64 << 20) // 8 in [int.from_bytes(rodata[i:i + 8], "little")
                                       for i in range(0, len(rodata) - 7, 8)]
            assert 5_000_000 in [int.from_bytes(rodata[i:i + 8], "little")
                                 for i in range(0, len(rodata) - 7, 8)]
            w.do("getppid", calls)
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    assert received(done, "flood_events") == (calls, 0)
    seqs = [e["seq"] for e in done.events]
    assert seqs == list(range(seqs[0], seqs[0] + calls))  # every one, once, in order
    assert {e["pid"] for e in done.events} == {w.pid}


def test_on_overflow_received_plus_lost_is_exactly_what_was_sent(home: Path, tmp_path: Path) -> None:
    calls = 300_000
    bundle = _flood_copy(tmp_path, ring="16 * 1024")  # ~220 events fit
    out = tmp_path / "events.jsonl"
    with workers("/dev/null", 1) as (w,):
        run = Running(home, str(bundle), out, extra=["--set", f"target_tgid={w.pid}"])
        try:
            # the reader stopped while the flood runs: the ring fills and the program counts the
            # rest lost, whatever the machine's speed; then it reads what the ring holds
            os.kill(run.proc.pid, signal.SIGSTOP)
            try:
                w.do("getppid", calls)
            finally:
                os.kill(run.proc.pid, signal.SIGCONT)
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    got, lost = received(done, "flood_events")
    assert got + lost == calls and lost > calls // 2 and got == len(done.events)
    seqs = [e["seq"] for e in done.events]
    assert seqs == sorted(set(seqs))  # in order, none twice


def test_a_lone_event_after_a_quiet_spell_arrives_by_itself(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    with workers("/dev/null", 1) as (w,):
        run = Running(home, str(FLOOD), out, extra=["--set", f"target_tgid={w.pid}"])
        try:
            w.do("getppid", 1000)  # busy: the reader reads on its timer, then goes quiet
            wait_for(out, lambda found: len(found) == 1000, "the first burst")
            time.sleep(0.5)  # a quiet spell, far longer than the 5 ms latency
            before = time.monotonic_ns()  # bpf_ktime_get_ns's clock
            w.do("getppid", 1)
            # the lone event woke the reader itself: flood_events_woken_ns (.bss: seq, then it)
            bss = _rodata("flood", ".bss")
            woken = [int.from_bytes(bss[i:i + 8], "little") for i in range(0, len(bss) - 7, 8)]
            assert any(before <= t <= time.monotonic_ns() for t in woken), woken
            # nothing else is sent and the run is not stopped: the event must come by itself
            found = wait_for(out, lambda found: len(found) == 1001, "the lone event", timeout=5)
            assert found[-1]["seq"] == found[-2]["seq"] + 1
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    assert received(done, "flood_events") == (1001, 0)


def test_latency_zero_wakes_per_event_and_loses_nothing(home: Path, tmp_path: Path) -> None:
    bundle = _flood_copy(tmp_path, latency="0")
    out = tmp_path / "events.jsonl"
    with workers("/dev/null", 1) as (w,):
        run = Running(home, str(bundle), out, extra=["--set", f"target_tgid={w.pid}"])
        try:
            rodata = _rodata("flood")
            # target_tgid, then the two wakeup knobs left at 0: the kernel's own policy
            assert len(rodata) == 24 and rodata[8:24] == bytes(16)
            w.do("getppid", 5000)
            time.sleep(0.2)
            w.do("getppid", 1)
            wait_for(out, lambda found: len(found) == 5001, "every event")
        finally:
            done = run.stop()
    assert received(done, "flood_events") == (5001, 0)


def test_a_bad_latency_is_refused_naming_the_channel(home: Path, tmp_path: Path) -> None:
    bundle = _flood_copy(tmp_path, latency="5 minutes")
    done = subprocess.run([sys.executable, "-m", "builder.cli", "run", str(bundle), "-d", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env=cli_env(home))
    assert done.returncode == 2, done.stderr
    assert re.search(r"manifest.yaml:\d+.*'latency' in .*flood_events.*must be 0 or a duration",
                     done.stderr), done.stderr


PERF = ROOT / "tests" / "kernel" / "bundles" / "perf_lost"  # libbpf style: bpf_perf_event_output


def _perf_copy(tmp: Path, pages: int) -> Path:
    bundle = tmp / "perf"
    shutil.copytree(PERF, bundle)
    manifest = bundle / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("pages: 1", f"pages: {pages}\n      latency: 5ms"))
    return bundle


def test_a_perf_buffer_with_a_wakeup_watermark_delivers_all_and_counts_its_losses(
        home: Path, tmp_path: Path) -> None:
    """`latency:` on a perf buffer opens its rings with a wakeup watermark (an eighth of each);
    a burst that fits arrives whole and in order, a lone sample below the watermark arrives on
    the reader's timer, and a burst that overflows is received plus lost, exactly."""
    out = tmp_path / "events.jsonl"
    with workers("/dev/null", 1) as (w,):
        run = Running(home, str(_perf_copy(tmp_path, 256)), out,
                      extra=["--set", f"target_tgid={w.pid}"])
        try:
            w.do("getppid", 20_000)
            wait_for(out, lambda found: len(found) == 20_000, "the burst")
            time.sleep(0.3)
            w.do("getppid", 1)  # 32 bytes: far below the watermark, so no wakeup
            wait_for(out, lambda found: len(found) == 20_001, "the lone sample", timeout=5)
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    assert received(done, "perf_lost_events") == (20_001, 0)
    seqs = [e["seq"] for e in done.events]
    assert seqs == list(range(seqs[0], seqs[0] + 20_001))

    out = tmp_path / "overflow.jsonl"
    shutil.rmtree(tmp_path / "perf")
    with workers("/dev/null", 1) as (w,):
        run = Running(home, str(_perf_copy(tmp_path, 1)), out,
                      extra=["--set", f"target_tgid={w.pid}"])
        try:
            w.do("getppid", 200_000)
        finally:
            done = run.stop()
    got, lost = received(done, "perf_lost_events")
    assert got + lost == 200_000 and lost > 0 and got == len(done.events)
