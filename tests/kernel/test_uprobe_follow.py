"""``follow: true`` in the running kernel (bpf/ufunc on a library the test builds): a library in
no ld.so.cache is probed once a process maps it — a new process started after the run, and a
process already running that dlopen()s it later — each copy (inode) once, all detached at stop."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import Running, bpfdepot
from tests.kernel.test_attach import UFUNC, bundle, link_progs_named, manifest

LIB_C = "int __attribute__((noinline)) bpfdepot_follow_fn(int x) { return x + 1000; }\n"
LIB = "libbpfdepot_follow.so.1"

# loads the library when told ("load\n"), then calls the function when told ("call N\n")
CALLER = r"""
import ctypes, sys
lib = None
for line in sys.stdin:
    word, *rest = line.split()
    if word == "load":
        lib = ctypes.CDLL(rest[0])
    elif word == "call":
        for i in range(int(rest[0])):
            lib.bpfdepot_follow_fn(i)
    print("done", flush=True)
"""

ATTACH = f"""attach:
  on_call: {{uprobe: {{binary: {LIB}, function: bpfdepot_follow_fn, follow: true}}}}
  on_return: {{uretprobe: {{binary: {LIB}, function: bpfdepot_follow_fn, follow: true}}}}"""


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("gcc"):
        pytest.skip("needs gcc to build the probed library")
    d = tmp_path_factory.mktemp("follow-lib")
    (d / "lib.c").write_text(LIB_C)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(d / LIB), str(d / "lib.c")],
                   check=True)
    return d / LIB


class Caller:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CALLER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def ask(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "done\n"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def wait_links(program: str, count: int, timeout: float = 10) -> None:
    """Wait until ``count`` links of ``program`` are in the kernel (the watcher attached)."""
    deadline = time.monotonic() + timeout
    while link_progs_named(program) != count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{program} has {link_progs_named(program)} links, not {count}")
        time.sleep(0.2)


def follow_bundle(tmp: Path) -> Path:
    return bundle(tmp, UFUNC, manifest("ufunc", ATTACH, "ufunc_events", "ufunc_event"))


def test_follow_probes_a_library_loaded_after_the_start(home: Path, tmp_path: Path,
                                                        library: Path) -> None:
    run = Running(home, str(follow_bundle(tmp_path / "b")), tmp_path / "calls.jsonl")
    try:
        assert f"{LIB} is not in ld.so.cache; following the processes that map it" in run.stderr
        # a process running before the library exists: its dlopen is found by the rescan
        early = Caller()
        time.sleep(1.5)  # one rescan sees it without the library
        copy_a = tmp_path / "a" / LIB
        copy_a.parent.mkdir()
        shutil.copy(library, copy_a)
        early.ask(f"load {copy_a}")
        wait_links("on_call", 1)
        wait_links("on_return", 1)
        early.ask("call 3")
        # a second copy (another inode) in a new process; the first copy again: no new attach
        copy_b = tmp_path / "b2" / LIB
        copy_b.parent.mkdir()
        shutil.copy(library, copy_b)
        late = Caller()
        late.ask(f"load {copy_b}")
        wait_links("on_call", 2)
        wait_links("on_return", 2)
        late.ask("call 2")
        again = Caller()
        again.ask(f"load {copy_a}")
        time.sleep(1.5)
        again.ask("call 1")
        for caller in (early, late, again):
            caller.close()
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr

    def calls(pid: int) -> list[tuple[int, int]]:
        return [(e["is_return"], e["value"]) for e in done.events if e["pid"] == pid]
    assert calls(early.proc.pid) == [(0, 0), (1, 1000), (0, 1), (1, 1001), (0, 2), (1, 1002)]
    assert calls(late.proc.pid) == [(0, 0), (1, 1000), (0, 1), (1, 1001)]
    assert calls(again.proc.pid) == [(0, 0), (1, 1000)]
    assert done.stderr.count("attached to") == 4  # 2 programs x 2 files
    for kind, program in (("uprobe", "on_call"), ("uretprobe", "on_return")):
        assert (f"{kind} ufunc:{program} attached to {copy_a} (pid {early.proc.pid})\n"
                in done.stderr)
        assert (f"{kind} ufunc:{program} attached to {copy_b} (pid {late.proc.pid})\n"
                in done.stderr)
    assert link_progs_named("on_call") == 0 and link_progs_named("on_return") == 0


def test_a_failed_attach_with_follow_leaves_nothing_attached(home: Path, tmp_path: Path) -> None:
    """on_call follows libc.so.6 (attached, its watcher started), then on_return names a
    function libc lacks: the run fails with the attach error and both are detached."""
    keys = """attach:
  on_call: {uprobe: {binary: libc.so.6, function: getppid, follow: true}}
  on_return: {uretprobe: {binary: libc.so.6, function: no_such_function, follow: true}}"""
    b = bundle(tmp_path / "b", UFUNC, manifest("ufunc", keys, "ufunc_events", "ufunc_event"))
    done = bpfdepot(home, "run", str(b), "--duration", "1")
    assert done.returncode == 5, done.stderr
    assert "cannot attach uretprobe 'on_return' of 'ufunc': function no_such_function is not in " \
        in done.stderr
    assert link_progs_named("on_call") == 0 and link_progs_named("on_return") == 0
