"""``bpfdepot.lock``: for each program and each target kernel, the artifact and meta digests.

A lock is written whole or not at all (temp file + rename), only when every pin resolves. A
node with ``--locked`` loads exactly the pinned digests for its kernel, checked against their
sha256, and never falls through to another artifact or a compile.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from loader.artifacts.meta import ArtifactMeta, index_ref, read_index, read_meta
from loader.artifacts.sheets import SheetView
from loader.errors import ArtifactNotFound, BlobNotFound, ManifestError, StoreError
from loader.kernel.probe import KernelIdentity
from loader.model.manifest import Manifest
from loader.artifacts.sources import program_source_digest
from loader.programs.bpftrace_scripts import read_script, script_digest
from loader.artifacts.store import ArtifactStore
from loader.model.yamldoc import read_bounded

LOCK_NAME = "bpfdepot.lock"
LOCK_VERSION = 1
MAX_LOCK_BYTES = 16 << 20  # ~50,000 pins: a lock is never near this; a bigger file is not one


@dataclass(frozen=True, slots=True, kw_only=True)
class Pin:
    program: str
    target: str      # "<arch>-<btf digest>"
    release: str
    artifact: str    # sha256:… of the object
    meta: str        # sha256:… of its meta.json, or its address in a verdict sheet


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """A (program, kernel) the farm refused: nothing is pinned for it, and this says why."""

    program: str
    target: str
    release: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Lock:
    name: str
    pins: tuple[Pin, ...]
    refused: tuple[Refusal, ...] = ()

    def pin(self, program: str, kernel: KernelIdentity) -> Pin | None:
        target = f"{kernel.arch}-{kernel.btf_digest}"
        return next((p for p in self.pins if p.program == program and p.target == target), None)


def lock_path(manifest: Manifest) -> Path:
    return manifest.root / LOCK_NAME


def make_lock(store: ArtifactStore, manifest: Manifest, kernels: list[KernelIdentity],
              releases: dict[str, str]) -> Lock:
    """Pin what the store holds for every (program × kernel): the build of each ebpf_object
    source and the check of each bpftrace_object script. A kernel the farm refused a program
    for (its relocation check or load test) is left out and listed with the reason; raise
    naming all that was never built."""
    pins, missing, refused = [], [], []
    for program in manifest.programs:
        if program.type == "ebpf_object" and program.is_source:
            src = program_source_digest(manifest, program.name)
        elif program.type == "bpftrace_object" and program.local_path is not None:
            # a script is pinned like an object: its check for each kernel (blob = the script)
            src = script_digest(read_script(program))
        else:
            continue
        sheets = SheetView.of(store, program.name, src)  # listed once, not once per kernel
        for kernel in kernels:
            found = read_index(store, index_ref(program.name, src, kernel), sheets=sheets)
            release = releases.get(f"{kernel.arch}-{kernel.btf_digest}", kernel.release)
            if isinstance(found, dict):  # the farm refused it for this kernel
                reasons = found.get("reasons") or ["refused"]
                refused.append(Refusal(program=program.name, release=release,
                                       target=f"{kernel.arch}-{kernel.btf_digest}",
                                       reason=str(reasons[0]).splitlines()[0]))
                continue
            if found is None:
                missing.append(f"{program.name} on {release}/{kernel.arch}")
                continue
            meta, meta_digest = found
            pins.append(Pin(program=program.name, target=f"{kernel.arch}-{kernel.btf_digest}",
                            release=release, artifact=meta.digest, meta=meta_digest))
    if missing:
        raise ArtifactNotFound(
            f"cannot lock '{manifest.name}': not built for {len(missing)} target(s): "
            + ", ".join(missing[:8]) + (" …" if len(missing) > 8 else ""),
            hint=f"build them first: bpfdepot submit {manifest.root} --kernels all --wait "
                 "(nothing was written)")
    if not pins and refused:
        raise ArtifactNotFound(
            f"cannot lock '{manifest.name}': every kernel was refused, e.g. {refused[0].program} "
            f"on {refused[0].release}: {refused[0].reason}",
            hint="see the verdicts: bpfdepot submit BUNDLE --wait (nothing was written)")
    return Lock(name=manifest.name, pins=tuple(sorted(pins, key=lambda p: (p.program, p.release))),
                refused=tuple(sorted(refused, key=lambda r: (r.program, r.release))))


def write_lock(path: Path, lock: Lock) -> None:
    doc: dict[str, object] = {"version": LOCK_VERSION, "name": lock.name,
                              "pins": [asdict(p) for p in lock.pins]}
    if lock.refused:  # for people and nodes: why a kernel has no pin
        doc["refused"] = [asdict(r) for r in lock.refused]
    write_json(path, doc)


def write_json(path: Path, doc: object) -> None:
    """``doc`` as indented JSON at ``path``, whole or not at all: a synced temp file beside it,
    renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=1, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_lock(path: Path) -> Lock:
    if not path.exists():
        raise ArtifactNotFound(f"no {LOCK_NAME} beside {path.parent}",
                               hint=f"write one: bpfdepot lock {path.parent} --kernels all")
    raw = read_bounded(path, what="lock", error_class=ManifestError, limit=MAX_LOCK_BYTES,
                       hint=f"write it again: bpfdepot lock {path.parent} --kernels all")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}", hint="write it again with bpfdepot lock") from exc
    if body.get("version") != LOCK_VERSION:
        raise ManifestError(f"{path}: lock version {body.get('version')} is not {LOCK_VERSION}",
                            hint="write it again with this bpfdepot: bpfdepot lock")
    try:
        pins = tuple(Pin(**p) for p in body["pins"])
        refused = tuple(Refusal(**r) for r in body.get("refused", ()))
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"{path}: malformed pin: {exc}", hint="write it again with bpfdepot lock") from exc
    return Lock(name=body.get("name", ""), pins=pins, refused=refused)


def load_pin(store: ArtifactStore, pin: Pin) -> tuple[ArtifactMeta, Path]:
    """The pinned meta and a verified local copy of the pinned object."""
    try:
        meta = read_meta(store, pin.meta)  # read_blob checks the sha256
    except BlobNotFound:
        raise ArtifactNotFound(
            f"lock pins meta {pin.meta} for '{pin.program}' on {pin.release}, but {store} does not "
            "hold it", hint="build it again and write the lock again: bpfdepot submit BUNDLE "
            "--wait && bpfdepot lock BUNDLE --kernels all") from None
    if meta.digest != pin.artifact:
        raise StoreError(f"lock pins {pin.artifact} for '{pin.program}' on {pin.release}, but meta "
                         f"{pin.meta} describes {meta.digest}",
                         hint="the lock was edited or the store is inconsistent: write the lock again")
    return meta, store.blob_path(pin.artifact)
