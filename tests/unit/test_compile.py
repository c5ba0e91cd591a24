"""The pure parts of builder/compile.py: clang's flags, its messages mapped back to the user's
files, and the check that clang read nothing outside the scratch folder and system headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.compile import SHARED_INCLUDE, Missing, _check_deps, _missing_file, _user_paths, bpf_flags
from loader.errors import BuildError
from loader.model.manifest import ProgramSpec

PROGRAM = ProgramSpec(name="demo", path="file://./demo.bpf.c", type="ebpf_object", scheme="file",
                      local_path=None, is_source=True, line=3)


@pytest.mark.parametrize("arch,define", [
    ("x86_64", "x86"), ("aarch64", "arm64"), ("s390x", "s390"), ("ppc64le", "powerpc"),
    ("riscv64", "riscv"), ("armv7l", "arm"), ("loongarch64", "loongarch"),
])
def test_bpf_flags_per_arch(arch: str, define: str) -> None:
    assert bpf_flags(arch) == ("-g", "-O2", "-target", "bpf", f"-D__TARGET_ARCH_{define}", "-Wall",
                               "-Wno-unused-function", "-Wno-compare-distinct-pointer-types")


def test_bpf_flags_unknown_arch() -> None:
    with pytest.raises(BuildError) as exc:
        bpf_flags("sparc64")
    assert exc.value.message == "cannot build BPF programs for arch 'sparc64'"
    assert exc.value.hint == "known: aarch64, armv7l, loongarch64, ppc64le, riscv64, s390x, x86_64"
    assert exc.value.exit_code == 8


def test_user_paths_point_clang_messages_at_the_users_files(tmp_path: Path) -> None:
    scratch, root = Path("/tmp/bpfdepot/tmp/build-x1y2"), tmp_path / "bundle"
    text = (
        f"In file included from {scratch}/src/demo.bpf.c:3:\n"
        f"{scratch}/include/bpfdepot.h:30:9: warning: unused [-Wunused]\n"
        "src/sub/helpers.h:7:1: error: expected ';'\n"
        "vmlinux/vmlinux.h:12:1: note: previous definition\n"
        "/usr/include/bpf/bpf_helpers.h:5:1: note: kept as it is\n"
        "mysrc/x.h:1:1: kept too, as is lib/include/y.h:2:2\n"
    )
    assert _user_paths(text, scratch, root) == (
        f"In file included from {root}/demo.bpf.c:3:\n"
        f"{SHARED_INCLUDE}/bpfdepot.h:30:9: warning: unused [-Wunused]\n"
        f"{root}/sub/helpers.h:7:1: error: expected ';'\n"
        "vmlinux/vmlinux.h:12:1: note: previous definition\n"
        "/usr/include/bpf/bpf_helpers.h:5:1: note: kept as it is\n"
        "mysrc/x.h:1:1: kept too, as is lib/include/y.h:2:2\n"
    )


def test_user_paths_does_not_map_twice(tmp_path: Path) -> None:
    # a bundle that has its own include/ folder: src/include/x.h is the bundle's, not the shared one
    root = tmp_path / "bundle"
    assert _user_paths("src/include/x.h:1:1: error\n", tmp_path / "s", root) == f"{root}/include/x.h:1:1: error\n"


def _scratch(tmp_path: Path, deps: str) -> Path:
    scratch = tmp_path / "build-1"
    (scratch / "src").mkdir(parents=True)
    (scratch / "deps.d").write_text(deps)
    return scratch


def test_check_deps_accepts_scratch_files_and_system_headers(tmp_path: Path) -> None:
    scratch = _scratch(tmp_path, "out.bpf.o: src/demo.bpf.c src/sub/../demo.h include/bpfdepot.h \\\n"
                                 "  vmlinux/vmlinux.h /usr/include/bpf/bpf_helpers.h \\\n"
                                 "  /usr/lib/llvm-14/lib/clang/14.0.6/include/stdint.h\n")
    _check_deps(scratch, PROGRAM)  # no error


@pytest.mark.parametrize("dep,shown", [
    ("/etc/hostname", "/etc/hostname"),
    ("src/../../escape.h", "{tmp}/escape.h"),
    ("/usr/includes/evil.h", "/usr/includes/evil.h"),  # a prefix of /usr/include, not inside it
])
def test_check_deps_rejects_files_outside(tmp_path: Path, dep: str, shown: str) -> None:
    scratch = _scratch(tmp_path, f"out.bpf.o: src/demo.bpf.c \\\n {dep}\n")
    with pytest.raises(BuildError) as exc:
        _check_deps(scratch, PROGRAM)
    path = shown.format(tmp=tmp_path.resolve())
    assert exc.value.message == f"program 'demo' reads {path}, outside its bundle and the toolchain's headers"
    assert exc.value.hint == "include only files inside the bundle or from bpf/include"


def test_check_deps_follows_symlinks_out_of_the_scratch(tmp_path: Path) -> None:
    (tmp_path / "secret.h").write_text("")
    scratch = _scratch(tmp_path, "out.bpf.o: src/demo.bpf.c src/link.h\n")
    (scratch / "src" / "link.h").symlink_to(tmp_path / "secret.h")
    with pytest.raises(BuildError, match=f"program 'demo' reads {tmp_path.resolve()}/secret.h, outside"):
        _check_deps(scratch, PROGRAM)


def test_check_deps_with_the_scratch_behind_a_symlink(tmp_path: Path) -> None:
    real = _scratch(tmp_path, "out.bpf.o: src/demo.bpf.c include/bpfdepot.h\n")
    link = tmp_path / "home-link"
    link.symlink_to(real)
    _check_deps(link, PROGRAM)  # the same folder seen through a symlink: still inside


ROOT = Path("/home/me/bundle")


@pytest.mark.parametrize("stderr, expected", [
    # a system header including one that -target bpf has no path for: missing, not "outside"
    ("/usr/include/linux/types.h:5:10: fatal error: 'asm/types.h' file not found\n",
     Missing(name="asm/types.h", shown="asm/types.h", by="/usr/include/linux/types.h", outside=False,
             system=True)),
    ('src/x.bpf.c:1:10: fatal error: \'/etc/secret.h\' file not found\n',
     Missing(name="/etc/secret.h", shown="/etc/secret.h", by="src/x.bpf.c", outside=True, system=False)),
    ("src/x.bpf.c:1:10: fatal error: '../up.h' file not found\n",
     Missing(name="../up.h", shown="/home/me/up.h", by="src/x.bpf.c", outside=True, system=False)),
    ("src/x.bpf.c:2:10: fatal error: 'typo.h' file not found\n", None),  # clang's words suffice
])
def test_missing_files_are_told_apart(stderr: str, expected: Missing | None) -> None:
    assert _missing_file(stderr, ROOT) == expected
