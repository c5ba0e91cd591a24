"""Verdict sheets (loader/artifacts/sheets.py): one compile's verdicts for many kernels in one
write, read back as each kernel's meta, byte for byte, wherever a meta digest goes."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from loader.artifacts.lock import load_pin, make_lock
from loader.artifacts.meta import ArtifactMeta, by_digest, index_ref, read_index, read_meta
from loader.artifacts.sheets import SheetView, publish_sheet, sheet_prefix, target_key
from loader.artifacts.sources import program_source_digest
from loader.artifacts.store import LocalStore, digest_of
from loader.errors import StoreError
from loader.kernel.probe import KernelIdentity
from loader.model.manifest import load_bundle

K = [KernelIdentity(release=r, arch="x86_64", btf_digest=c * 64)
     for r, c in (("6.1.0-50-amd64", "a"), ("6.12.100+deb12-amd64", "b"), ("6.18.44", "c"))]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def bundle(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.bpf.c").write_text("// x\n")
    (tmp_path / "b" / "manifest.yaml").write_text(
        "kind: ebpfprogram\nname: demo\nspec:\n  programs:\n"
        "    - {name: x, path: file://./x.bpf.c, type: ebpf_object}\n")
    manifest = load_bundle(tmp_path / "b")
    return manifest.root, program_source_digest(manifest, "x")


def meta_for(store: LocalStore, kernel: KernelIdentity, src: str, *, obj: bytes = b"\x7fELF x") -> ArtifactMeta:
    """What the farm checks for a kernel: the compile's meta with the kernel's key, target and
    check record (nested lists and tuples, as the relocation record has)."""
    return ArtifactMeta(
        name="x", kind="bpf_object", key=f"key-{kernel.btf_digest[:8]}", digest=store.put_blob(obj),
        size=len(obj), source_digest=src, target=kernel, toolchain={"clang": "14"},
        flags=("-g", "-O2"), inputs={"x.bpf.c": "d" * 64},
        programs=({"name": "p", "section": "tp/sched/sched_switch", "insns": 12},),
        maps=({"name": "events", "type": "ringbuf", "sizes": (0, 0)},), channels={},
        required_features=("tracepoint",), license="GPL",
        extra={"object_key": "ok1", "relocations": {"checked": 3, "fields": [("task_struct", "pid")]},
               "check": {"version": 2, "absent": []}, "reference": "6.18.44"})


def refusal(kernel: KernelIdentity, why: str, object_key: str = "ok1") -> dict:
    return {"ok": False, "kernel": str(kernel), "program": "x", "object_key": object_key,
            "stage": "check", "reasons": [why]}


def test_each_kernel_reads_back_its_own_meta_byte_for_byte(store: LocalStore, tmp_path: Path) -> None:
    _, src = bundle(tmp_path)
    metas = {target_key(k): meta_for(store, k, src) for k in K[1:]}
    sheet = publish_sheet(store, program="x", source_digest=src, object_key="ok1", metas=metas,
                          refused={target_key(K[0]): refusal(K[0], "no field task_struct.x on 6.1")})
    assert store.list_refs("sheets") == [f"{sheet_prefix('x', src)}/{sheet.removeprefix('sha256:')}"]
    assert store.list_refs("index") == []  # one write for every kernel, none of its own
    for kernel in K[1:]:
        found = read_index(store, index_ref("x", src, kernel))
        assert isinstance(found, tuple)
        meta, address = found
        assert address == f"{sheet}#x86_64-{kernel.btf_digest}"
        original = metas[target_key(kernel)]
        # the same bytes as a meta blob of its own: signatures and nodes recompute its digest
        assert meta.to_json() == original.to_json()
        assert read_meta(store, address).to_json() == original.to_json()
        assert by_digest(store, address)[1] == address
    refused = read_index(store, index_ref("x", src, K[0]))
    assert refused == refusal(K[0], "no field task_struct.x on 6.1")
    other = KernelIdentity(release="5.15", arch="x86_64", btf_digest="e" * 64)
    assert read_index(store, index_ref("x", src, other)) is None
    assert read_index(store, index_ref("y", src, K[1])) is None


def test_an_address_the_sheet_does_not_hold_or_a_damaged_sheet_is_a_store_error(store: LocalStore) -> None:
    sheet = publish_sheet(store, program="x", source_digest="s" * 64, object_key="ok1",
                          metas={target_key(K[2]): meta_for(store, K[2], "s" * 64)}, refused={})
    with pytest.raises(StoreError, match=f"verdict sheet {sheet} holds no artifact for kernel x86_64-a"):
        read_meta(store, f"{sheet}#{target_key(K[0])}")
    with pytest.raises(StoreError, match="bad digest|not a valid|digest"):
        read_meta(store, "sha256:nothex#x86_64-a")
    not_a_sheet = store.put_blob(b'{"kind": "something else"}')
    with pytest.raises(StoreError, match=f"{not_a_sheet} in .* is not a verdict sheet of version 1"):
        read_meta(store, f"{not_a_sheet}#{target_key(K[0])}")


def test_metas_of_one_compile_that_differ_beyond_their_kernel_are_not_one_sheet(store: LocalStore) -> None:
    one, two = meta_for(store, K[1], "s" * 64), meta_for(store, K[2], "s" * 64, obj=b"\x7fELF y")
    with pytest.raises(ValueError, match="differ beyond"):
        publish_sheet(store, program="x", source_digest="s" * 64, object_key="ok1",
                      metas={target_key(K[1]): one, target_key(K[2]): two}, refused={})


def test_a_kernels_own_index_ref_wins_then_the_newest_pass_then_a_refusal(store: LocalStore) -> None:
    src = "s" * 64
    old = meta_for(store, K[2], src)
    new = replace(meta_for(store, K[2], src, obj=b"\x7fELF newer"), extra={**old.extra, "object_key": "ok2"})
    first = publish_sheet(store, program="x", source_digest=src, object_key="ok1",
                          metas={target_key(K[2]): old}, refused={target_key(K[1]): refusal(K[1], "old")})
    time.sleep(0.001)
    second = publish_sheet(store, program="x", source_digest=src, object_key="ok2",
                           metas={target_key(K[2]): new, target_key(K[1]): replace(new, target=K[1])},
                           refused={})
    time.sleep(0.001)
    publish_sheet(store, program="x", source_digest=src, object_key="ok3", metas={},
                  refused={target_key(K[2]): refusal(K[2], "newer compile refused", "ok3")})
    view = SheetView.of(store, "x", src)
    assert view.targets() == {target_key(K[1]), target_key(K[2])}
    # a pass wins over a newer refusal (as at an index ref); the newest pass wins
    assert view.verdict(target_key(K[2]))[1] == f"{second}#{target_key(K[2])}"
    assert view.verdict(target_key(K[1]))[1] == f"{second}#{target_key(K[1])}"
    assert first != second
    # a kernel's own index ref (a load test's, a local build's) is read before any sheet
    own = store.put_blob(old.to_json())
    store.set_ref(index_ref("x", src, K[2]), own)
    meta, digest = read_index(store, index_ref("x", src, K[2]))
    assert (meta.to_json(), digest) == (old.to_json(), own)


def test_the_lock_pins_a_sheets_address_and_a_locked_node_loads_it(store: LocalStore, tmp_path: Path) -> None:
    root, src = bundle(tmp_path)
    metas = {target_key(k): meta_for(store, k, src) for k in K[1:]}
    sheet = publish_sheet(store, program="x", source_digest=src, object_key="ok1", metas=metas,
                          refused={target_key(K[0]): refusal(K[0], "no field task_struct.x on 6.1")})
    lock = make_lock(store, load_bundle(root), K, {})
    assert [(p.release, p.meta) for p in lock.pins] == [
        (k.release, f"{sheet}#{target_key(k)}") for k in K[1:]]
    assert [(r.release, r.reason) for r in lock.refused] == [(K[0].release, "no field task_struct.x on 6.1")]
    for pin in lock.pins:
        meta, path = load_pin(store, pin)
        assert meta.to_json() == metas[pin.target].to_json() and path.read_bytes() == b"\x7fELF x"
    # the sheet is checked by its digest like any blob: an edited one is refused
    blob = store._blob(sheet)
    body = json.loads(blob.read_bytes())
    body["metas"][target_key(K[2])]["target"]["release"] = "forged"
    blob.write_bytes(json.dumps(body).encode())
    from loader.artifacts import sheets
    sheets._PARSED.clear()
    with pytest.raises(StoreError):
        load_pin(store, lock.pins[1])
    assert digest_of(blob.read_bytes()) != sheet


def test_a_pass_in_a_sheet_wins_over_a_refusal_at_the_index_ref(store: LocalStore) -> None:
    """A refusal never replaces a pass: neither one written at the index ref, nor one read there."""
    src = "s" * 64
    refused = store.put_blob(json.dumps(refusal(K[2], "an older compile was refused")).encode())
    store.set_ref(index_ref("x", src, K[2]), refused)
    assert read_index(store, index_ref("x", src, K[2]))["reasons"] == ["an older compile was refused"]
    sheet = publish_sheet(store, program="x", source_digest=src, object_key="ok2",
                          metas={target_key(K[2]): meta_for(store, K[2], src)}, refused={})
    assert read_index(store, index_ref("x", src, K[2]))[1] == f"{sheet}#{target_key(K[2])}"
