"""bpftrace -f json messages → pipeline records, and the child's supervision, with a stand-in
bpftrace (a shell script) instead of the real one (tests/kernel/test_bpftrace.py runs that)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from loader.errors import LoadError
from loader.programs.bpftrace import BpftraceChild, Routed, route

# Messages as bpftrace 0.17 printed them here for the getppid script (CATALOG §4f).
ATTACHED = {"type": "attached_probes", "data": {"probes": 1}}
PRINTF = {"type": "printf", "data": '{"pid": 24019, "n": 1}\n'}
MAP = {"type": "map", "data": {"@calls": {"24019": 3}}}
HIST = {"type": "hist", "data": {"@h": [{"min": 16384, "max": 32767, "count": 3}]}}
STATS = {"type": "stats", "data": {"@s": {"count": 3, "average": 24019, "total": 72057}}}


def test_printf_json_lines_are_the_records_other_lines_are_kept_as_text() -> None:
    assert route(PRINTF) == Routed([{"pid": 24019, "n": 1}], [])
    assert route({"type": "printf", "data": "open 3\n[1, 2]\n\n"}).events == [
        {"text": "open 3"}, {"text": "[1, 2]"}]


def test_maps_hists_and_stats_become_one_record_per_entry() -> None:
    assert route(MAP).maps == [{"map": "@calls", "key": 24019, "value": 3}]
    assert route({"type": "map", "data": {"@total": 7}}).maps == [{"map": "@total", "value": 7}]
    assert route({"type": "map", "data": {"@by": {"bash": 2, "4, 5": 1}}}).maps == [
        {"map": "@by", "key": "bash", "value": 2}, {"map": "@by", "key": "4, 5", "value": 1}]
    assert route(HIST).maps == [{"map": "@h", "buckets": HIST["data"]["@h"]}]
    assert route({"type": "hist", "data": {"@h": {"7": HIST["data"]["@h"]}}}).maps == [
        {"map": "@h", "key": 7, "buckets": HIST["data"]["@h"]}]
    assert route(STATS).maps == [{"map": "@s", "count": 3, "average": 24019, "total": 72057}]
    assert route({"type": "stats", "data": {"@s": {"9": STATS["data"]["@s"]}}}).maps == [
        {"map": "@s", "key": 9, "count": 3, "average": 24019, "total": 72057}]


def test_lost_events_and_attached_probes_are_counts_other_messages_pass_through() -> None:
    assert route({"type": "lost_events", "data": {"events": 12}}) == Routed([], [], lost=12)
    assert route(ATTACHED) == Routed([], [], probes=1)
    assert route({"type": "time", "data": "12:00:00\n"}).events == [
        {"type": "time", "data": "12:00:00\n"}]


def stand_in(tmp_path: Path, body: str) -> str:
    """A fake bpftrace running ``body`` in sh. It starts with SIGINT at its default first, as
    bpftrace installs its own handler: a shell cannot trap a signal it inherited ignored (which
    it is when the test run itself was started in the background)."""
    script = tmp_path / "bpftrace.sh"
    script.write_text(body)
    path = tmp_path / "bpftrace"
    path.write_text(f"#!{sys.executable}\nimport os, signal, sys\n"
                    "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
                    f"os.execv('/bin/sh', ['/bin/sh', {str(script)!r}, *sys.argv[1:]])\n")
    path.chmod(0o755)
    return str(path)


class Sink:
    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def __call__(self, data: bytes, count: int) -> None:
        assert data.count(b"\n") == count
        self.lines += data.splitlines()


def run_child(tmp_path: Path, body: str) -> tuple[BpftraceChild, Sink, Sink, list[str]]:
    events, maps, log = Sink(), Sink(), []
    child = BpftraceChild("t", tmp_path / "x.bt", events, maps, log.append,
                          binary=stand_in(tmp_path, body))
    child.launch(timeout=10)
    return child, events, maps, log


def test_a_child_is_read_stopped_with_sigint_and_its_final_maps_kept(tmp_path: Path) -> None:
    body = """trap 'echo "{\\"type\\": \\"map\\", \\"data\\": {\\"@c\\": {\\"5\\": 3}}}"; exit 0' INT
echo "ERROR: couldn't set RLIMIT_MEMLOCK for bpftrace" >&2
echo "odd words" >&2
echo '{"type": "attached_probes", "data": {"probes": 2}}'
echo __BPFTRACE_NOTIFY_PROBES_ATTACHED >&2
printf '%s\\n' '{"type": "printf", "data": "{\\"n\\": 1}\\n"}'
echo '{"type": "lost_events", "data": {"events": 4}}'
while :; do sleep 0.05; done
"""
    child, events, maps, log = run_child(tmp_path, body)
    assert child.probes == 2
    deadline = time.monotonic() + 5
    while not events.lines and time.monotonic() < deadline:
        child.read(time.monotonic())
        time.sleep(0.02)
    child.final()
    child.close()
    # it exited by itself on SIGINT (printing its maps), not killed after the grace
    assert not any("was killed" in line for line in log)
    assert events.lines == [b'{"n":1}'] and maps.lines == [b'{"map":"@c","key":5,"value":3}']
    assert (child.stats().received, child.stats().lost) == (1, 4)
    assert child.maps_view().stats().received == 1
    assert log == ["bpfdepot: t (bpftrace): odd words"]  # the RLIMIT_MEMLOCK line is dropped


def test_a_child_that_ignores_sigint_is_killed_after_the_grace(tmp_path: Path) -> None:
    body = """trap '' INT
echo '{"type": "attached_probes", "data": {"probes": 1}}'
echo __BPFTRACE_NOTIFY_PROBES_ATTACHED >&2
while :; do sleep 0.05; done
"""
    child, _, _, log = run_child(tmp_path, body)
    pid = child.proc.pid
    started = time.monotonic()
    child.final()
    assert 0.9 < time.monotonic() - started < 2.5
    child.close()
    assert log == ["bpfdepot: t (bpftrace) did not exit within 1 s of SIGINT and was killed: the "
                   "maps it prints at exit are missing from this run"]
    deadline = time.monotonic() + 2  # its sleep, killed too, is reaped by init
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole group is gone


def test_a_child_that_fails_before_attaching_is_a_load_error_with_its_words(tmp_path: Path) -> None:
    body = 'echo "x.bt:3:1-9: ERROR: Unknown identifier: \'nope\'" >&2; exit 1\n'
    with pytest.raises(LoadError) as caught:
        run_child(tmp_path, body)
    assert caught.value.message == f"bpftrace program 't' ({tmp_path / 'x.bt'}) exited with status 1"
    assert "Unknown identifier: 'nope'" in caught.value.detail
    assert caught.value.exit_code == 5


def test_a_child_that_dies_mid_run_is_said_not_silently_lost(tmp_path: Path) -> None:
    body = """echo '{"type": "attached_probes", "data": {"probes": 1}}'
echo __BPFTRACE_NOTIFY_PROBES_ATTACHED >&2
sleep 0.2
echo "ERROR: something broke" >&2
exit 3
"""
    child, _, _, log = run_child(tmp_path, body)
    child.proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while len(log) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    child.final()
    child.close()
    # two threads read stdout (its end) and stderr: either line may come first
    assert sorted(log) == ["bpfdepot: t (bpftrace) ended before the run did: its probes are "
                           "gone (its last words are above)",
                           "bpfdepot: t (bpftrace): ERROR: something broke"]
