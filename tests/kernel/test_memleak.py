"""bpf/memleak in the running kernel: a frame-pointer C program built here keeps 100 ×
malloc(1024) in leaky() and frees 100 in clean(); the calloc, realloc, posix_memalign and
aligned_alloc paths once each; reads that keep what they read; a process that exits gives its
blocks back; top: N with the rest summed; and a bad `value:` refused before anything attaches."""

from __future__ import annotations

import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import ROOT, Finished, Running, bpfdepot, prog_names

LEAK_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *kept[256];
static int nkept;

static void wait_for_test(void) {            /* one byte on stdin: go on */
    char c;
    if (read(0, &c, 1) != 1) exit(1);
}

__attribute__((noinline)) void leaky(void) {
    for (int i = 0; i < 100; i++) kept[nkept++] = malloc(1024);
}

__attribute__((noinline)) void clean(void) {
    for (int i = 0; i < 100; i++) { void *p = malloc(1024); memset(p, 1, 1024); free(p); }
}

__attribute__((noinline)) void via_calloc(void) {
    kept[nkept++] = calloc(10, 100);          /* 1000 bytes kept */
    free(calloc(5, 8));
}

__attribute__((noinline)) void via_realloc(void) {
    void *p = malloc(100);
    kept[nkept++] = realloc(p, 5000);         /* free(100) + 5000 kept */
    kept[nkept++] = realloc(NULL, 300);       /* glibc calls malloc inside: counted once */
    void *q = malloc(50);
    if (realloc(q, 0) != NULL) exit(2);       /* glibc: frees, returns NULL */
}

__attribute__((noinline)) void via_memalign(void) {
    void *p = 0, *q = 0;
    if (posix_memalign(&p, 16, 3000)) exit(3);   /* small alignment: malloc inside */
    if (posix_memalign(&q, 256, 2000)) exit(3);
    kept[nkept++] = p;
    kept[nkept++] = q;
}

__attribute__((noinline)) void via_aligned(void) {
    kept[nkept++] = aligned_alloc(128, 4096);
    free(aligned_alloc(16, 32));
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "after-exec") == 0) {
        write(1, "exec\n", 5);               /* the new image: nothing of leaky() is left */
        wait_for_test();
        return 0;
    }
    wait_for_test();                          /* the run attaches first */
    if (argc > 1 && strcmp(argv[1], "others") == 0) {
        via_calloc(); via_realloc(); via_memalign(); via_aligned();
    } else {
        leaky(); clean();
    }
    write(1, "done\n", 5);
    wait_for_test();                          /* alive while the test reads */
    if (argc > 1 && strcmp(argv[1], "exec") == 0)
        execl("/proc/self/exe", argv[0], "after-exec", (char *)0);
    return nkept > 0 ? 0 : 4;
}
"""


@pytest.fixture(autouse=True)
def _need_gcc() -> None:
    if not shutil.which("gcc"):
        pytest.skip("the memleak tests compile their C subject with gcc")


def compile_leak(tmp: Path) -> Path:
    (tmp / "leak.c").write_text(LEAK_C)
    subprocess.run(["gcc", "-O0", "-fno-omit-frame-pointer", "-g", "-o", str(tmp / "leak"),
                    str(tmp / "leak.c")], check=True)
    return tmp / "leak"


def bundle(tmp: Path, pid: int, channel: dict[str, str]) -> Path:
    """bpf/memleak with every uprobe limited to ``pid`` and the channel's options changed."""
    out = tmp / "bundle-memleak"
    out.mkdir()
    for f in (ROOT / "bpf" / "memleak").iterdir():
        if f.suffix in (".c", ".h"):
            shutil.copy(f, out / f.name)
    text = (ROOT / "bpf" / "memleak" / "manifest.yaml").read_text()
    text = re.sub(r"(function: \w+)\}", rf"\1, pid: {pid}}}", text)
    for key, value in channel.items():
        text, n = re.subn(rf"(?m)^(      {key}:) .*$", rf"\1 {value}", text)
        assert n == 1, key
    (out / "manifest.yaml").write_text(text)
    return out


def run_leak(home: Path, tmp: Path, mode: str, channel: dict[str, str],
             after: float = 0.0, exit_first: bool = False) -> tuple[int, Finished]:
    """Start the subject, attach to it, let it allocate, read while it lives (or once it
    exited, with ``exit_first``), then release it."""
    leak = subprocess.Popen([str(compile_leak(tmp)), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        run = Running(home, str(bundle(tmp, leak.pid, channel)), tmp / "memleak.jsonl",
                      extra=["--set", f"targ_tgid={leak.pid}"])
        leak.stdin.write(b"x")
        leak.stdin.flush()
        ready, _, _ = select.select([leak.stdout], [], [], 30)
        assert ready and leak.stdout.readline() == b"done\n"
        time.sleep(after)
        if exit_first:
            leak.stdin.write(b"x")
            leak.stdin.close()
            assert leak.wait(timeout=30) == 0
        done = run.stop()              # the last read is made after detach
        if not exit_first:
            assert leak.poll() is None
            leak.stdin.write(b"x")
            leak.stdin.close()
            assert leak.wait(timeout=30) == 0
        return leak.pid, done
    finally:
        leak.kill()


def channel_counts(stderr: str) -> tuple[int, int]:
    """(received, lost) of memleak/outstanding in the run summary."""
    m = re.search(r"memleak/outstanding\s+(\d+)\s+(\d+)", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2))


def on(records: list[dict], function: str) -> list[dict]:
    return [r for r in records if function in r.get("user", [])]


def test_leaky_keeps_100_allocations_of_1024_bytes_and_clean_none(home: Path,
                                                                  tmp_path: Path) -> None:
    # one read only, the one after detach: this run's records are one snapshot
    pid, done = run_leak(home, tmp_path, "leaky", {"interval": "3600s", "top": "1000"})
    assert done.rc == 0, done.stderr
    mine = [r for r in done.events if r.get("pid") == pid]
    [leaky] = on(mine, "leaky")
    assert (leaky["count"], leaky["bytes"], leaky["value"]) == (100, 102_400, 102_400)
    assert leaky["unit"] == "bytes" and leaky["comm"] == "leak"
    assert leaky["label"] == 0 and "__pad" not in leaky          # no filter in this run
    assert leaky["user"][:2] == ["leaky", "main"]                  # the caller's stack
    assert leaky["stack"].startswith("leak;") and leaky["stack"].endswith(";main;leaky")
    assert 0 <= leaky["age_ms"] < 60_000 and "ts_ms_sum" not in leaky
    assert "user_stack_id" not in leaky
    assert on(mine, "clean") == []                                 # all freed: no record
    # the rest are libc's own (stdio's buffer for "done"), on stacks without leaky or clean
    assert all("leaky" not in r["user"] for r in mine if r is not leaky)
    assert {r.get("pid") for r in done.events} == {pid}           # the knob kept only it
    assert channel_counts(done.stderr)[1] == 0


def test_reads_keep_what_they_read_and_age_grows(home: Path, tmp_path: Path) -> None:
    # reset: false: every read after the allocations sees the same 100 blocks, older each time
    pid, done = run_leak(home, tmp_path, "leaky", {"interval": "200ms"}, after=1.0)
    assert done.rc == 0, done.stderr
    leaky = on([r for r in done.events if r.get("pid") == pid], "leaky")
    whole = [r for r in leaky if r["count"] == 100]
    assert len(whole) >= 3, leaky
    assert all(r["bytes"] == 102_400 for r in whole) and whole[-1] is leaky[-1]
    assert whole[-1]["age_ms"] >= whole[0]["age_ms"] + 200
    assert channel_counts(done.stderr)[1] == 0


def test_a_process_that_exits_gives_its_memory_back(home: Path, tmp_path: Path) -> None:
    # the same 100 blocks, but the subject exits before the only read: its blocks and totals
    # were dropped at its exit, so nothing of it is reported outstanding
    pid, done = run_leak(home, tmp_path, "leaky", {"interval": "3600s"}, exit_first=True)
    assert done.rc == 0, done.stderr
    assert not Path(f"/proc/{pid}").exists()
    assert [r for r in done.events if r.get("pid") == pid] == []
    assert channel_counts(done.stderr) == (0, 0)      # not even an emptied entry was left


def test_exec_gives_the_old_image_s_memory_back(home: Path, tmp_path: Path) -> None:
    # leaky() keeps its 100 blocks, then the process execs itself: the new image holds none of
    # them, so the only read (after the exec, the process alive) has no leaky stack for it
    leak = subprocess.Popen([str(compile_leak(tmp_path)), "exec"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        run = Running(home, str(bundle(tmp_path, leak.pid, {"interval": "3600s"})),
                      tmp_path / "memleak.jsonl", extra=["--set", f"targ_tgid={leak.pid}"])
        for say, line in ((b"x", b"done\n"), (b"x", b"exec\n")):
            leak.stdin.write(say)
            leak.stdin.flush()
            ready, _, _ = select.select([leak.stdout], [], [], 30)
            assert ready and leak.stdout.readline() == line
        done = run.stop()
        assert leak.poll() is None
        leak.stdin.write(b"x")
        leak.stdin.close()
        assert leak.wait(timeout=30) == 0
    finally:
        leak.kill()
    assert done.rc == 0, done.stderr
    assert on(done.events, "leaky") == [] and on(done.events, "clean") == []
    # what the new image allocated after the exec (ld.so, libc start-up) is there, and is its own
    assert {r.get("pid") for r in done.events} <= {leak.pid}
    assert channel_counts(done.stderr)[1] == 0


def test_calloc_realloc_posix_memalign_and_aligned_alloc(home: Path, tmp_path: Path) -> None:
    pid, done = run_leak(home, tmp_path, "others", {"interval": "3600s", "top": "1000"})
    assert done.rc == 0, done.stderr
    mine = [r for r in done.events if r.get("pid") == pid]
    got = {}
    for function in ("via_calloc", "via_realloc", "via_memalign", "via_aligned"):
        found = on(mine, function)
        assert len(found) == 1, (function, found)
        assert found[0]["user"][0] == function, found      # named at the allocator's return
        got[function] = (found[0]["count"], found[0]["bytes"])
    assert got == {"via_calloc": (1, 1000),        # calloc(5, 8) freed
                   "via_realloc": (2, 5300),       # malloc(100) → realloc 5000; realloc(NULL, 300)
                   "via_memalign": (2, 5000),      # 3000 + 2000
                   "via_aligned": (1, 4096)}       # aligned_alloc(16, 32) freed
    assert channel_counts(done.stderr)[1] == 0


def test_top_keeps_the_heaviest_and_sums_the_rest(home: Path, tmp_path: Path) -> None:
    _, done = run_leak(home, tmp_path, "others", {"interval": "3600s", "top": "2"})
    assert done.rc == 0, done.stderr
    [first, second, other] = done.events                           # one read: 2 + "[other]"
    assert (first["user"][0], first["bytes"]) == ("via_realloc", 5300)
    assert (second["user"][0], second["bytes"]) == ("via_memalign", 5000)
    # via_calloc's 1000 bytes and via_aligned's 4096, summed, not dropped
    assert {k: other[k] for k in ("stack", "left_out", "count", "bytes", "value", "unit")} == {
        "stack": "[other]", "left_out": 2, "count": 2, "bytes": 5096, "value": 5096,
        "unit": "bytes"}
    assert channel_counts(done.stderr)[1] == 0


def test_a_value_member_the_map_lacks_is_refused_before_anything_attaches(
        home: Path, tmp_path: Path) -> None:
    b = bundle(tmp_path, 1, {"value": "kilobytes"})
    done = bpfdepot(home, "run", str(b), "--duration", "1")
    assert done.returncode == 2, done.stderr
    assert ("channel 'outstanding' of 'memleak': value: kilobytes is not a member of the "
            "map's value") in done.stderr
    assert "its members: count, bytes, ts_ms_sum" in done.stderr
    assert "malloc_enter" not in prog_names()


def test_the_filter_records_only_the_units_allocations(home: Path, tmp_path: Path,
                                                       tree: dict[str, Path]) -> None:
    """Two copies of the subject run leaky(), one in the unit's child cgroup and one in another
    service, under libc uprobes of every process: only the first's blocks are recorded, with
    label 1, and its clean() frees take its own blocks off."""
    out = tmp_path / "bundle-memleak"
    shutil.copytree(ROOT / "bpf" / "memleak", out)
    text = (out / "manifest.yaml").read_text()
    for key, value in (("interval", "3600s"), ("top", "1000")):
        text, n = re.subn(rf"(?m)^(      {key}:) .*$", rf"\1 {value}", text)
        assert n == 1, key
    (out / "manifest.yaml").write_text(text)
    leak = compile_leak(tmp_path)
    subjects = [subprocess.Popen([str(leak), "leaky"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE) for _ in range(2)]
    inside, outside = subjects
    try:
        (tree["child"] / "cgroup.procs").write_text(str(inside.pid))
        (tree["other"] / "cgroup.procs").write_text(str(outside.pid))
        run = Running(home, str(out), tmp_path / "memleak.jsonl",
                      extra=["--unit", tree["unit"].name])
        try:
            for s in subjects:
                s.stdin.write(b"x")
                s.stdin.flush()
                ready, _, _ = select.select([s.stdout], [], [], 30)
                assert ready and s.stdout.readline() == b"done\n"
        finally:
            done = run.stop()          # the only read, after detach; both still alive
        for s in subjects:
            assert s.poll() is None
            s.stdin.write(b"x")
            s.stdin.close()
            assert s.wait(timeout=30) == 0
    finally:
        for s in subjects:
            s.kill()
    assert done.rc == 0, done.stderr
    assert {(r["pid"], r["label"]) for r in done.events} == {(inside.pid, 1)}
    [leaky] = on(done.events, "leaky")
    assert (leaky["count"], leaky["bytes"], leaky["comm"]) == (100, 102_400, "leak")
    assert on(done.events, "clean") == []
    # received counts entries, clean()'s emptied one too (a zero value makes no record)
    assert channel_counts(done.stderr)[1] == 0
