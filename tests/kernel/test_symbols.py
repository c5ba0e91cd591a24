"""The symbolizer on real processes (root: /proc/PID/map_files) and the real /proc/kallsyms.

Each process is started here and blocks on stdin; its function addresses come from its own
/proc/PID/maps (read by the test) plus ``nm``; the process is killed before the frames are
named, so the names can only come from the snapshot taken while it lived.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loader.symbols import Symbolizer

BURN = r"""
#include <unistd.h>
int burn_leaf(int n) { volatile int x = 0; for (int i = 0; i < n; i++) x += i; return x; }
int burn_mid(int n) { return burn_leaf(n) + 1; }
int main(void) { char c; burn_mid(10); write(1, "ready\n", 6); return read(0, &c, 1) < 0; }
"""
LIBX = "int x_work(int n) { volatile int x = n; return x * 3; }\n"


def sh(*cmd: str | Path) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True).stdout


def nm(path: Path, *flags: str) -> dict[str, int]:
    out = {}
    for line in sh("nm", *flags, "--defined-only", path).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwWiI":
            out.setdefault(parts[2].split("@")[0], int(parts[0], 16))
    return out


def load_base(pid: int, path: Path) -> int:
    """Where the file is mapped: the start of its offset-0 mapping (ELF vaddr 0 for PIE/.so)."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        f = line.split()
        if len(f) >= 6 and f[5] == str(path) and int(f[2], 16) == 0:
            return int(f[0].split("-")[0], 16)
    raise AssertionError(f"{path} is not mapped by {pid}")


def start(binary: Path) -> subprocess.Popen:
    """Run ``binary`` until its main has run (it says "ready"; libc is mapped by then)."""
    p = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    return p


def kill(p: subprocess.Popen) -> None:
    p.kill()
    p.wait(timeout=10)


@pytest.fixture(scope="module")
def burn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("burn")
    (d / "burn.c").write_text(BURN)
    sh("gcc", "-O0", "-fno-omit-frame-pointer", "-fpie", "-pie", "-o", d / "burn", d / "burn.c")
    return d / "burn"


def test_exited_process_frames_still_named(burn: Path) -> None:
    p = start(burn)
    try:
        sym = Symbolizer()
        sym.seen(p.pid)
        base = load_base(p.pid, burn)
        libc = next(Path(x) for x in Path(f"/proc/{p.pid}/maps").read_text().split()
                    if x.startswith("/") and "/libc.so" in x)
        libc_base = load_base(p.pid, libc)
    finally:
        kill(p)
    assert not Path(f"/proc/{p.pid}").exists()
    v, lc = nm(burn), nm(libc, "-D")
    addrs = [base + v["burn_leaf"] + 4, base + v["burn_mid"] + 4, base + v["main"] + 4,
             libc_base + lc["read"] + 2]
    assert sym.user(p.pid, addrs) == ["burn_leaf", "burn_mid", "main", f"{libc.name}:read"]


def test_deleted_binary_named_after_exit(burn: Path, tmp_path: Path) -> None:
    copy = tmp_path / "burn_gone"
    shutil.copy(burn, copy)
    p = start(copy)
    try:
        base = load_base(p.pid, copy)
        copy.unlink()  # maps now says "(deleted)"; only /proc/PID/map_files still opens it
        sym = Symbolizer()
        sym.seen(p.pid)
    finally:
        kill(p)
    v = nm(burn)
    assert sym.user(p.pid, [base + v["burn_leaf"] + 4, base + 0x10]) == [
        "burn_leaf", "burn_gone+0x10"]


def test_miss_rereads_maps_of_a_live_process(tmp_path: Path) -> None:
    (tmp_path / "libx.c").write_text(LIBX)
    lib = tmp_path / "libx.so"
    sh("gcc", "-O0", "-shared", "-fpic", "-o", lib, tmp_path / "libx.c")
    script = ("import ctypes, sys\nsys.stdin.readline()\nctypes.CDLL(sys.argv[1])\n"
              "print('loaded', flush=True)\nsys.stdin.readline()\n")
    p = subprocess.Popen([sys.executable, "-c", script, str(lib)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        sym = Symbolizer()
        sym.seen(p.pid)  # before the dlopen: the snapshot has no libx.so
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline() == "loaded\n"
        addr = load_base(p.pid, lib) + nm(lib)["x_work"] + 4
        assert sym.user(p.pid, [addr]) == ["libx.so:x_work"]
    finally:
        kill(p)


def test_kernel_addresses_from_kallsyms() -> None:
    rows = []
    for line in Path("/proc/kallsyms").read_text().splitlines():
        f = line.split()
        if f[1] in "tT" and int(f[0], 16):
            rows.append((int(f[0], 16), f[2] + (f" {f[3]}" if len(f) > 3 else "")))
    if not rows:
        pytest.skip("kptr_restrict hides kernel addresses here")
    rows.sort()
    # Symbols alone at their address with at least 0x40 bytes before the next one.
    alone = {n: a for (a, n), (b, _m) in zip(rows, rows[1:]) if b - a >= 0x40}
    counts: dict[int, int] = {}
    for a, _n in rows:
        counts[a] = counts.get(a, 0) + 1
    alone = {n: a for n, a in alone.items() if counts[a] == 1}
    picks = [n for n in ("do_nanosleep", "tcp_v4_rcv", "schedule") if n in alone]
    picks += [n for n in alone if "[" in n][:2]  # module symbols, when modules are loaded
    assert picks
    sym = Symbolizer()
    got = sym.kernel([alone[n] + 0x1A for n in picks])
    assert got == [f"{n}+0x1a" for n in picks]
    assert sym.kernel([0x1000]) == ["[unknown]"]
