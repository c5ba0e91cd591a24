"""The in-kernel process filter in the running kernel: cgroup2 directories made here, processes
moved into them making known numbers of opens and getppid calls, and `bpfdepot run --unit /
--cgroup / --pid / --filter-file` letting exactly theirs through. The counts are checked at the
channel (the run's summary), not only in the output: what the filter drops never reaches user
space. Labels are ids until the label resolver names them: the unit asked first is `label: 1`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.kernel.conftest import ROOT, Finished, Running, bpfdepot, prog_names
from tests.kernel.monitor import received, said, workers

GETPPID = 110  # x86_64


def _opens(done: Finished, path: Path) -> dict[int, list[int]]:
    """pid → the labels of its opens of ``path``."""
    out: dict[int, list[int]] = {}
    for e in done.events:
        out.setdefault(e["pid"], []).append(e["label"])
    assert {e["filename"] for e in done.events} <= {str(path)}, done.events
    return out


def test_unit_filter_passes_the_unit_and_its_child_only(home: Path, tmp_path: Path,
                                                        tree: dict[str, Path]) -> None:
    target = tmp_path / "target"
    target.write_text("x")
    with workers(target, 3) as (a, b, c):
        a.move(tree["unit"])
        b.move(tree["child"])
        c.move(tree["other"])
        run = Running(home, "bpf/opensnoop", tmp_path / "events.jsonl",
                      extra=["--unit", tree["unit"].name])
        try:
            a.do("open", 5)
            b.do("open", 11)
            c.do("open", 13)
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    assert f"label 1 = unit {tree['unit'].name}: cgroup id {tree['unit'].stat().st_ino}" \
        in done.stderr
    assert _opens(done, target) == {a.pid: [1] * 5, b.pid: [1] * 11}
    # the other service's 13 never left the kernel: the channel received exactly 16
    assert received(done, "opensnoop/opensnoop_events") == (16, 0)
    assert not {"enter_openat", "exit_openat"} & prog_names()


def test_unit_filter_counts_getppid_per_process_in_a_map(home: Path, tmp_path: Path,
                                                         tree: dict[str, Path]) -> None:
    with workers(tmp_path, 3) as (a, b, c):
        a.move(tree["unit"])
        b.move(tree["child"])
        c.move(tree["other"])
        run = Running(home, "bpf/syscount", tmp_path / "counts.jsonl",
                      extra=["--unit", tree["unit"].name])
        try:
            a.do("getppid", 5)
            b.do("getppid", 11)
            c.do("getppid", 13)
            time.sleep(1.2)  # one more read of the map (interval 1 s)
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    calls: dict[int, int] = {}
    for r in done.events:
        if r["nr"] == GETPPID:
            calls[r["tgid"]] = calls.get(r["tgid"], 0) + r["count"]
    assert calls == {a.pid: 5, b.pid: 11}
    assert {r["tgid"] for r in done.events} <= {a.pid, b.pid}  # no call of anyone else
    assert {r["label"] for r in done.events} == {1}


def test_moving_a_process_changes_what_is_counted_from_its_next_call(
        home: Path, tmp_path: Path, tree: dict[str, Path]) -> None:
    target = tmp_path / "target"
    target.write_text("x")
    with workers(target, 2) as (a, c):
        a.move(tree["unit"])
        c.move(tree["other"])
        run = Running(home, "bpf/opensnoop", tmp_path / "events.jsonl",
                      extra=["--cgroup", str(tree["unit"])])
        try:
            a.do("open", 2)
            c.do("open", 3)
            c.move(tree["child"])   # into the unit: counted from here
            a.move(tree["other"])   # out of it: no more
            c.do("open", 4)
            a.do("open", 6)
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    assert _opens(done, target) == {a.pid: [1] * 2, c.pid: [1] * 4}
    assert received(done, "opensnoop/opensnoop_events") == (6, 0)


def test_pid_filter_and_a_pid_added_while_running(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("x")
    rules = tmp_path / "filter.yaml"
    with workers(target, 3) as (a, b, c):
        rules.write_text(f"pids: [{b.pid}]\n")
        run = Running(home, "bpf/opensnoop", tmp_path / "events.jsonl",
                      extra=["--pid", str(a.pid), "--filter-file", str(rules)])
        try:
            a.do("open", 3)
            b.do("open", 2)
            c.do("open", 5)          # not asked for yet
            rules.write_text(f"pids: [{b.pid}, {c.pid}]\n")
            said(run, f"label 3 = pid {c.pid}: monitored")
            c.do("open", 7)
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    assert _opens(done, target) == {a.pid: [1] * 3, b.pid: [2] * 2, c.pid: [3] * 7}
    assert received(done, "opensnoop/opensnoop_events") == (12, 0)


def test_a_program_without_the_filter_is_refused_by_name(home: Path) -> None:
    """A user's own libbpf program (no bpfdepot.h) cannot be limited to a unit: refused."""
    out = bpfdepot(home, "run", "tests/kernel/bundles/perf_lost", "--duration", "1",
                   "--pid", str(os.getpid()))
    assert out.returncode == 2, out.stderr
    assert "'perf_lost' does not honour the process filter this run asks for" in out.stderr
    assert "bpfdepot_monitored" in out.stderr
    assert "attached" not in out.stderr  # refused before load: nothing ever reached the kernel


def test_execsnoop_passes_only_execs_inside_the_cgroup(home: Path, tmp_path: Path,
                                                       tree: dict[str, Path]) -> None:
    marker = f"bpfdepot-filter-{os.getpid()}"
    run = Running(home, "bpf/execsnoop", tmp_path / "events.jsonl",
                  extra=["--cgroup", str(tree["unit"])])
    try:
        # each shell moves itself into a cgroup, then execs: only the exec inside the unit's
        # child cgroup passes (the shells' own execs happened before the move)
        for where, arg in ((tree["child"], "in"), (tree["other"], "out")):
            subprocess.run(["/bin/sh", "-c", f'echo $$ > {where}/cgroup.procs && '
                            f'exec /bin/echo {marker} {arg}'], stdout=subprocess.DEVNULL,
                           check=True)
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    assert [(e["args"], e["label"]) for e in done.events] == [(["/bin/echo", marker, "in"], 1)]
    assert received(done, "execsnoop/events") == (1, 0)


def test_tcp_connlat_passes_only_the_pid_asked(home: Path, tmp_path: Path) -> None:
    client = ("import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1])));"
              " s.close()")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        run = Running(home, "bpf/tcp_connlat", tmp_path / "events.jsonl",
                      extra=["--pid", str(os.getpid())])
        try:
            with socket.create_connection(("127.0.0.1", port)) as mine:
                sport = mine.getsockname()[1]
            subprocess.run([sys.executable, "-c", client, str(port)], check=True)  # not asked
            for _ in range(2):
                server.accept()[0].close()
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    events = [e for e in done.events if "delta_ns" in e]
    assert [(e["pid"], e["sport"], e["dport"], e["label"]) for e in events] == \
        [(os.getpid(), sport, port, 1)]
    assert received(done, "tcp_connlat/tcp_connlat_events") == (1, 0)


def test_a_bpftrace_program_is_refused_under_a_filter(home: Path) -> None:
    """A .bt program cannot read the filter's maps: asked for a filter, the run refuses it by
    name before anything starts rather than run it unfiltered."""
    result = bpfdepot(home, "run", "bpf/getppid_bt", "--pid", str(os.getpid()), "-d", "1")
    assert result.returncode == 2, result.stderr
    assert "'getppid_bt' has bpftrace program(s) 'getppid'" in result.stderr
    assert "filter inside the script" in result.stderr


def test_the_manifest_can_ask_for_the_filter(home: Path, tmp_path: Path,
                                             tree: dict[str, Path]) -> None:
    """``spec.filter: {units: [...]}`` in a bundle's manifest filters as ``--unit`` does."""
    bundle = tmp_path / "opensnoop"
    shutil.copytree(ROOT / "bpf" / "opensnoop", bundle)
    manifest = bundle / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace(
        "spec:\n", f"spec:\n  filter:\n    units: [{tree['unit'].name}]\n", 1))
    target = tmp_path / "target"
    target.write_text("x")
    with workers(target, 2) as (a, c):
        a.move(tree["unit"])
        c.move(tree["other"])
        run = Running(home, str(bundle), tmp_path / "events.jsonl")
        try:
            a.do("open", 4)
            c.do("open", 6)
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    assert _opens(done, target) == {a.pid: [1] * 4}
    assert received(done, "opensnoop/opensnoop_events") == (4, 0)
