"""The symbolizer on ELF files built here with gcc and maps texts written here (no process).

Runtime addresses are computed independently of the code under test: symbol values from
``nm``, PT_LOAD segments from ``readelf -lW``, laid out the way the kernel maps them into a
maps text this test writes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from loader.symbols import Symbolizer
from loader.symbols.elf import ElfSymbols, read_build_id
from loader.symbols.maps import parse_maps, parse_perf_map

if not shutil.which("gcc"):
    pytest.skip("the symbolizer tests build ELF files with gcc", allow_module_level=True)

BURN = r"""
#include <unistd.h>
int burn_leaf(int n) { volatile int x = 0; for (int i = 0; i < n; i++) x += i; return x; }
int burn_mid(int n) { return burn_leaf(n) + 1; }
int main(void) { char c; burn_mid(10); return read(0, &c, 1) < 0; }
"""
LIBX = "int x_work(int n) { volatile int x = n; return x * 3; }\n"
APP = "int x_work(int);\nint main(void) { return x_work(2) == 6 ? 0 : 1; }\n"
CXX = "namespace shop { int price(int n) { return n * 2; } }\nint main() { return shop::price(1) - 2; }\n"
PIE_BASE, LIB_BASE = 0x5555_5555_4000, 0x7F00_0000_0000
PAGE = 0x1000


def sh(*cmd: str | Path) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True).stdout


def nm(path: Path, *flags: str) -> dict[str, int]:
    out = {}
    for line in sh("nm", *flags, "--defined-only", path).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            out[parts[2].split("@")[0]] = int(parts[0], 16)
    return out


def maps_lines(path: Path, base: int, inode: int) -> list[str]:
    """The maps lines the kernel would show for ``path`` loaded at ``base`` (0: non-PIE)."""
    lines = []
    for line in sh("readelf", "-lW", path).splitlines():
        f = line.split()
        if not f or f[0] != "LOAD":
            continue
        off, vaddr, memsz = int(f[1], 16), int(f[2], 16), int(f[5], 16)
        flags = "".join(f[6:-1])
        perms = ("r" if "R" in flags else "-") + ("w" if "W" in flags else "-") + \
                ("x" if "E" in flags else "-") + "p"
        lo = base + (vaddr & ~(PAGE - 1))
        hi = base + ((vaddr + memsz + PAGE - 1) & ~(PAGE - 1))
        lines.append(f"{lo:x}-{hi:x} {perms} {off & ~(PAGE - 1):08x} 08:01 {inode} {path}")
    return lines


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("elves")
    (d / "burn.c").write_text(BURN)
    (d / "libx.c").write_text(LIBX)
    (d / "app.c").write_text(APP)
    common = ["-O0", "-g0", "-fno-omit-frame-pointer", "-Wl,--build-id"]
    sh("gcc", *common, "-fpie", "-pie", "-o", d / "burn", d / "burn.c")
    sh("gcc", *common, "-fno-pie", "-no-pie", "-o", d / "burn_nopie", d / "burn.c")
    sh("gcc", *common, "-rdynamic", "-o", d / "burn_dyn", d / "burn.c")
    for src in ("burn", "burn_dyn"):
        shutil.copy(d / src, d / f"{src}_stripped")
        sh("strip", "--strip-all", d / f"{src}_stripped")
    sh("gcc", *common, "-shared", "-fpic", "-o", d / "libx.so", d / "libx.c")
    sh("gcc", *common, "-o", d / "app", d / "app.c", f"-L{d}", "-lx")
    return {p.name: p for p in d.iterdir()}


def test_pie_binary_names_each_function(built: dict[str, Path]) -> None:
    sym = Symbolizer()
    sym.load_maps(1 << 30, "\n".join(maps_lines(built["burn"], PIE_BASE, 11)))
    v = nm(built["burn"])
    addrs = [PIE_BASE + v[f] + 4 for f in ("burn_leaf", "burn_mid", "main")]
    assert sym.user(1 << 30, addrs) == ["burn_leaf", "burn_mid", "main"]


def test_non_pie_binary(built: dict[str, Path]) -> None:
    sym = Symbolizer()
    sym.load_maps(1 << 30, "\n".join(maps_lines(built["burn_nopie"], 0, 12)))
    v = nm(built["burn_nopie"])
    assert v["main"] >= 0x400000  # really linked at its fixed address
    assert sym.user(1 << 30, [v["burn_leaf"] + 1, v["burn_mid"]]) == ["burn_leaf", "burn_mid"]


def test_stripped_binary_is_named_by_file_and_elf_address(built: dict[str, Path]) -> None:
    stripped = built["burn_stripped"]
    assert ElfSymbols.load(stripped).source == ""  # .dynsym holds only imports here
    v = nm(built["burn"])  # same code, same layout: the unstripped twin's addresses
    sym = Symbolizer()
    sym.load_maps(1 << 30, "\n".join(maps_lines(stripped, PIE_BASE, 13)))
    got = sym.user(1 << 30, [PIE_BASE + v["burn_leaf"] + 4])
    assert got == [f"burn_stripped+0x{v['burn_leaf'] + 4:x}"]


def test_stripped_binary_keeps_its_dynsym(built: dict[str, Path]) -> None:
    stripped = built["burn_dyn_stripped"]
    assert ElfSymbols.load(stripped).source == ".dynsym"
    v = nm(built["burn_dyn_stripped"], "-D")
    sym = Symbolizer()
    sym.load_maps(1 << 30, "\n".join(maps_lines(stripped, PIE_BASE, 14)))
    assert sym.user(1 << 30, [PIE_BASE + v["burn_leaf"] + 2]) == ["burn_leaf"]


def test_shared_library_frames_carry_the_library_name(built: dict[str, Path]) -> None:
    lines = maps_lines(built["app"], PIE_BASE, 15) + maps_lines(built["libx.so"], LIB_BASE, 16)
    sym = Symbolizer()
    sym.load_maps(1 << 30, "\n".join(lines))
    lib, app = nm(built["libx.so"]), nm(built["app"])
    got = sym.user(1 << 30, [LIB_BASE + lib["x_work"] + 4, PIE_BASE + app["main"] + 4])
    assert got == ["libx.so:x_work", "main"]


def test_symbol_tables_cached_by_build_id(built: dict[str, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    text = "\n".join(maps_lines(built["burn"], PIE_BASE, 11))
    addr = PIE_BASE + nm(built["burn"])["burn_mid"]
    sym = Symbolizer(cache_dir=tmp_path)
    sym.load_maps(1 << 30, text)
    sym.load_maps((1 << 30) + 1, text)  # a second process of the same binary
    assert sym.user(1 << 30, [addr]) == sym.user((1 << 30) + 1, [addr]) == ["burn_mid"]
    bid = read_build_id(built["burn"])
    assert bid and len(sym._by_build_id) == 1
    assert (tmp_path / f"{bid}.sym").is_file()

    def no_parse(*_a: object, **_k: object) -> ElfSymbols:
        raise AssertionError("parsed the ELF again despite the disk cache")

    monkeypatch.setattr(ElfSymbols, "load", no_parse)
    again = Symbolizer(cache_dir=tmp_path)  # a second run
    again.load_maps(1 << 30, text)
    assert again.user(1 << 30, [addr]) == ["burn_mid"]


def test_replaced_file_is_not_named_with_the_new_files_symbols(built: dict[str, Path],
                                                               tmp_path: Path) -> None:
    target = tmp_path / "burn"
    shutil.copy(built["burn"], target)
    v = nm(target)
    sym = Symbolizer()
    sym.load_maps(1 << 30, "\n".join(maps_lines(target, PIE_BASE, 11)))
    shutil.copy(built["app"], target)  # replaced after the snapshot: another build-id
    assert sym.user(1 << 30, [PIE_BASE + v["burn_leaf"] + 4]) == [f"burn+0x{v['burn_leaf'] + 4:x}"]


def test_special_mappings_jit_and_gone(built: dict[str, Path], tmp_path: Path) -> None:
    pid = 1 << 30
    text = "\n".join([
        "7f00dead0000-7f00dead2000 rwxp 00000000 00:00 0 ",
        "7f00beef0000-7f00beef2000 rw-p 00000000 00:00 0 ",
        "7f00cafe0000-7f00cafe1000 r-xp 00001000 08:01 77 /opt/gone/app (deleted)",
        "555555600000-555555621000 rw-p 00000000 00:00 0                          [heap]",
        "7ffff7fc1000-7ffff7fc3000 r-xp 00000000 00:00 0                          [vdso]",
    ])
    (tmp_path / f"perf-{pid}.map").write_text("7f00dead0100 40 LazyCompile:*fib app.js:3\n")
    sym = Symbolizer(perf_map_dir=tmp_path)
    sym.load_maps(pid, text)
    got = sym.user(pid, [0x7F00DEAD0110, 0x7F00DEAD1000, 0x7F00BEEF0010, 0x7F00CAFE0010,
                         0x555555600020, 0x7FFFF7FC1500, 0x1234])
    assert got == ["LazyCompile:*fib app.js:3", "[anon]+0x1000", "[anon]+0x10", "app+0x1010",
                   "[heap]+0x20", "[vdso]", "[unknown]"]
    assert not any(re.fullmatch(r"(0x)?[0-9a-f]+", g) for g in got)


def test_unknown_pid_gives_unknown_frames() -> None:
    assert Symbolizer().user(1 << 30, [0x401000]) == ["[unknown]"]


def test_forget_drops_the_snapshot(built: dict[str, Path]) -> None:
    sym = Symbolizer()
    sym.load_maps(1 << 30, "\n".join(maps_lines(built["burn"], PIE_BASE, 11)))
    sym.forget(1 << 30)
    assert not sym.known(1 << 30)


def test_cxx_names_are_demangled(tmp_path: Path) -> None:
    pytest.importorskip("cxxfilt", reason="demangling needs cxxfilt (pip install bpfdepot[symbols])")
    if not shutil.which("g++"):
        pytest.skip("g++ is not installed")
    (tmp_path / "shop.cc").write_text(CXX)
    sh("g++", "-O0", "-fpie", "-pie", "-o", tmp_path / "shop", tmp_path / "shop.cc")
    mangled = [k for k in nm(tmp_path / "shop") if "price" in k]
    assert mangled == ["_ZN4shop5priceEi"]
    sym = Symbolizer()
    sym.load_maps(1 << 30, "\n".join(maps_lines(tmp_path / "shop", PIE_BASE, 5)))
    addr = PIE_BASE + nm(tmp_path / "shop")["_ZN4shop5priceEi"] + 1
    assert sym.user(1 << 30, [addr]) == ["shop::price(int)"]


def test_kernel_frames_with_offsets_and_modules(tmp_path: Path) -> None:
    ks = tmp_path / "kallsyms"
    ks.write_text("ffffffff81000000 T _stext\n"
                  "ffffffff81a2b300 T tcp_v4_rcv\n"
                  "ffffffff81a2c000 d some_data\n"
                  "ffffffffc0001000 t nf_hook_slow\t[nf_tables]\n")
    sym = Symbolizer(kallsyms=str(ks))
    got = sym.kernel([0xFFFFFFFF81A2B31A, 0xFFFFFFFF81A2C010, 0xFFFFFFFFC0001008, 0x400000,
                      0xFFFFFFFF80000000])
    assert got == ["tcp_v4_rcv+0x1a", "tcp_v4_rcv+0xd10", "nf_hook_slow [nf_tables]+0x8",
                   "[unknown]", "[unknown]"]


def test_parsers() -> None:
    maps = parse_maps("00400000-00401000 r-xp 00000000 08:01 42 /usr/bin/a b (deleted)\n")
    assert (maps[0].path, maps[0].deleted, maps[0].label) == ("/usr/bin/a b", True, "a b")
    assert parse_perf_map("1000 10 a b\nbad line here\n2000 8 c\n") == [
        (0x1000, 0x1010, "a b"), (0x2000, 0x2008, "c")]


def test_demangle_rust_and_plain_names() -> None:
    from loader.symbols.demangle import demangle

    assert demangle("burn_leaf") == "burn_leaf"
    pytest.importorskip("rust_demangler", reason="pip install bpfdepot[symbols]")
    assert demangle("_RNvCs1234_7mycrate3foo") == "mycrate::foo"
    assert demangle("_Rnot-valid") == "_Rnot-valid"
