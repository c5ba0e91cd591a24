"""The checked script of a bpftrace program for this kernel, found and verified before anything
starts (loader/programs/bpftrace.py runs it).

    lock pin     ``bpfdepot.lock`` pins the meta and the script per kernel (``--locked``: nothing
                 else); the pinned meta must describe the pinned script
    store index  the check of these script bytes for this kernel (builder/bpftrace.py made it)
    on the host  the caller's ``check`` (the builder, wired in by the CLI)

A stored script is verified before it is handed to bpftrace: its sha256 is its name, and it is
the script (source digest) the meta says was checked for this kernel. A tampered copy is refused
with the object named; nothing is started.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_SCRIPT_BYTES = 256 << 10   # a .bt larger than this is refused at build (untrusted input)


def script_digest(data: bytes) -> str:
    """The source digest of a script: what the build is stored under and the node looks up."""
    return hashlib.sha256(b"bpftrace_object\0" + data).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckedScript:
    """A bpftrace program of the bundle, checked for this kernel: its stored script and meta."""

    name: str
    path: Path
    meta: Any  # loader.artifacts.meta.ArtifactMeta (imported late: no import cycle)
    fields: tuple[str, ...] = ()  # the manifest's names for a printed line's words


def read_script(program: Any) -> bytes:
    """The bytes of a bpftrace_object's local file, bounded (untrusted input)."""
    from loader.errors import ArtifactNotFound, ManifestError

    if program.local_path is None:
        raise ArtifactNotFound(f"bpftrace program '{program.name}': {program.path} is not a local "
                               "file", hint="copy the .bt into the bundle: path: file://./NAME.bt")
    size = program.local_path.stat().st_size
    if size > MAX_SCRIPT_BYTES:
        raise ManifestError(f"bpftrace program '{program.name}': {program.local_path} is {size} B, "
                            f"more than the {MAX_SCRIPT_BYTES} B a script may have",
                            hint="split it into several programs")
    return program.local_path.read_bytes()


def verified_script(store: Any, meta: Any, kernel: Any, what: str) -> Path:
    """The stored script of a bpftrace ``meta``, after checking that it is one, that it was
    checked for ``kernel``, and that the stored bytes are the script the meta names (their
    sha256, and the source digest the check was made for); a StoreError/KernelUnsupported
    naming ``what`` otherwise, before anything starts."""
    from loader.errors import KernelUnsupported, StoreError

    if meta.kind != "bpftrace_object":
        raise StoreError(f"{what} is a {meta.kind}, not a bpftrace_object",
                         hint="the lock or the store is inconsistent: write the lock again")
    if (meta.target.arch, meta.target.btf_digest) != (kernel.arch, kernel.btf_digest):
        raise KernelUnsupported(f"{what} was checked for {meta.target}, not for this kernel "
                                f"{kernel}", hint="run the artifact checked for this kernel "
                                "(bpfdepot lock lists them), or the bundle")
    data = store.read_blob(meta.digest)  # BlobCorrupt when the bytes are not the digest's
    if script_digest(data) != meta.source_digest:
        raise StoreError(f"{what}: the stored script {meta.digest} is not the script its meta "
                         f"was checked for (source {meta.source_digest[:19]}…)",
                         hint="the store is inconsistent: check the script again (bpfdepot build)")
    return store.blob_path(meta.digest)


def resolve_scripts(store: Any, manifest: Any, kernel: Any, *,
                    check: Callable[[Any, Any, Any], Any] | None = None,
                    locked: bool = False) -> list[CheckedScript]:
    """Each bpftrace_object of ``manifest`` for ``kernel``: the one ``bpfdepot.lock`` pins (when
    the bundle has a lock; with ``locked`` nothing else), else the store's check of this script,
    else ``check(manifest, program, kernel)`` (the builder's, on this host), else
    ArtifactNotFound naming the build command. Every stored script is verified first."""
    from loader.artifacts.lock import load_pin, lock_path, read_lock
    from loader.artifacts.meta import index_ref, lookup
    from loader.errors import ArtifactNotFound

    lock_file = lock_path(manifest)
    lock = read_lock(lock_file) if locked or lock_file.exists() else None
    out = []
    for program in manifest.programs:
        if program.type != "bpftrace_object":
            continue
        pin = lock.pin(program.name, kernel) if lock else None
        if pin is not None:
            meta, _ = load_pin(store, pin)
            path = verified_script(store, meta, kernel, f"{lock_file}: the pin of '{program.name}' "
                                   f"for {pin.release} ({pin.artifact[:19]}…)")
            out.append(CheckedScript(name=program.name, path=path, meta=meta,
                                     fields=program.fields))
            continue
        if locked:
            raise ArtifactNotFound(
                f"{lock_file} pins no check of bpftrace program '{program.name}' for {kernel} "
                f"(btf {kernel.btf_digest[:12]}); --locked runs nothing else",
                hint=f"check and pin it: bpfdepot submit {manifest.root} --kernels "
                     f"'release={kernel.release}' --wait && bpfdepot lock {manifest.root} --kernels all")
        ref = index_ref(program.name, script_digest(read_script(program)), kernel)
        found = lookup(store, ref)
        if found is not None and not store.has_blob(found[0].digest):
            found = None  # lost or damaged: checking again writes it back
        if found is not None:
            meta = found[0]
        elif check is None:
            raise ArtifactNotFound(f"bpftrace program '{program.name}' was never checked for "
                                   f"{kernel}", hint=f"run: bpfdepot build {manifest.root}")
        else:
            meta = check(manifest, program, kernel)
        out.append(CheckedScript(name=program.name, path=store.blob_path(meta.digest), meta=meta,
                                 fields=program.fields))
    return out


def stored_script(store: Any, meta: Any, meta_digest: str, kernel: Any) -> CheckedScript:
    """``bpfdepot run sha256:…`` of a bpftrace artifact: its verified script (no manifest, so
    printed lines that are not JSON stay {"text": …}). One script checked for several kernels
    is one blob: named by that digest, the check made for this kernel is the one used."""
    from loader.artifacts.meta import index_ref, lookup

    if meta.kind == "bpftrace_object" and meta.target.btf_digest != kernel.btf_digest:
        found = lookup(store, index_ref(meta.name, meta.source_digest, kernel))
        if found is not None and found[0].digest == meta.digest:
            meta = found[0]
    path = verified_script(store, meta, kernel, f"artifact {meta_digest} ('{meta.name}')")
    return CheckedScript(name=meta.name, path=path, meta=meta)
