"""Attach kinds in the running kernel: perf_event per CPU (bpf/cpu_sample), uprobe/uretprobe by
binary and function (bpf/ufunc), and their errors (exit code, message, nothing left attached)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loader.attach import attach_kinds
from loader.libbpf.core import BpfObject
from loader.model.manifest import load_bundle
from tests.kernel.conftest import ROOT, Running, bpfdepot, prog_names

CPU_SAMPLE = ROOT / "bpf" / "cpu_sample"
UFUNC = ROOT / "bpf" / "ufunc"


def bundle(tmp: Path, source: Path, manifest: str) -> Path:
    """A copy of a catalog program's sources with a manifest of the test's own."""
    tmp.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.suffix in (".c", ".h"):
            shutil.copy(f, tmp / f.name)
    (tmp / "manifest.yaml").write_text(manifest)
    return tmp


def manifest(name: str, program_keys: str, channel: str, event: str) -> str:
    return (f"kind: ebpfprogram\nname: {name}\nspec:\n  programs:\n"
            f"    - name: {name}\n      path: file://./{name}.bpf.c\n      type: ebpf_object\n"
            + "".join(f"      {line}\n" for line in program_keys.strip().splitlines())
            + f"  channels:\n    {channel}: {{type: ring_buffer, event: {event}}}\n")


def link_progs_named(name: str) -> int:
    """BPF links in the kernel now whose program is called ``name``."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True)
    ids = {p["id"] for p in json.loads(out.stdout or "[]") if p.get("name") == name}
    links = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True,
                           check=True)
    return sum(1 for link in json.loads(links.stdout or "[]") if link.get("prog_id") in ids)


# --- perf_event --------------------------------------------------------------------------------

def test_perf_event_samples_a_busy_process_on_every_cpu_and_not_a_sleeper(home: Path,
                                                                          tmp_path: Path) -> None:
    burn = subprocess.Popen([sys.executable, "-c", "import sys, time\nsys.stdin.buffer.read(1)\n"
                             "end = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass\n"],
                            stdin=subprocess.PIPE)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        run = Running(home, str(CPU_SAMPLE), tmp_path / "samples.jsonl",
                      extra=["--set", f"targ_pids={burn.pid},{sleeper.pid}"])
        burn.stdin.write(b"x")
        burn.stdin.close()
        burn.wait(timeout=30)
        done = run.stop()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert done.rc == 0, done.stderr
    assert "1 program(s) attached" in done.stderr
    # 99 Hz for 1.5 s is ~148 samples with a CPU to itself; the burner shares 2 CPUs with the
    # loader and starts late by a Python start-up, so half of that is the floor.
    burner = [e for e in done.events if e["pid"] == burn.pid]
    assert len(burner) >= 50, len(burner)
    assert not [e for e in done.events if e["pid"] == sleeper.pid]
    assert {e["pid"] for e in done.events} <= {burn.pid}   # the array knob filtered the rest
    online = {int(c) for c in range(os.cpu_count() or 1)}
    assert {e["cpu"] for e in burner} <= online
    assert link_progs_named("do_sample") == 0  # detached: no link left


def test_perf_event_links_own_their_fds_and_detach_leaves_nothing(home: Path) -> None:
    """libbpf's perf link closes the perf event fd on destroy: after detach no fd is left."""
    from builder.compile import Target, build_program
    from builder.toolchain import find_toolchain
    from loader.artifacts.store import LocalStore
    from loader.kernel.probe import running_kernel

    m = load_bundle(CPU_SAMPLE)
    store = LocalStore(home)
    built = build_program(store, m, m.kernel_programs[0],
                          Target(identity=running_kernel(), btf=Path("/sys/kernel/btf/vmlinux")),
                          find_toolchain(home / "cache"), home / "cache")
    fds_before = len(os.listdir("/proc/self/fd"))
    kind = attach_kinds()["perf_event"]
    options = dict(m.kernel_programs[0].attach[0][2])
    with BpfObject(store.blob_path(built.meta.digest), label="cpu_sample") as obj:
        from loader.libbpf.attach import size_map
        size_map(obj, "samples_by_pid", max_entries=1024)
        obj.load()
        loaded = len(os.listdir("/proc/self/fd"))
        obj.attach([("do_sample", lambda o, name: kind.attach(o, name, options))])
        ncpus = len(kind.attach.__globals__["online_cpus"]())
        assert obj.attached_links == ncpus
        # one perf event fd and one BPF link fd per CPU
        assert len(os.listdir("/proc/self/fd")) == loaded + 2 * ncpus
        assert link_progs_named("do_sample") == ncpus
        obj.detach()
        assert len(os.listdir("/proc/self/fd")) == loaded
        assert link_progs_named("do_sample") == 0
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_perf_event_on_a_cpu_that_does_not_exist_undoes_the_others(home: Path, tmp_path: Path) -> None:
    b = bundle(tmp_path / "b", CPU_SAMPLE, manifest(
        "cpu_sample", 'maps: {samples_by_pid: {max_entries: "ncpus * 1024"}}\n'
        "attach: {do_sample: {perf_event: {frequency: 99, cpus: [0, 4095]}}}",
        "cpu_samples", "cpu_sample_event"))
    done = bpfdepot(home, "run", str(b), "--duration", "1")
    assert done.returncode == 5, done.stderr
    assert ("cannot sample program 'do_sample' of 'cpu_sample' on CPU 4095: perf_event_open("
            "software cpu-clock) failed: EINVAL (Invalid argument)") in done.stderr
    assert "CPU 4095 is offline or does not exist" in done.stderr
    assert link_progs_named("do_sample") == 0


def test_perf_event_program_without_attach_is_refused_before_load(home: Path, tmp_path: Path) -> None:
    b = bundle(tmp_path / "b", CPU_SAMPLE, manifest(
        "cpu_sample", 'maps: {samples_by_pid: {max_entries: 64}}', "cpu_samples",
        "cpu_sample_event"))
    done = bpfdepot(home, "run", str(b), "--duration", "1")
    assert done.returncode == 2, done.stderr
    assert ("program 'do_sample' of 'cpu_sample' is SEC(\"perf_event\"): say how to sample it in "
            "the manifest: attach: {do_sample: {perf_event: {frequency: 99}}}") in done.stderr
    assert link_progs_named("do_sample") == 0



# --- uprobe / uretprobe ------------------------------------------------------------------------

TARGET_C = r"""
#include <stdio.h>
#include <unistd.h>
int __attribute__((noinline)) bpfdepot_target(int x) { return x * 2; }
int main(void) {
	char c;
	int sum = 0;
	if (read(0, &c, 1) != 1) return 1;   /* wait until the probe is attached */
	for (int i = 1; i <= 5; i++) sum += bpfdepot_target(i);
	return sum == 30 ? 0 : 2;
}
"""


@pytest.fixture(scope="module")
def target_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("gcc"):
        pytest.skip("needs gcc to build the probed binary")
    d = tmp_path_factory.mktemp("ufunc-target")
    (d / "target.c").write_text(TARGET_C)
    subprocess.run(["gcc", "-O2", "-o", str(d / "target"), str(d / "target.c")], check=True)
    return d / "target"


UFUNC_ATTACH = """attach:
  on_call: {{uprobe: {{binary: {binary}, function: {function}{pid}}}}}
  on_return: {{uretprobe: {{binary: {binary}, function: {function}{pid}}}}}"""


def ufunc_bundle(tmp: Path, binary: str, function: str, pid: int | None = None) -> Path:
    keys = UFUNC_ATTACH.format(binary=binary, function=function,
                               pid=f", pid: {pid}" if pid else "")
    return bundle(tmp, UFUNC, manifest("ufunc", keys, "ufunc_events", "ufunc_event"))


def test_uprobe_and_uretprobe_on_a_function_of_a_built_binary(home: Path, tmp_path: Path,
                                                             target_binary: Path) -> None:
    b = ufunc_bundle(tmp_path / "b", str(target_binary), "bpfdepot_target")
    run = Running(home, str(b), tmp_path / "calls.jsonl")
    proc = subprocess.Popen([str(target_binary)], stdin=subprocess.PIPE)
    proc.communicate(b"x", timeout=30)
    assert proc.returncode == 0
    done = run.stop()
    assert done.rc == 0, done.stderr
    mine = [(e["is_return"], e["value"]) for e in done.events if e["pid"] == proc.pid]
    assert mine == [(0, 1), (1, 2), (0, 2), (1, 4), (0, 3), (1, 6), (0, 4), (1, 8), (0, 5), (1, 10)]
    assert link_progs_named("on_call") == 0 and link_progs_named("on_return") == 0


def test_uprobe_on_libc_by_library_name_for_one_pid(home: Path, tmp_path: Path) -> None:
    """libc.so.6 is found in this process's /proc/PID/maps; only its own getppid calls count."""
    b = ufunc_bundle(tmp_path / "b", "libc.so.6", "getppid", pid=os.getpid())
    run = Running(home, str(b), tmp_path / "calls.jsonl")
    parent = os.getppid()
    for _ in range(7):
        os.getppid()
    done = run.stop()
    assert done.rc == 0, done.stderr
    assert {e["pid"] for e in done.events} == {os.getpid()}
    calls = [e for e in done.events if not e["is_return"]]
    returns = [e["value"] for e in done.events if e["is_return"]]
    assert len(calls) == 8 and returns == [parent] * 8  # os.getppid() above is the 8th


def test_uprobe_on_a_binary_that_does_not_exist(home: Path, tmp_path: Path) -> None:
    b = ufunc_bundle(tmp_path / "b", "/nonexistent/bin/app", "main")
    done = bpfdepot(home, "run", str(b), "--duration", "1")
    assert done.returncode == 5, done.stderr
    assert "uprobe binary /nonexistent/bin/app does not exist" in done.stderr
    missing_lib = bpfdepot(home, "run", str(ufunc_bundle(tmp_path / "c", "libnope.so.9", "f")),
                           "--duration", "1")
    assert missing_lib.returncode == 5, missing_lib.stderr
    assert "uprobe binary libnope.so.9 is not in ld.so.cache" in missing_lib.stderr
    assert link_progs_named("on_call") == 0 and link_progs_named("on_return") == 0


def test_uprobe_on_a_function_not_in_the_binary(home: Path, tmp_path: Path,
                                                target_binary: Path) -> None:
    b = ufunc_bundle(tmp_path / "b", str(target_binary), "no_such_function")
    done = bpfdepot(home, "run", str(b), "--duration", "1")
    assert done.returncode == 5, done.stderr
    assert (f"cannot attach uprobe 'on_call' of 'ufunc': function no_such_function is not in "
            f"{target_binary}") in done.stderr
    assert link_progs_named("on_call") == 0 and link_progs_named("on_return") == 0


def test_a_tail_call_target_with_no_attach_point_loads_without_attaching(home: Path,
                                                                         tmp_path: Path) -> None:
    """SEC("tracepoint") names no tracepoint: the program loads (the prog array libbpf fills
    at load points to it), is not attached, and counts exactly the calls tail-called to it."""
    child = subprocess.Popen([sys.executable, "-c",
                              "import os, sys\nsys.stdin.read(1)\nfor _ in range(7): os.getppid()\n"
                              "sys.stdin.read(1)\n"], stdin=subprocess.PIPE, text=True)
    try:
        run = Running(home, "tests/kernel/bundles/tailcall", tmp_path / "calls.jsonl",
                      extra=["--set", f"targ_tgid={child.pid}"])
        child.stdin.write("x")
        child.stdin.flush()
        time.sleep(1.5)  # one read of the map at least
        done = run.stop()
    finally:
        child.kill()
        child.wait()
    assert done.rc == 0, done.stderr
    assert "tailcall: 1 program(s) attached" in done.stderr  # on_getppid; count_call loads only
    assert done.events and done.events[-1] == {"key": child.pid, "value": 7}, done.events
    # the kernel empties a prog array in a work item once its last user is gone: the two
    # programs are freed a moment after the run has exited, not at once
    deadline = time.monotonic() + 5
    while {"on_getppid", "count_call"} & prog_names() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not {"on_getppid", "count_call"} & prog_names()
