"""vmlinux.h precompiled (builder/pch.py): real clang in the sandbox, real kernel BTF.

The promise is that a PCH changes only the time a compile takes: every catalog program that may
use it compiles to the same bytes with and without it, a program whose leading #define the
header reads never uses it, a PCH clang refuses is dropped and the compile still succeeds, and
a compile error reads the same file:line either way."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import builder.compile as compile_mod
from builder.compile import build_program, compile_object, plan_build
from builder.pch import defines_before_vmlinux, leads_with_vmlinux
from builder.toolchain import find_toolchain
from loader.artifacts.store import LocalStore
from loader.errors import BuildError
from loader.model.manifest import load_bundle
from tests.build.test_build import _target, reference_kernels

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not reference_kernels(), reason="needs ../shared/kernels")

LIBBPF_STYLE = """// SPDX-License-Identifier: GPL-2.0
/* a program written the usual libbpf way */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";
int calls;

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
	__sync_fetch_and_add(&calls, 1);
	return 0;
}
"""


def _bundle(dest: Path, source: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "prog.bpf.c").write_text(source)
    (dest / "manifest.yaml").write_text(
        "kind: ebpfprogram\nname: prog\nspec:\n  programs:\n    - name: prog\n"
        "      path: file://./prog.bpf.c\n      type: ebpf_object\n")
    return dest


@pytest.fixture(scope="module")
def target():
    return _target(reference_kernels()[-1])


@pytest.fixture(scope="module")
def toolchain(tmp_path_factory):
    return find_toolchain(tmp_path_factory.mktemp("toolchain"))


def _pchs(cache: Path) -> list[Path]:
    return sorted((cache / "vmlinux").glob("*.pch"))


def test_the_leading_include_is_recognised() -> None:
    assert defines_before_vmlinux(b'// c\n/* x\n y */\n#include "vmlinux.h"\n') == ()
    assert defines_before_vmlinux(b"#define BPFDEPOT_FILTER\n#include <vmlinux.h>\n") == ("BPFDEPOT_FILTER",)
    assert defines_before_vmlinux(b'#include <linux/bpf.h>\n#include "vmlinux.h"\n') is None
    assert defines_before_vmlinux(b'#define F(x) x\n#include "vmlinux.h"\n') is None  # function-like
    assert defines_before_vmlinux(b'#ifdef X\n#include "vmlinux.h"\n#endif\n') is None
    assert defines_before_vmlinux(b"int x;\n") is None


def test_every_catalog_program_compiles_to_the_same_bytes(tmp_path: Path, target, toolchain) -> None:
    cache = tmp_path / "cache"
    used = 0
    for manifest_file in sorted((ROOT / "bpf").glob("*/manifest.yaml")):
        manifest = load_bundle(manifest_file.parent)
        for program in manifest.kernel_programs:
            if program.local_path is None or not program.is_source:
                continue
            plan = plan_build(manifest, program, target, toolchain)
            objects = []
            for with_pch in (True, False):
                store = LocalStore(tmp_path / f"{manifest.name}-{program.name}-{with_pch}")
                if not with_pch:
                    saved, compile_mod.header_pch = compile_mod.header_pch, lambda *a, **k: None
                try:
                    built = compile_object(store, plan, cache)
                finally:
                    if not with_pch:
                        compile_mod.header_pch = saved
                objects.append(store.read_blob(built.meta.digest))
            assert objects[0] == objects[1], f"{manifest.name}/{program.name} differs with the PCH"
            entry = next(f for f in plan.files if f.name == plan.entry)
            used += leads_with_vmlinux(entry.data, cache / "vmlinux" / f"{target.identity.btf_digest}.h")
    assert used >= 25  # nearly all of the catalog: the saving is real
    assert len(_pchs(cache)) >= 1


def test_a_define_the_header_reads_keeps_the_plain_compile(tmp_path: Path, target, toolchain) -> None:
    # vmlinux.h reads BPF_NO_PRESERVE_ACCESS_INDEX: defined first, it changes the header's meaning
    bundle = _bundle(tmp_path / "b", "#define BPF_NO_PRESERVE_ACCESS_INDEX\n" + LIBBPF_STYLE)
    manifest = load_bundle(bundle)
    cache = tmp_path / "cache"
    build_program(LocalStore(tmp_path / "store"), manifest, manifest.kernel_programs[0], target,
                  toolchain, cache)
    assert _pchs(cache) == []


def test_a_refused_pch_is_dropped_and_the_compile_succeeds(tmp_path: Path, target, toolchain) -> None:
    manifest = load_bundle(_bundle(tmp_path / "b", LIBBPF_STYLE))
    program = manifest.kernel_programs[0]
    cache = tmp_path / "cache"
    first = build_program(LocalStore(tmp_path / "s1"), manifest, program, target, toolchain, cache)
    [pch] = _pchs(cache)
    header = cache / "vmlinux" / f"{target.identity.btf_digest}.h"
    os.utime(header, ns=(1, 1))  # clang: "has been modified since the precompiled header was built"
    second = build_program(LocalStore(tmp_path / "s2"), manifest, program, target, toolchain, cache)
    assert second.meta.digest == first.meta.digest
    assert not pch.exists()  # dropped: the next compile builds it again
    build_program(LocalStore(tmp_path / "s3"), manifest, program, target, toolchain, cache)
    assert len(_pchs(cache)) == 1


def test_a_compile_error_reads_the_same_with_the_pch(tmp_path: Path, target, toolchain) -> None:
    broken = LIBBPF_STYLE.replace("__sync_fetch_and_add(&calls, 1);", "calls += undefined_name;")
    manifest = load_bundle(_bundle(tmp_path / "b", broken))
    program = manifest.kernel_programs[0]
    errors = []
    for cache in (tmp_path / "with", tmp_path / "without"):
        if cache.name == "without":
            saved, compile_mod.header_pch = compile_mod.header_pch, lambda *a, **k: None
        try:
            with pytest.raises(BuildError) as caught:
                build_program(LocalStore(cache / "store"), manifest, program, target, toolchain,
                              cache / "cache")
        finally:
            if cache.name == "without":
                compile_mod.header_pch = saved
        errors.append(caught.value.detail)
    assert len(_pchs(tmp_path / "with" / "cache")) == 1
    assert re.search(r"prog\.bpf\.c:12:\d+: error: use of undeclared identifier .undefined_name.", errors[0])
    assert errors[0] == errors[1]
