"""bpftrace programs in the running kernel: `bpfdepot run` starts bpftrace on the checked
script, its printf lines and final maps come back as records, and stop ends it within 1 s with no
BPF program left behind. Triggers are children of this test that name themselves (comm) and call
getppid() a known number of times."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loader.artifacts.store import open_store
from loader.model.settings import Settings
from tests.kernel.conftest import (
    ROOT,
    Running,
    bpfdepot,
    cli_env,
    held_prog_ids,
    records,
    wait_for,
)

if not shutil.which("bpftrace"):
    pytest.skip("bpftrace is not installed (apt-get install -y bpftrace)", allow_module_level=True)

BUNDLE = ROOT / "bpf" / "getppid_bt"
CALLER = ("import ctypes, os, sys\n"
          "ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME: the comm\n"
          "for _ in range(int(sys.argv[2])):\n    os.getppid()\n"
          "print(os.getpid())\n")


def call_getppid(comm: str, times: int) -> int:
    """A child named ``comm`` calls getppid() ``times`` times; its pid."""
    done = subprocess.run([sys.executable, "-c", CALLER, comm, str(times)], capture_output=True,
                          text=True, check=True, timeout=30)
    return int(done.stdout)


def bpftrace_child(run: Running) -> int:
    """The pid of the run's bpftrace child."""
    children = Path(f"/proc/{run.proc.pid}/task/{run.proc.pid}/children").read_text().split()
    found = [int(p) for p in children
             if Path(f"/proc/{p}/comm").read_text().strip() == "bpftrace"]
    assert len(found) == 1, children
    return found[0]


def all_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                         check=True)
    return {p["id"] for p in json.loads(out.stdout or "[]")}


def test_getppid_script_gives_three_events_and_the_final_count(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    run = Running(home, str(BUNDLE), out)
    try:
        check_run(run, out)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def check_run(run: Running, out: Path) -> None:
    bt = bpftrace_child(run)
    progs = held_prog_ids(bt)
    assert progs, f"bpftrace {bt} holds no BPF program once the run says attached"
    other = call_getppid("bt_other", 5)  # another comm: filtered out by the script
    pid = call_getppid("bt_getppid", 3)
    wait_for(out, lambda rs: sum(r.get("pid") == pid for r in rs) == 3, "3 getppid events")

    started = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    while Path(f"/proc/{bt}").exists() and time.monotonic() - started < 5:
        time.sleep(0.01)
    gone_after = time.monotonic() - started
    _, rest = run.proc.communicate(timeout=30)
    assert run.proc.returncode == 0, rest
    assert gone_after < 1.0, f"bpftrace still ran {gone_after:.2f} s after stop"
    assert not progs & all_prog_ids(), "bpftrace's programs are still loaded"

    found = records(out)
    events = [r for r in found if "map" not in r]
    assert [e for e in events if e["pid"] in (pid, other)] == [
        {"pid": pid, "tid": pid, "comm": "bt_getppid"}] * 3
    maps = [r for r in found if "map" in r]
    assert {"map": "@calls", "key": pid, "value": 3} in maps
    assert not [m for m in maps if m.get("key") == other]
    assert "1 program(s) attached" in run.stderr
    assert "RLIMIT_MEMLOCK" not in rest and "RLIMIT_MEMLOCK" not in run.stderr
    summary = {line.split()[0]: line.split()[1:] for line in rest.splitlines()
               if line.startswith("  getppid/")}
    assert summary["getppid/events"][1] == "0"  # nothing lost
    assert int(summary["getppid/maps"][0]) == len(maps)


def test_a_bt_runs_beside_a_c_program_in_one_manifest(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(BUNDLE / "getppid.bt", folder)
    shutil.copy(ROOT / "tests" / "kernel" / "bundles" / "perf_lost" / "perf_lost.bpf.c", folder)
    (folder / "manifest.yaml").write_text(
        "kind: ebpfprogram\nname: mixed\nspec:\n  programs:\n"
        "    - {name: perf_lost, path: file://./perf_lost.bpf.c, type: ebpf_object}\n"
        "    - {name: getppid, path: file://./getppid.bt, type: bpftrace_object}\n"
        "  channels:\n    perf_lost_events:\n      type: perf_buffer\n"
        "      event: perf_lost_event\n")
    out = tmp_path / "out.json"
    run = Running(home, str(folder), out)
    try:
        pid = call_getppid("bt_getppid", 3)
        wait_for(out, lambda rs: sum(r.get("pid") == pid for r in rs) == 6, "3 events from each")
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    mine = [r for r in done.events if r.get("pid") == pid]
    assert sorted(("seq" in r) for r in mine) == [False] * 3 + [True] * 3  # C events carry seq
    assert {"map": "@calls", "key": pid, "value": 3} in done.events
    assert "2 program(s) attached" in done.stderr


def test_run_refuses_a_script_calling_system_before_starting_anything(home: Path,
                                                                      tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "x.bt").write_text(f'BEGIN\n{{\n  system("touch {marker}");\n}}\n')
    (folder / "manifest.yaml").write_text(
        "kind: ebpfprogram\nname: bad\nspec:\n  programs:\n"
        "    - {name: x, path: file://./x.bt, type: bpftrace_object}\n")
    done = bpfdepot(home, "run", str(folder), "--duration", "1")
    assert done.returncode == 8, done.stderr
    assert f"{folder / 'x.bt'}:3: system() is not allowed" in done.stderr
    assert "attached" not in done.stderr and not marker.exists()


def _locked_bundle(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """getppid_bt checked for this kernel in a store of its own, and locked for it."""
    home = tmp_path / "home"
    env = cli_env(home)
    folder = tmp_path / "getppid_bt"
    shutil.copytree(BUNDLE, folder)
    for step in (("kernels", "register"), ("build", str(folder)),
                 ("lock", str(folder), "--kernels", "all")):
        done = bpfdepot(home, *step, env=env)
        assert done.returncode == 0, (step, done.stderr)
    return folder, env


def test_a_locked_run_and_a_run_by_digest_run_the_pinned_script(home: Path, tmp_path: Path) -> None:
    folder, env = _locked_bundle(tmp_path)
    [pin] = json.loads((folder / "bpfdepot.lock").read_text())["pins"]
    assert (pin["program"], pin["release"]) == ("getppid", os.uname().release)
    for target, extra in ((str(folder), ["--locked"]), (pin["meta"], [])):
        out = tmp_path / f"out-{len(extra)}.json"
        run = Running(home, target, out, env=env, extra=extra)
        try:
            pid = call_getppid("bt_getppid", 3)
            wait_for(out, lambda rs, pid=pid: sum(r.get("pid") == pid for r in rs) == 3,
                     "3 events")
        finally:
            done = run.stop()
        assert done.rc == 0, done.stderr
        assert "building" not in done.stderr and "1 program(s) attached" in done.stderr
        assert [e for e in done.events if e.get("pid") == pid and "map" not in e] == [
            {"pid": pid, "tid": pid, "comm": "bt_getppid"}] * 3


def test_a_tampered_stored_script_is_refused_and_nothing_starts(home: Path,
                                                               tmp_path: Path) -> None:
    folder, env = _locked_bundle(tmp_path)
    [pin] = json.loads((folder / "bpfdepot.lock").read_text())["pins"]
    blob = open_store(Settings.from_env(env)).blob_path(pin["artifact"])
    blob.chmod(0o644)
    blob.write_text('BEGIN\n{\n  printf("tampered\\n");\n}\n')
    for target, extra in ((str(folder), ["--locked"]), (pin["meta"], [])):
        done = bpfdepot(home, "run", target, *extra, "--duration", "1", env=env)
        assert done.returncode == 9, done.stderr
        assert f"bpfdepot: error: blob {pin['artifact']} in " in done.stderr
        assert "is corrupt" in done.stderr and "attached" not in done.stderr
        assert "tampered" not in done.stdout


FIELDS_BT = ('BEGIN\n{\n  printf("started\\n");\n}\n'
             'tracepoint:syscalls:sys_enter_getppid\n/comm == "bt_fields"/\n{\n'
             '  printf("%d %s getppid by %s\\n", pid, comm, comm);\n}\n')


def test_fields_split_printed_lines_and_the_misses_are_counted(home: Path,
                                                               tmp_path: Path) -> None:
    folder = tmp_path / "fields"
    folder.mkdir()
    (folder / "f.bt").write_text(FIELDS_BT)
    (folder / "manifest.yaml").write_text(
        "kind: ebpfprogram\nname: fields\nspec:\n  programs:\n"
        "    - {name: f, path: file://./f.bt, type: bpftrace_object,\n"
        "       fields: [pid, comm, what]}\n")
    out = tmp_path / "out.json"
    run = Running(home, str(folder), out)
    try:
        pid = call_getppid("bt_fields", 2)
        wait_for(out, lambda rs: sum(r.get("pid") == pid for r in rs) == 2, "2 events")
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    assert [e for e in done.events if e.get("pid") == pid] == [
        {"pid": pid, "comm": "bt_fields", "what": "getppid by bt_fields"}] * 2
    assert {"text": "started"} in done.events  # one word: it does not fit three fields
    assert "(1 line(s) did not match fields: (kept as {\"text\": LINE}))" in done.stderr
