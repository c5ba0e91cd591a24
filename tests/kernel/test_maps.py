"""Map snapshot and histogram channels in the running kernel: syscount (hash_map, reset, delta,
top) and runqlat_hist (histogram + Prometheus, checked by promtool); skb_drops is in
test_skb_drops.py. Each test triggers its events itself and filters on its own pid."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.kernel.conftest import ROOT, Running, prog_names
from tests.kernel.conftest import records as _records, wait_for as _wait

GETPPID = 110  # x86_64 <asm/unistd_64.h> __NR_getppid
N = 1000






def _getppid_records(out: Path) -> list[dict]:
    return [r for r in _records(out) if r["tgid"] == os.getpid() and r["nr"] == GETPPID]


def _summary(stderr: str, channel: str) -> tuple[int, int]:
    line = next(x for x in stderr.splitlines() if channel in x)
    received, lost = (int(x) for x in line.split()[1:3])
    return received, lost


def test_syscount_reset_gives_each_interval_its_own_count(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "counts.jsonl"
    run = Running(home, "bpf/syscount", out, extra=["--set", f"targ_tgid={os.getpid()}"])
    try:
        for batch in range(2):
            # A read just happened when new lines appear (this test's own syscalls, e.g. the
            # polling itself, give records every interval): the batch then lands, whole, in
            # the 1 s before the next read, which resets the map.
            seen = len(_records(out))
            _wait(out, lambda r, seen=seen: len(r) > seen, "a read")
            for _ in range(N):
                os.getppid()
            _wait(out, lambda r, b=batch: len(_getppid_records(out)) > b, "the getppid record")
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    mine = [r for r in done.events if r["nr"] == GETPPID]
    assert [r["count"] for r in mine] == [N, N]  # not 2N: the first read deleted the entry
    assert all(set(r) == {"tgid", "nr", "label", "count"} for r in done.events)  # nothing hidden
    assert {r["label"] for r in done.events} == {0}  # no filter asked
    assert {r["tgid"] for r in done.events} == {os.getpid()}  # targ_tgid: no other process
    received, lost = _summary(done.stderr, "syscount/counts")
    assert received == len(done.events) and lost == 0  # reset: every entry read once, a record each
    assert not {n for n in prog_names() if n.startswith("syscount")}


def test_delta_and_top_on_a_cumulative_map(home: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "syscount"
    shutil.copytree(ROOT / "bpf" / "syscount", bundle)
    manifest = bundle / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace(
        "      reset: true\n", "      delta: true\n      top: 1\n      sort: count\n"))
    out = tmp_path / "top.jsonl"
    run = Running(home, str(bundle), out, extra=["--set", f"targ_tgid={os.getpid()}"])
    try:
        for batch, calls in enumerate((5000, 3000)):
            seen = len(_records(out))
            _wait(out, lambda r, seen=seen: len(r) > seen, "a read")
            for _ in range(calls):
                os.getppid()
            _wait(out, lambda r, b=batch: len(_getppid_records(out)) > b, "the getppid record")
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    # top 1 by count: per read, only this process's busiest syscall; getppid when it was called
    assert [r["count"] for r in done.events if r["nr"] == GETPPID] == [5000, 3000]
    reads = _records(out)
    assert all(r["count"] > 0 for r in reads)  # delta: unchanged entries are left out
    assert all(r["nr"] != GETPPID or r["count"] in (5000, 3000) for r in reads)


class Sleeper(threading.Thread):
    """Sleeps 1 ms, SLEEPS times: each sleep ends in one wakeup of this thread."""

    SLEEPS = 200

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.tid = 0

    def run(self) -> None:
        self.tid = threading.get_native_id()
        for _ in range(self.SLEEPS):
            time.sleep(0.001)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runqlat_histogram_and_its_prometheus_exposition(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "hists.jsonl"
    port = _free_port()
    run = Running(home, "bpf/runqlat_hist", out, extra=[
        "--set", f"targ_tgid={os.getpid()}", "--metrics", f"127.0.0.1:{port}"])
    try:
        sleeper = Sleeper()
        sleeper.start()
        sleeper.join(10)
        assert not sleeper.is_alive()
        # a read after the thread ended has its final histogram (it is never woken again)
        seen = len(_records(out))
        _wait(out, lambda r: any(x.get("pid") == sleeper.tid for x in r[seen:]), "the thread's record")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    mine = [r for r in done.events if r.get("pid") == sleeper.tid]
    last = mine[-1]
    assert set(last) == {"pid", "unit", "buckets", "count", "p50", "p90", "p99"}
    assert last["unit"] == "us"
    assert sum(b["count"] for b in last["buckets"]) == last["count"]
    assert last["buckets"][-1]["count"] > 0  # listed through the last non-empty slot only
    assert [b["le"] for b in last["buckets"]] == [2 ** (i + 1) - 1 for i in range(len(last["buckets"]))]
    # Each sleep ends in one wakeup, plus the thread's start (sched_wakeup_new), plus rarely a
    # wait for the GIL (the main thread, blocked in join, does not hold it): a few more at most.
    # A few fewer happen too: a sleep whose timer fires before the thread has switched out is
    # woken while still on its CPU (ttwu_runnable fires sched_wakeup, no switch-in follows), and
    # its wakeup merges with the next one; a CI run counted 197 of 200.
    assert Sleeper.SLEEPS - 10 <= last["count"] <= Sleeper.SLEEPS + 5, last
    assert last["p50"] <= last["p90"] <= last["p99"]

    # Prometheus: the same histogram, cumulative, and the exposition passes promtool
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: apt-get install -y prometheus (scripts/debian-test-packages.txt)")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    lines = text.decode().splitlines()
    name = "bpfdepot_runqlat_hist_hists"
    pid = f'pid="{sleeper.tid}"'
    count = next(x for x in lines if x.startswith(f"{name}_count{{{pid}}}"))
    assert int(count.split()[-1]) == last["count"]
    running = 0
    for b in last["buckets"]:
        running += b["count"]
        le = "+Inf" if b["le"] == "+Inf" else str(b["le"])
        assert f'{name}_bucket{{{pid},le="{le}"}} {running}' in lines
    assert not {n for n in prog_names() if n.startswith("runqlat_hist")}

