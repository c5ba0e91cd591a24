"""user_so processors in the kernel path: real events, real worker processes, exact records.

The bundle (tests/kernel/bundles/procs) emits one event per getppid() of a child of a "kids"
process this test starts; its pid is the program's targ_ppid knob, so no other process's
events get in. The echo processor writes {"seq","pid","n","worker"} and drops seq % 10 == 5;
crashy.c segfaults on its 100th call, hang.c never returns from its 50th, garbage.c writes
garbage into its host's result pipe on its 100th. shard.bpf.c is procs.bpf.c for floods: batched
wakeups, and a ring that holds a whole test's events.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import ROOT, bpfdepot, cli_env, prog_names

BUNDLE = ROOT / "tests" / "kernel" / "bundles" / "procs"
KIDS = """
import os, sys
n, m = int(sys.argv[1]), int(sys.argv[2])
sys.stdin.readline()
for i in range(n):
    if os.fork() == 0:
        for _ in range(m):
            os.getppid()
        os._exit(i)
    os.wait()          # one child at a time: events arrive in child order
print("done", flush=True)
sys.stdin.readline()
"""


KIDS_AT_ONCE = """
import os, sys
n, m = int(sys.argv[1]), int(sys.argv[2])
sys.stdin.readline()
kids = []
for i in range(n):
    pid = os.fork()
    if pid == 0:
        for _ in range(m):
            os.getppid()
        os._exit(0)
    kids.append(pid)
for pid in kids:   # all of them at once: their events interleave in the ring
    os.waitpid(pid, 0)
print("done", flush=True)
sys.stdin.readline()
"""


class Kids:
    """A process whose ``n`` children call getppid() ``m`` times each, when told to: one after
    the other, or all at once (``together``)."""

    def __init__(self, n: int, m: int, *, together: bool = False) -> None:
        self.n, self.m = n, m
        script = KIDS_AT_ONCE if together else KIDS
        self.proc = subprocess.Popen([sys.executable, "-c", script, str(n), str(m)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "done\n"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Run:
    """`bpfdepot run MANIFEST --output FILE --set targ_ppid=KIDS` until stopped."""

    def __init__(self, home: Path, manifest: Path, out: Path, kids: Kids, *extra: str) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "builder.cli", "run", str(manifest), "--output", str(out),
             "--set", f"targ_ppid={kids.proc.pid}", *extra],
            cwd=ROOT, env=cli_env(home), stderr=subprocess.PIPE, text=True)
        self.stderr = ""
        while "attached" not in self.stderr:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"bpfdepot run did not attach:\n{self.stderr}")
            self.stderr += line

    def stop(self, settle: float = 0.5) -> tuple[str, list[dict]]:
        time.sleep(settle)
        self.proc.send_signal(signal.SIGINT)
        _, rest = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, self.stderr + rest
        return self.stderr + rest, [json.loads(line) for line in self.out.read_text().splitlines()]


def summary(stderr: str, channel: str, processor: str) -> dict[str, int]:
    m = re.search(rf"{channel} → {processor}" + r"\s+(\d+)" * 7, stderr)
    assert m, stderr
    return dict(zip(("sent", "kept", "dropped", "errors", "lost", "restarts", "violations"),
                    map(int, m.groups())))


def received(stderr: str) -> tuple[int, int]:
    m = re.search(r"procs/procs_events\s+(\d+)\s+(\d+)", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2))


@pytest.fixture
def kids_factory():
    made: list[Kids] = []

    def make(n: int, m: int, *, together: bool = False) -> Kids:
        made.append(Kids(n, m, together=together))
        return made[-1]

    yield make
    for kids in made:
        kids.close()


def test_hash_keeps_each_key_on_one_worker_in_order(home: Path, tmp_path: Path, kids_factory) -> None:
    kids = kids_factory(6, 150)
    run = Run(home, BUNDLE / "echo.yaml", tmp_path / "out.jsonl", kids)
    kids.go()
    stderr, records = run.stop()

    assert received(stderr) == (900, 0)
    assert summary(stderr, "procs_events", "echo") == {
        "sent": 900, "kept": 810, "dropped": 90, "errors": 0, "lost": 0, "restarts": 0,
        "violations": 0}
    assert sorted(r["seq"] for r in records) == [s for s in range(900) if s % 10 != 5]
    by_pid: dict[int, list[dict]] = collections.defaultdict(list)
    for r in records:
        by_pid[r["pid"]].append(r)
    assert len(by_pid) == 6
    for pid, rs in by_pid.items():
        assert len({r["worker"] for r in rs}) == 1, f"pid {pid} met several workers"
        seqs = [r["seq"] for r in rs]
        assert seqs == sorted(seqs), f"pid {pid}'s records are out of order"
        assert len(rs) == 135
    assert len({r["worker"] for r in records}) >= 2  # 6 keys over 3 workers


def test_hash_sharding_keeps_per_key_order_under_load(home: Path, tmp_path: Path,
                                                      kids_factory) -> None:
    # 16 children flood at once (160,000 events on both cores, with the 4 workers and the
    # loader competing for them), sent with batched wakeups into a ring that holds them all:
    # the loader reads it on its timer and moves frames and records in batches
    kids = kids_factory(16, 10_000, together=True)
    run = Run(home, BUNDLE / "shard.yaml", tmp_path / "out.jsonl", kids)
    kids.go()
    stderr, records = run.stop(settle=1.0)

    total = 16 * 10_000
    m = re.search(r"shard/procs_events\s+(\d+)\s+(\d+)", stderr)
    assert m and (int(m.group(1)), int(m.group(2))) == (total, 0), stderr
    dropped = total // 10  # echo drops seq % 10 == 5
    assert summary(stderr, "procs_events", "echo") == {
        "sent": total, "kept": total - dropped, "dropped": dropped, "errors": 0, "lost": 0,
        "restarts": 0, "violations": 0}
    assert len(records) == total - dropped
    assert sorted(r["seq"] for r in records) == [s for s in range(total) if s % 10 != 5]
    by_pid: dict[int, list[int]] = collections.defaultdict(list)
    by_worker: dict[int, list[int]] = collections.defaultdict(list)
    workers_of: dict[int, set[int]] = collections.defaultdict(set)
    for r in records:  # the file's order: each worker's records as it wrote them
        by_pid[r["pid"]].append(r["seq"])
        by_worker[r["worker"]].append(r["n"])
        workers_of[r["pid"]].add(r["worker"])
    assert len(by_pid) == 16
    for pid, seqs in by_pid.items():
        assert len(workers_of[pid]) == 1, f"pid {pid} met several workers"
        assert all(a < b for a, b in zip(seqs, seqs[1:])), f"pid {pid}'s records are out of order"
    for worker, calls in by_worker.items():  # no worker's records were reordered or repeated
        assert all(a < b for a, b in zip(calls, calls[1:])), f"worker {worker} out of order"
    assert len(by_worker) >= 3  # 16 keys over 4 workers


def test_processor_segfault_on_its_100th_event(home: Path, tmp_path: Path, kids_factory) -> None:
    kids = kids_factory(1, 150)
    run = Run(home, BUNDLE / "crashy.yaml", tmp_path / "out.jsonl", kids)
    kids.go()
    stderr, records = run.stop(settle=1.0)

    assert re.search(r"processor 'crashy' worker 0 crashed \(SIGSEGV\) on an event of channel "
                     r"'procs_events' \(process\); 1 event\(s\) lost, \d+ resent", stderr), stderr
    counts = summary(stderr, "procs_events", "crashy")
    assert counts == {"sent": 150, "kept": 134, "dropped": 15, "errors": 0, "lost": 1, "restarts": 1,
                      "violations": 0}
    # the 100th event (seq 99) died with the first worker; the next 50 went to its successor
    assert sorted(r["seq"] for r in records) == [s for s in range(150) if s % 10 != 5 and s != 99]
    first, second = {r["worker"] for r in records if r["seq"] < 99}, {r["worker"] for r in records
                                                                        if r["seq"] > 99}
    assert len(first) == len(second) == 1 and first != second
    assert [r["n"] for r in records if r["seq"] > 99][0] == 1  # a fresh process


def test_processor_stuck_in_a_loop_is_restarted(home: Path, tmp_path: Path, kids_factory) -> None:
    kids = kids_factory(1, 80)
    run = Run(home, BUNDLE / "hang.yaml", tmp_path / "out.jsonl", kids, "--processor-timeout", "1")
    kids.go()
    stderr, records = run.stop(settle=3.0)

    assert "processor 'hang' worker 0 hung in user code for more than 1 s on an event of channel " \
           "'procs_events' (process); 1 event(s) lost, 30 resent" in stderr, stderr
    counts = summary(stderr, "procs_events", "hang")
    assert counts["lost"] == 1 and counts["restarts"] == 1
    assert counts["sent"] == 80 == counts["kept"] + counts["dropped"] + counts["lost"]
    # the records of the 49 events before the loop were handed over before the worker died
    assert sorted(r["seq"] for r in records) == [s for s in range(80) if s % 10 != 5 and s != 49]


@pytest.mark.parametrize("kids_shape", [(1, 150), (150, 1)], ids=["one-burst", "spread-out"])
def test_processor_writing_garbage_into_its_result_pipe(home: Path, tmp_path: Path, kids_factory,
                                                       kids_shape: tuple[int, int]) -> None:
    import urllib.request

    kids = kids_factory(*kids_shape)  # 150 events at once, or one per child, apart
    run = Run(home, BUNDLE / "garbage.yaml", tmp_path / "out.jsonl", kids, "--metrics", "127.0.0.1:0")
    url = re.search(r"metrics on (http://\S+)", run.stderr).group(1)
    kids.go()
    time.sleep(1.0)  # the restart backs off 0.1 s
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    stderr, records = run.stop()

    # "not " is the bogus marker; the frame it stands in for is the first the host had not
    # flushed when its library wrote, so the byte offset depends on how the events were batched
    messages = re.findall(r"processor 'garbage' worker 0 wrote a corrupt result frame \(bad marker "
                          r"0x20746f6e at byte \d+\) on an event of channel 'procs_events' "
                          r"\(process\); 1 event\(s\) lost, \d+ resent; restarting in 0\.1 s", stderr)
    assert len(messages) == 1 and stderr.count("corrupt") == 1, stderr
    counts = summary(stderr, "procs_events", "garbage")
    assert (counts["sent"], counts["errors"], counts["lost"], counts["restarts"],
            counts["violations"]) == (150, 0, 1, 1, 1)
    assert counts["kept"] + counts["dropped"] + counts["lost"] == 150
    assert 'bpfdepot_processor_violations_total{processor="garbage"} 1' in text
    assert 'bpfdepot_processor_restarts_total{processor="garbage"} 1' in text
    # each kept event's record reached the file once; of all 150 events exactly one is missing:
    # one the broken worker had answered by the 100th (a record of it, or a drop)
    seqs = [r["seq"] for r in records]
    assert len(seqs) == len(set(seqs)) == counts["kept"]
    keep = {s for s in range(150) if s % 10 != 5}
    assert set(seqs) <= keep
    missing = keep - set(seqs)
    assert len(missing) + (15 - counts["dropped"]) == 1
    # the events after the lost one went to a fresh worker, in order from its first call: its
    # records have n == seq - lost
    fresh = [r for r in records if r["worker"] == records[-1]["worker"]]
    lost = {r["seq"] - r["n"] for r in fresh}
    assert len(lost) == 1 and 0 <= min(lost) < 100 and records[-1]["seq"] == 149
    assert missing <= lost and all(r["seq"] < min(lost) for r in records if r not in fresh)


def test_one_processor_consumes_two_channels(home: Path, tmp_path: Path, kids_factory) -> None:
    kids = kids_factory(3, 10)
    run = Run(home, BUNDLE / "many.yaml", tmp_path / "out.jsonl", kids)
    kids.go()
    stderr, records = run.stop()

    events = [r for r in records if "seq" in r]
    exits = [r for r in records if "exited" in r]
    assert sorted(r["seq"] for r in events) == [s for s in range(30) if s % 10 != 5]
    pids = sorted({r["pid"] for r in events})
    assert sorted((r["exited"], r["code"], r["channel"]) for r in exits) == [
        (pid, i, "exits_events") for i, pid in enumerate(pids)]
    for r in exits:  # the same key (pid) meets the same worker on both channels
        assert {e["worker"] for e in events if e["pid"] == r["exited"]} == {r["worker"]}
    assert summary(stderr, "exits_events", "echo")["kept"] == 3
    assert len(re.findall(r"\[echo/\d\]", stderr)) == 0  # no worker complained


def test_metrics_count_what_the_run_reports(home: Path, tmp_path: Path, kids_factory) -> None:
    import urllib.request

    kids = kids_factory(2, 50)
    run = Run(home, BUNDLE / "echo.yaml", tmp_path / "out.jsonl", kids, "--metrics", "127.0.0.1:0")
    url = re.search(r"metrics on (http://\S+)", run.stderr).group(1)
    kids.go()
    time.sleep(0.5)
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    stderr, records = run.stop()

    labels = 'program="procs",channel="procs_events"'
    assert f"bpfdepot_events_received_total{{{labels}}} 100" in text
    assert f"bpfdepot_events_lost_total{{{labels}}} 0" in text
    assert f'bpfdepot_processor_events_total{{{labels},processor="echo",outcome="keep"}} 90' in text
    assert f'bpfdepot_processor_events_total{{{labels},processor="echo",outcome="drop"}} 10' in text
    assert f'bpfdepot_records_delivered_total{{{labels},sink="file"}} 90' in text
    assert 'bpfdepot_processor_up{processor="echo",worker="2"} 1' in text
    assert 'bpfdepot_programs_attached{program="procs"} 1' in text
    assert len(records) == 90


def _bundle_copy(tmp: Path, manifest: str, extra: dict[str, str] | None = None) -> Path:
    folder = tmp / "bundle"
    shutil.copytree(BUNDLE, folder, ignore=shutil.ignore_patterns("*.yaml"))
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
    (folder / "manifest.yaml").write_text(textwrap.dedent(manifest))
    return folder


MANIFEST = """\
kind: ebpfprogram
name: procs
spec:
  programs:
    - {{name: procs, path: file://./procs.bpf.c, type: ebpf_object}}
    - {{name: user, path: "file://./{path}", type: user_so}}
{properties}
  channels:
    procs_events:
      type: ring_buffer
      events:
        - name: user
"""


def _so(folder: Path, source: str, name: str = "user.so") -> None:
    (folder / "user.c").write_text(textwrap.dedent(source))
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(folder / name), str(folder / "user.c")],
                   check=True)


def test_library_of_another_abi_is_refused_before_anything_loads(home: Path, tmp_path: Path) -> None:
    folder = _bundle_copy(tmp_path, MANIFEST.format(path="user.so", properties=""))
    _so(folder, """
        #include <stdint.h>
        __attribute__((visibility("default"))) const uint32_t bpfdepot_processor_abi = 99;
        uint32_t bpfdepot_abi_version(void) { return 99; }
        int bpfdepot_init(const char *f) { (void)f; return 0; }
        int process(const void *ev, void *res) { (void)ev; (void)res; return 0; }
        """)
    result = bpfdepot(home, "run", str(folder), "--duration", "1")
    assert result.returncode == 7, result.stderr
    assert "processor 'user'" in result.stderr and "ABI" in result.stderr
    assert "procs" not in prog_names()


def test_function_named_in_the_manifest_but_missing(home: Path, tmp_path: Path) -> None:
    folder = _bundle_copy(tmp_path, MANIFEST.format(path="echo.c", properties=(
        "  properties:\n    functions:\n      - {name: handle, type: default}")))
    result = bpfdepot(home, "run", str(folder), "--duration", "1")
    assert result.returncode in (7, 8), result.stderr
    assert "handle" in result.stderr and "user" in result.stderr
    assert "procs" not in prog_names()


def test_initfile_that_does_not_exist(home: Path, tmp_path: Path) -> None:
    folder = _bundle_copy(tmp_path, MANIFEST.format(path="echo.c", properties=(
        "  properties:\n    initfile: ./missing.ini")))
    result = bpfdepot(home, "run", str(folder), "--duration", "1")
    assert result.returncode == 2, result.stderr
    assert "initfile: file not found" in result.stderr and "missing.ini" in result.stderr


def test_init_that_fails_stops_the_run_with_its_words(home: Path, tmp_path: Path) -> None:
    folder = _bundle_copy(tmp_path, MANIFEST.format(path="user.so", properties=(
        "  properties:\n    initfile: ./user.ini")), {"user.ini": "colour = blue\n"})
    _so(folder, """
        #include <stdint.h>
        #include <stdio.h>
        __attribute__((visibility("default"))) const uint32_t bpfdepot_processor_abi = 1;
        uint32_t bpfdepot_abi_version(void) { return 1; }
        int bpfdepot_init(const char *f) { fprintf(stderr, "%s: unknown key colour\\n", f); return -1; }
        int process(const void *ev, void *res) { (void)ev; (void)res; return 0; }
        """)
    result = bpfdepot(home, "run", str(folder), "--duration", "1")
    assert result.returncode == 7, result.stderr
    assert "processor 'user'" in result.stderr and "its init function failed" in result.stderr
    assert "user.ini: unknown key colour" in result.stderr
    assert "procs" not in prog_names()


def test_a_processor_runs_unprivileged_in_its_own_pid_and_mount_view(home: Path, tmp_path: Path,
                                                         kids_factory) -> None:
    """A library that tries to read a root-only file, a file in the host's /tmp and to signal
    any process gets EACCES, ENOENT and ESRCH, as the dedicated user with no capabilities, as
    PID 1 of a namespace of its own; its initfile still reaches it under its own name."""
    import errno
    import pwd

    folder = tmp_path / "bundle"
    shutil.copytree(BUNDLE, folder)
    secret = Path(f"/var/tmp/bpfdepot-secret-{os.getpid()}")
    secret.write_text("root only\n")
    secret.chmod(0o600)
    visible = tmp_path / "host-tmp-file"
    visible.write_text("in the host's /tmp\n")
    visible.chmod(0o644)
    (folder / "snoop.ini").write_text(f"{secret}\n{visible}\n")
    (folder / "snoop.ini").chmod(0o600)  # root's: handed over by the host before it drops
    user = os.environ.get("BPFDEPOT_PROCESSOR_USER") or next(
        n for n in ("bpfdepot-processor", "nobody") if _user_exists(n))
    kids = kids_factory(1, 3)
    try:
        run = Run(home, folder / "snoop.yaml", tmp_path / "out.jsonl", kids)
        kids.go()
        _, records = run.stop()
    finally:
        secret.unlink()
    assert len(records) == 3, records
    uid = pwd.getpwnam(user).pw_uid
    for r in records:
        # PID 1 of its own namespace: no parent in view, no process it could signal
        assert r == {"uid": uid, "euid": uid, "capeff": "0000000000000000",
                     "secret_errno": errno.EACCES, "host_tmp_errno": errno.ENOENT,
                     "pid": 1, "ppid": 0, "kill_errno": errno.ESRCH,
                     "initfile": "/tmp/snoop.ini"}, r


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_processor_hosts_die_with_a_killed_loader(home: Path, tmp_path: Path, kids_factory) -> None:
    """A library spinning in user code when its loader is killed (kill -9) is killed too: the
    host sets its parent-death signal again after dropping its privileges (the drop clears it)."""
    kids = kids_factory(1, 80)
    run = Run(home, BUNDLE / "hang.yaml", tmp_path / "out.jsonl", kids,
              "--processor-timeout", "600")
    kids.go()  # the 50th event never returns
    hosts = [int(p) for p in Path(f"/proc/{run.proc.pid}/task/{run.proc.pid}/children")
             .read_text().split()]
    assert hosts, "the run has no processor host"
    time.sleep(0.5)
    run.proc.kill()
    run.proc.wait()
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in hosts):
        assert time.monotonic() < deadline, f"processor hosts {hosts} outlived their loader"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
