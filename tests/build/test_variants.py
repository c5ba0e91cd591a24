"""One compile per variant, checked per kernel: real clang, the three reference kernels' BTF.

Bundles here are written the usual libbpf way (vmlinux.h, bpf_helpers.h, bpf_core_read.h)."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from builder.compile import build_program, plan_build, reference_for
from builder.toolchain import find_toolchain
from loader.artifacts.sources import program_source_digest
from loader.artifacts.store import LocalStore
from loader.errors import BuildError, KernelRefused
from loader.model.manifest import load_bundle
from tests.build.test_build import _target, reference_kernels

pytestmark = pytest.mark.skipif(len(reference_kernels()) < 3, reason="needs ../shared/kernels")

SOURCE = """// SPDX-License-Identifier: GPL-2.0
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";
unsigned long seen;

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	seen = BPF_CORE_READ(task, FIELD);
	return 0;
}
"""


def _bundle(dest: Path, field: str = "tgid", headers: str | None = None, source: str = SOURCE) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "prog.bpf.c").write_text(source.replace("FIELD", field))
    (dest / "manifest.yaml").write_text(
        "kind: ebpfprogram\nname: prog\nspec:\n  programs:\n    - name: prog\n"
        "      path: file://./prog.bpf.c\n      type: ebpf_object\n"
        + (f"      headers: {headers}\n" if headers else ""))
    return dest


@pytest.fixture(scope="module")
def kernels():
    return {btf.name.removesuffix(".btf"): _target(btf) for btf in reference_kernels()}


def _plans(bundle: Path, kernels, tmp_path: Path):
    manifest = load_bundle(bundle)
    targets = list(kernels.values())
    ref = reference_for(targets)["x86_64"]
    tc = find_toolchain(tmp_path / "cache")
    return {r: plan_build(manifest, manifest.kernel_programs[0], t, tc, reference=ref)
            for r, t in kernels.items()}


def test_the_reference_is_the_newest_kernel_and_unused_defines_are_no_variant(kernels, tmp_path) -> None:
    assert str(reference_for(list(kernels.values()))["x86_64"].identity) == "6.18.44-fc-v669/x86_64"
    plans = _plans(_bundle(tmp_path / "a"), kernels, tmp_path)
    # 6.1 and 6.12 have kprobes and 6.18 does not, but the sources never name the define
    assert len({p.object_key for p in plans.values()}) == 1
    assert len({p.key for p in plans.values()}) == 3  # one record per kernel
    named = SOURCE.replace("char LICENSE", "#ifdef BPFDEPOT_HAVE_KPROBE\n#endif\nchar LICENSE")
    plans = _plans(_bundle(tmp_path / "b", source=named), kernels, tmp_path)
    keys = {r: p.object_key for r, p in plans.items()}
    assert keys["6.1.0-50-amd64"] == keys["6.12.100+deb12-amd64"] != keys["6.18.44-fc-v669"]
    per = _plans(_bundle(tmp_path / "c", headers="per-kernel"), kernels, tmp_path)
    assert len({p.object_key for p in per.values()}) == 3
    assert {r: p.header_source for r, p in per.items()} == {r: f"{r}/x86_64" for r in per}


def test_one_compile_serves_three_kernels_and_each_gets_its_record(kernels, tmp_path) -> None:
    store, tc = LocalStore(tmp_path / "store"), find_toolchain(tmp_path / "cache")
    manifest = load_bundle(_bundle(tmp_path / "b"))
    ref = kernels["6.18.44-fc-v669"]
    built = {r: build_program(store, manifest, manifest.kernel_programs[0], t, tc,
                              tmp_path / "cache", reference=ref) for r, t in kernels.items()}
    assert [b.cached for b in built.values()] == [False, True, True]  # compiled once, first
    assert len({b.meta.digest for b in built.values()}) == 1
    assert {r: b.meta.target.release for r, b in built.items()} == {r: r for r in built}
    assert {b.meta.extra["reference"] for b in built.values()} == {"6.18.44-fc-v669/x86_64"}


def test_a_newer_field_is_refused_on_older_kernels_with_its_name(kernels, tmp_path) -> None:
    store, tc = LocalStore(tmp_path / "store"), find_toolchain(tmp_path / "cache")
    manifest = load_bundle(_bundle(tmp_path / "n", field="throttled"))
    ref = kernels["6.18.44-fc-v669"]
    prog = manifest.kernel_programs[0]
    assert build_program(store, manifest, prog, ref, tc, tmp_path / "cache", reference=ref)
    for release in ("6.1.0-50-amd64", "6.12.100+deb12-amd64"):
        with pytest.raises(KernelRefused) as err:
            build_program(store, manifest, prog, kernels[release], tc, tmp_path / "cache",
                          reference=ref)
        assert err.value.message.startswith(f"'prog' is refused for kernel {release}/x86_64 "
                                            "(relocation check): ")
        assert "struct task_struct has no field 'throttled'" in err.value.message
        # asked again, the recorded refusal answers without a check
        with pytest.raises(KernelRefused):
            build_program(store, manifest, prog, kernels[release], tc, tmp_path / "cache",
                          reference=ref)


def test_a_vendored_header_is_a_source_and_needs_no_kernel(kernels, tmp_path) -> None:
    bundle = _bundle(tmp_path / "v", headers="bundle")
    header = subprocess.run(["bpftool", "btf", "dump", "file", str(kernels["6.12.100+deb12-amd64"].btf),
                             "format", "c"], capture_output=True, check=True).stdout
    (bundle / "vmlinux.h").write_bytes(header)
    manifest = load_bundle(bundle)
    store, tc = LocalStore(tmp_path / "store"), find_toolchain(tmp_path / "cache")
    built = build_program(store, manifest, manifest.kernel_programs[0], kernels["6.1.0-50-amd64"],
                          tc, tmp_path / "cache", reference=kernels["6.18.44-fc-v669"])
    assert built.meta.extra["reference"] == "the bundle's vmlinux.h"
    assert "src/vmlinux.h" in built.meta.inputs
    before = program_source_digest(manifest, "prog")
    (bundle / "vmlinux.h").write_bytes(header + b"\n/* edited */\n")
    assert program_source_digest(load_bundle(bundle), "prog") != before
    # without a vmlinux.h beside the sources, `headers: bundle` is refused by name
    bare = load_bundle(_bundle(tmp_path / "w", headers="bundle"))
    with pytest.raises(BuildError, match="says `headers: bundle`, but no vmlinux.h"):
        plan_build(bare, bare.kernel_programs[0], kernels["6.1.0-50-amd64"], tc)


def test_a_kernel_known_to_lack_a_feature_is_refused(kernels, tmp_path) -> None:
    store, tc = LocalStore(tmp_path / "store"), find_toolchain(tmp_path / "cache")
    manifest = load_bundle(_bundle(tmp_path / "f"))
    lacking = dataclasses.replace(kernels["6.12.100+deb12-amd64"], absent=frozenset({"tracepoint"}))
    with pytest.raises(KernelRefused, match=r"lacks tracepoint \(program on_getppid"):
        build_program(store, manifest, manifest.kernel_programs[0], lacking, tc, tmp_path / "cache")


def test_the_build_command_reports_refused_kernels_and_goes_on(tmp_path) -> None:
    import os
    import sys

    bundle = _bundle(tmp_path / "cli", field="throttled")
    env = {**os.environ, "BPFDEPOT_HOME": str(tmp_path / "home")}
    kernels = [a for btf in reference_kernels() for a in ("--kernel-btf", str(btf))]
    done = subprocess.run([sys.executable, "-m", "builder.cli", "build", str(bundle), *kernels],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    rows = {line.split()[1]: line.split()[2] for line in done.stdout.splitlines()}
    assert rows == {"6.1.0-50-amd64/x86_64": "REFUSED", "6.12.100+deb12-amd64/x86_64": "REFUSED",
                    "6.18.44-fc-v669/x86_64": rows["6.18.44-fc-v669/x86_64"]}
    assert rows["6.18.44-fc-v669/x86_64"].startswith("sha256:")
    assert done.stderr.count("struct task_struct has no field 'throttled'") == 2
    only_old = [a for btf in reference_kernels()[:2] for a in ("--kernel-btf", str(btf))]
    old = subprocess.run([sys.executable, "-m", "builder.cli", "build", str(bundle), *only_old],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).parents[2])
    # for 6.1 and 6.12 alone the newest header is 6.12's: clang itself names the field
    assert old.returncode == 8 and "no member named 'throttled'" in old.stderr
    # compiled against the bundle's own 6.18 header, it is refused on each: the build fails
    vendored = _bundle(tmp_path / "cli-vendored", field="throttled", headers="bundle")
    (vendored / "vmlinux.h").write_bytes(subprocess.run(
        ["bpftool", "btf", "dump", "file", str(reference_kernels()[2]), "format", "c"],
        capture_output=True, check=True).stdout)
    nowhere = subprocess.run([sys.executable, "-m", "builder.cli", "build", str(vendored), *only_old],
                             capture_output=True, text=True, env=env, cwd=Path(__file__).parents[2])
    assert nowhere.returncode == 8, nowhere.stderr
    assert "prog refused on every target kernel" in nowhere.stderr
