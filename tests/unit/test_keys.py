"""Cache keys: the source closure and its digest, the build key, refs and kernel identity.

A key must change when anything that determines the object's bytes changes, and only then;
the same inputs anywhere on disk give the same key (a node and the farm must agree).
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest

import builder.compile as compile_mod
from builder.compile import Target, bpf_flags, build_key, build_program
from builder.toolchain import Toolchain
from loader.artifacts.meta import ArtifactMeta, build_ref, index_ref
from loader.kernel.probe import KernelIdentity
from loader.model.manifest import ProgramSpec, load_bundle
from loader.artifacts.sources import SourceFile, files_digest, source_closure, source_digest
from loader.artifacts.store import LocalStore

ENTRY = b"""\
// SPDX-License-Identifier: GPL-2.0
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <angle.h>
#include "a.h"
  #  include "shared.h"
#include "missing.h"
// #include "commented.h"
char LICENSE[] SEC("license") = "GPL";
"""
A_H = b'#pragma once\n#include "sub/b.h"\n'
B_H = b'#pragma once\n#include "../a.h"  /* a cycle: visited once */\nstruct ev { int x; };\n'
SHARED_H = b"#pragma once\n#define SHARED 1\n"

TOOLCHAIN = Toolchain(clang=Path("/usr/bin/clang"), clang_version="clang 14",
                      bpftool=Path("/usr/sbin/bpftool"), libbpf_version="1.1")
KERNEL = KernelIdentity(release="6.1.0-50-amd64", arch="x86_64", btf_digest="ab" * 32)


def make_tree(base: Path) -> tuple[Path, Path, Path]:
    """A bundle and an include dir under ``base``; returns (entry, bundle root, include dir)."""
    bundle, inc = base / "bundle", base / "inc"
    (bundle / "sub").mkdir(parents=True)
    inc.mkdir()
    (bundle / "prog.bpf.c").write_bytes(ENTRY)
    (bundle / "a.h").write_bytes(A_H)
    (bundle / "sub" / "b.h").write_bytes(B_H)
    (bundle / "vmlinux.h").write_bytes(b"/* generated per kernel: not a source */\n")
    (bundle / "angle.h").write_bytes(b"/* only reachable with <>: the toolchain's */\n")
    (bundle / "commented.h").write_bytes(b"/* only named in a comment */\n")
    (bundle / "unused.h").write_bytes(b"/* included by nothing */\n")
    (inc / "shared.h").write_bytes(SHARED_H)
    return bundle / "prog.bpf.c", bundle, inc


def closure(base: Path) -> list[SourceFile]:
    entry, bundle, inc = make_tree(base)
    return source_closure(entry, bundle, [inc])


def program(name: str = "prog", local_path: Path | None = None) -> ProgramSpec:
    return ProgramSpec(name=name, path=f"file://./{name}.bpf.c", type="ebpf_object", scheme="file",
                       local_path=local_path, is_source=True, line=3)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_closure_follows_quoted_includes_only(tmp_path: Path) -> None:
    files = closure(tmp_path)
    bundle = (tmp_path / "bundle").resolve()
    assert [(f.name, f.path, f.data) for f in files] == [
        ("include/shared.h", (tmp_path / "inc" / "shared.h").resolve(), SHARED_H),
        ("src/a.h", bundle / "a.h", A_H),
        ("src/prog.bpf.c", bundle / "prog.bpf.c", ENTRY),
        ("src/sub/b.h", bundle / "sub" / "b.h", B_H),
    ]


def test_header_next_to_the_includer_wins_over_the_include_dir(tmp_path: Path) -> None:
    entry, bundle, inc = make_tree(tmp_path)
    (bundle / "shared.h").write_bytes(b"/* the bundle's own */\n")
    names = [f.name for f in source_closure(entry, bundle, [inc])]
    assert names == ["src/a.h", "src/prog.bpf.c", "src/shared.h", "src/sub/b.h"]


def test_header_outside_every_root_is_left_out(tmp_path: Path) -> None:
    entry, bundle, inc = make_tree(tmp_path)
    (tmp_path / "outside.h").write_bytes(b"/* neither bundle nor include dir */\n")
    entry.write_bytes(ENTRY + b'#include "../outside.h"\n')
    names = [f.name for f in source_closure(entry, bundle, [inc])]
    assert names == ["include/shared.h", "src/a.h", "src/prog.bpf.c", "src/sub/b.h"]


def test_files_digest_names_every_file(tmp_path: Path) -> None:
    assert files_digest(closure(tmp_path)) == {
        "include/shared.h": sha(SHARED_H),
        "src/a.h": sha(A_H),
        "src/prog.bpf.c": sha(ENTRY),
        "src/sub/b.h": sha(B_H),
    }


def test_source_digest_is_stable_and_independent_of_location(tmp_path: Path) -> None:
    files = closure(tmp_path / "one")
    digest = source_digest(files)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert source_digest(files) == digest
    assert source_digest(list(reversed(files))) == digest
    # the same tree copied elsewhere (a node vs the farm) gives the same names and digest
    shutil.copytree(tmp_path / "one", tmp_path / "elsewhere" / "deeper")
    moved = source_closure(tmp_path / "elsewhere" / "deeper" / "bundle" / "prog.bpf.c",
                           tmp_path / "elsewhere" / "deeper" / "bundle",
                           [tmp_path / "elsewhere" / "deeper" / "inc"])
    assert files_digest(moved) == files_digest(files)
    assert source_digest(moved) == digest
    # and the bundle alone moved, with the include dir where it was
    shutil.copytree(tmp_path / "one" / "bundle", tmp_path / "two")
    alone = source_closure(tmp_path / "two" / "prog.bpf.c", tmp_path / "two", [tmp_path / "one" / "inc"])
    assert source_digest(alone) == digest


def test_files_outside_the_closure_do_not_change_the_digest(tmp_path: Path) -> None:
    entry, bundle, inc = make_tree(tmp_path)
    before = source_digest(source_closure(entry, bundle, [inc]))
    for name in ("vmlinux.h", "angle.h", "commented.h", "unused.h"):
        (bundle / name).write_bytes(b"changed\n")
    (inc / "other.h").write_bytes(b"new\n")
    assert source_digest(source_closure(entry, bundle, [inc])) == before


def test_a_missing_header_becomes_part_of_the_closure_once_it_exists(tmp_path: Path) -> None:
    entry, bundle, inc = make_tree(tmp_path)
    before = source_digest(source_closure(entry, bundle, [inc]))
    (bundle / "missing.h").write_bytes(b"/* now here */\n")
    files = source_closure(entry, bundle, [inc])
    assert "src/missing.h" in [f.name for f in files]
    assert source_digest(files) != before


def test_renaming_a_file_changes_the_digest(tmp_path: Path) -> None:
    files = closure(tmp_path)
    renamed = [dataclasses.replace(f, name=f.name.replace("sub/", "sub2/")) for f in files]
    assert source_digest(renamed) != source_digest(files)


def test_one_byte_in_an_included_header_changes_source_digest_and_build_key(tmp_path: Path) -> None:
    entry, bundle, inc = make_tree(tmp_path)
    flags = bpf_flags("x86_64")
    files = source_closure(entry, bundle, [inc])
    digest, key = source_digest(files), build_key(program(), files_digest(files), flags, TOOLCHAIN, KERNEL)

    (bundle / "sub" / "b.h").write_bytes(B_H.replace(b"int x", b"int y"))
    files2 = source_closure(entry, bundle, [inc])
    assert files_digest(files2)["src/sub/b.h"] == sha(B_H.replace(b"int x", b"int y"))
    assert source_digest(files2) != digest
    assert build_key(program(), files_digest(files2), flags, TOOLCHAIN, KERNEL) != key

    (bundle / "sub" / "b.h").write_bytes(B_H)  # back as it was: back to the same digest and key
    files3 = source_closure(entry, bundle, [inc])
    assert source_digest(files3) == digest
    assert build_key(program(), files_digest(files3), flags, TOOLCHAIN, KERNEL) == key

    (inc / "shared.h").write_bytes(SHARED_H + b" ")  # the shared include dir counts as well
    assert source_digest(source_closure(entry, bundle, [inc])) != digest


INPUTS = {"src/prog.bpf.c": "1" * 64, "include/bpfdepot.h": "2" * 64}
FLAGS = ("-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86")


def key_of(**change: object) -> str:
    args: dict[str, object] = {"program": program(), "inputs": INPUTS, "flags": FLAGS,
                               "toolchain": TOOLCHAIN, "target": KERNEL}
    args.update(change)
    return build_key(**args)  # type: ignore[arg-type]


def test_build_key_is_the_same_for_identical_inputs() -> None:
    key = key_of()
    assert key == key_of()
    assert key == key_of(inputs=dict(reversed(list(INPUTS.items()))))  # dict order is not content
    assert key == key_of(program=program(local_path=Path("/elsewhere/prog.bpf.c")))
    assert len(key) == 64 and int(key, 16) >= 0


def test_build_key_golden_value() -> None:
    # Changing how keys are made orphans every stored build: make it a deliberate change.
    assert key_of() == "98054badad39fed6c8304a2ac4f709bd5095ff3c8c25892aafbf0db0b58ea667"


@pytest.mark.parametrize("change", [
    {"toolchain": dataclasses.replace(TOOLCHAIN, clang_version="clang 15")},
    {"toolchain": dataclasses.replace(TOOLCHAIN, libbpf_version="1.2")},
    {"target": dataclasses.replace(KERNEL, btf_digest="cd" * 32)},
    {"target": dataclasses.replace(KERNEL, arch="aarch64")},
    {"flags": FLAGS + ("-DDEBUG",)},
    {"flags": ("-O2", "-g") + FLAGS[2:]},  # flag order is part of the command line
    {"flags": bpf_flags("aarch64")},
    {"inputs": {**INPUTS, "src/prog.bpf.c": "3" * 64}},
    {"inputs": {**INPUTS, "src/extra.h": "4" * 64}},
    {"inputs": {"src/renamed.bpf.c": "1" * 64, "include/bpfdepot.h": "2" * 64}},
    {"program": program(name="other")},
], ids=["clang", "libbpf", "btf", "arch", "flag-added", "flag-order", "flags-arch", "input-bytes",
        "input-added", "input-renamed", "program-name"])
def test_build_key_changes_with_each_input(change: dict[str, object]) -> None:
    assert key_of(**change) != key_of()


@pytest.mark.parametrize("change", [
    {"toolchain": dataclasses.replace(TOOLCHAIN, clang=Path("/opt/llvm/bin/clang"))},
    {"toolchain": dataclasses.replace(TOOLCHAIN, bpftool=Path("/usr/local/sbin/bpftool"))},
    {"target": dataclasses.replace(KERNEL, release="custom-name")},
], ids=["clang-path", "bpftool-path", "release-name"])
def test_build_key_ignores_what_does_not_change_the_bytes(change: dict[str, object]) -> None:
    # where the tools live and what the kernel is called: same versions, same BTF, same object
    assert key_of(**change) == key_of()


def test_refs_and_kernel_identity() -> None:
    assert build_ref("f" * 64) == "builds/" + "f" * 64
    assert index_ref("tcp_connlat", "1" * 64, KERNEL) == f"index/tcp_connlat/{'1' * 64}/x86_64-{'ab' * 32}"
    assert KERNEL.key == "6.1.0-50-amd64-x86_64-abababababababab"
    assert str(KERNEL) == "6.1.0-50-amd64/x86_64"
    assert KERNEL == KernelIdentity(release="6.1.0-50-amd64", arch="x86_64", btf_digest="ab" * 32)
    assert hash(KERNEL) == hash(dataclasses.replace(KERNEL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        KERNEL.arch = "aarch64"  # type: ignore[misc]


# ---- build_program's cache path: a known key returns its artifact and never compiles ------

MANIFEST = """\
kind: ebpfprogram
name: demo
spec:
  programs:
    - name: demo
      path: file://./demo.bpf.c
      type: ebpf_object
  channels:
    events:
      type: ring_buffer
"""


class Compiled(Exception):
    """Raised by the stand-in for vmlinux_header: the build went past the cache."""


@pytest.fixture
def no_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> Path:
        raise Compiled()
    monkeypatch.setattr(compile_mod, "vmlinux_header", refuse)


def _bundle(tmp_path: Path, manifest: str) -> Path:
    folder = tmp_path / "demo"
    folder.mkdir(exist_ok=True)
    (folder / "demo.bpf.c").write_text('#include "vmlinux.h"\nchar LICENSE[] SEC("license") = "GPL";\n')
    (folder / "manifest.yaml").write_text(manifest)
    return folder


def _target(tmp_path: Path, kernel: KernelIdentity = KERNEL) -> Target:
    return Target(identity=kernel, btf=tmp_path / "none.btf")


def _seed(store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, str]:
    """Publish, at the index ref nodes read, a meta for the demo bundle's plan on KERNEL, as a
    finished build would; return (record key, source digest, meta digest)."""
    from builder.verdicts import _checked_for

    manifest = load_bundle(_bundle(tmp_path, MANIFEST))
    prog = manifest.program("demo")
    plan = compile_mod.plan_build(manifest, prog, _target(tmp_path), TOOLCHAIN)
    files = source_closure(prog.local_path, manifest.root, [compile_mod.SHARED_INCLUDE])
    meta = ArtifactMeta(
        name="demo", kind="bpf_object", key=plan.key, digest=store.put_blob(b"object"), size=6,
        source_digest=source_digest(files, manifest.channel_decls), target=KERNEL, toolchain=TOOLCHAIN.as_dict(),
        flags=bpf_flags(KERNEL.arch), inputs=files_digest(files), programs=(), maps=(),
        channels={"events": {"type": "ring_buffer", "map_type": "ringbuf", "event": "ev",
                             "event_size": 8, "layout": []}},
        required_features=("ringbuf",), license="GPL",
        extra={"object_key": plan.object_key, "check": _checked_for(plan)})
    meta_digest = store.put_blob(meta.to_json())
    store.set_ref(index_ref("demo", plan.source_digest, KERNEL), meta_digest)
    return plan.key, plan.source_digest, meta_digest


def test_known_build_key_returns_the_artifact_without_compiling(
        tmp_path: Path, no_compile: None, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "store")
    key, src, meta_digest = _seed(store, tmp_path, monkeypatch)
    manifest = load_bundle(tmp_path / "demo")
    built = build_program(store, manifest, manifest.program("demo"), _target(tmp_path), TOOLCHAIN,
                          tmp_path / "cache")
    assert (built.cached, built.meta_digest, built.meta.key) == (True, meta_digest, key)
    # a node finds it by sources and kernel
    assert store.get_ref(index_ref("demo", src, KERNEL)) == meta_digest


def test_unknown_build_key_goes_on_to_compile(
        tmp_path: Path, no_compile: None, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "store")
    _seed(store, tmp_path, monkeypatch)
    manifest = load_bundle(tmp_path / "demo")
    other = dataclasses.replace(KERNEL, btf_digest="cd" * 32)
    with pytest.raises(Compiled):
        build_program(store, manifest, manifest.program("demo"), _target(tmp_path, other), TOOLCHAIN,
                      tmp_path / "cache")


def test_changed_channel_declaration_is_not_served_from_the_cache(
        tmp_path: Path, no_compile: None, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "store")
    _seed(store, tmp_path, monkeypatch)  # built when the manifest said nothing about the event struct
    manifest = load_bundle(_bundle(tmp_path, MANIFEST + "      event: other_event\n"))
    assert manifest.channels[0].event == "other_event"
    # the cached meta says channel 'events' carries 'ev' and was never checked against
    # 'other_event'; it must be rebuilt (and re-validated), not returned as it is
    with pytest.raises(Compiled):
        build_program(store, manifest, manifest.program("demo"), _target(tmp_path), TOOLCHAIN,
                      tmp_path / "cache")
