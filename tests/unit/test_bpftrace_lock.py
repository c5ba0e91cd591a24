"""bpftrace scripts in ``bpfdepot.lock``: pinned per kernel like objects, resolved from the pin
(``--locked``: from nothing else), and verified before anything runs — a tampered stored
script, a meta naming another script, or a check for another kernel are refused by name. A
local store in a temporary folder; the "check" is published by hand as the builder does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from builder.compile import publish
from loader.artifacts.lock import lock_path, make_lock, read_lock, write_lock
from loader.artifacts.meta import ArtifactMeta, index_ref
from loader.artifacts.store import LocalStore
from loader.errors import ArtifactNotFound, BlobCorrupt, KernelUnsupported, StoreError
from loader.kernel.probe import KernelIdentity
from loader.model.manifest import load_bundle
from loader.programs.bpftrace import resolve_scripts, script_digest, stored_script

SCRIPT = b'tracepoint:syscalls:sys_enter_getppid\n{\n  printf("%d\\n", pid);\n}\n'
K1 = KernelIdentity(release="6.1.0-50-amd64", arch="x86_64", btf_digest="a" * 64)
K2 = KernelIdentity(release="6.18.44", arch="x86_64", btf_digest="b" * 64)


def bundle(tmp_path: Path, script: bytes = SCRIPT) -> Path:
    folder = tmp_path / "bundle"
    folder.mkdir(exist_ok=True)
    (folder / "x.bt").write_bytes(script)
    (folder / "manifest.yaml").write_text(
        "kind: ebpfprogram\nname: bt\nspec:\n  programs:\n"
        "    - {name: x, path: file://./x.bt, type: bpftrace_object, fields: [pid]}\n")
    return folder


def checked(store: LocalStore, kernel: KernelIdentity, script: bytes = SCRIPT) -> str:
    """Store ``script`` as checked for ``kernel`` (what builder/bpftrace.py publishes)."""
    digest = store.put_blob(script)
    meta = ArtifactMeta(name="x", kind="bpftrace_object", key=f"k-{kernel.btf_digest[:4]}",
                        digest=digest, size=len(script), source_digest=script_digest(script),
                        target=kernel, toolchain={"bpftrace": "v0.17.0"}, flags=(), inputs={},
                        programs=(), maps=(), channels={}, required_features=(), license="",
                        extra={"verdict": "ok"})
    return publish(store, meta, index_ref("x", script_digest(script), kernel))


def test_lock_pins_the_check_of_each_kernel_and_locked_resolves_the_pin(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    manifest = load_bundle(bundle(tmp_path))
    with pytest.raises(ArtifactNotFound) as missing:
        make_lock(store, manifest, [K1, K2], {})
    assert missing.value.message == ("cannot lock 'bt': not built for 2 target(s): "
                                     "x on 6.1.0-50-amd64/x86_64, x on 6.18.44/x86_64")
    metas = {k: checked(store, k) for k in (K1, K2)}
    lock = make_lock(store, manifest, [K1, K2], {})
    assert [(p.program, p.release, p.meta) for p in lock.pins] == [
        ("x", K1.release, metas[K1]), ("x", K2.release, metas[K2])]
    write_lock(lock_path(manifest), lock)
    assert read_lock(lock_path(manifest)) == lock

    [script] = resolve_scripts(store, manifest, K2, locked=True)
    assert script.path.read_bytes() == SCRIPT
    assert (script.name, script.fields, script.meta.target) == ("x", ("pid",), K2)
    # the pin wins over the store's index, even when the bundle's script has changed since
    (manifest.root / "x.bt").write_bytes(SCRIPT + b"// edited\n")
    assert resolve_scripts(store, load_bundle(manifest.root), K2,
                           locked=True)[0].path.read_bytes() == SCRIPT


def test_locked_without_a_pin_for_this_kernel_runs_nothing_else(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    manifest = load_bundle(bundle(tmp_path))
    checked(store, K1)
    write_lock(lock_path(manifest), make_lock(store, manifest, [K1], {}))
    checked(store, K2)  # in the store's index, but not pinned
    with pytest.raises(ArtifactNotFound) as caught:
        resolve_scripts(store, manifest, K2, locked=True)
    assert caught.value.message == (
        f"{lock_path(manifest)} pins no check of bpftrace program 'x' for 6.18.44/x86_64 "
        "(btf bbbbbbbbbbbb); --locked runs nothing else")
    # without --locked the store's check of these bytes is found
    assert resolve_scripts(store, manifest, K2)[0].meta.target == K2


def test_a_tampered_stored_script_is_refused_naming_the_blob(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    manifest = load_bundle(bundle(tmp_path))
    checked(store, K2)
    write_lock(lock_path(manifest), make_lock(store, manifest, [K2], {}))
    pin = read_lock(lock_path(manifest)).pins[0]
    blob = store.blob_path(pin.artifact)
    blob.chmod(0o644)
    blob.write_bytes(SCRIPT.replace(b"printf", b"system"))
    with pytest.raises(BlobCorrupt) as caught:
        resolve_scripts(store, manifest, K2, locked=True)
    assert caught.value.message.startswith(f"blob {pin.artifact} in ")
    assert "is corrupt" in caught.value.message and "nothing was loaded" in caught.value.message


def test_a_meta_that_names_another_script_or_kernel_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    meta_digest = checked(store, K2)
    meta = ArtifactMeta.from_json(store.read_blob(meta_digest), "meta")
    other = store.put_blob(b"BEGIN { exit(); }\n")  # a valid blob, but not the checked script
    forged = replace(meta, digest=other, key="forged")
    forged_digest = store.put_blob(forged.to_json())
    with pytest.raises(StoreError) as caught:
        stored_script(store, forged, forged_digest, K2)
    assert caught.value.message == (
        f"artifact {forged_digest} ('x'): the stored script {other} is not the script its meta "
        f"was checked for (source {meta.source_digest[:19]}…)")
    with pytest.raises(KernelUnsupported) as wrong_kernel:
        stored_script(store, meta, meta_digest, K1)
    assert wrong_kernel.value.message == (
        f"artifact {meta_digest} ('x') was checked for 6.18.44/x86_64, not for this kernel "
        "6.1.0-50-amd64/x86_64")
    with pytest.raises(StoreError) as not_a_script:
        stored_script(store, replace(meta, kind="bpf_object"), meta_digest, K2)
    assert not_a_script.value.message == f"artifact {meta_digest} ('x') is a bpf_object, not a " \
        "bpftrace_object"
    assert stored_script(store, meta, meta_digest, K2).path.read_bytes() == SCRIPT


def test_run_by_the_script_digest_uses_the_check_made_for_this_kernel(tmp_path: Path) -> None:
    """One script checked for two kernels is one blob whose meta-of names the first check."""
    store = LocalStore(tmp_path / "store")
    first = checked(store, K1)
    checked(store, K2)
    meta = ArtifactMeta.from_json(store.read_blob(first), "meta")
    script = stored_script(store, meta, meta.digest, K2)
    assert (script.meta.target, script.path.read_bytes()) == (K2, SCRIPT)
