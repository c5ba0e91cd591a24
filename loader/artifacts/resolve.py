"""Resolve a bundle's kernel programs and processors to loadable files on this node.

Order: the digest pinned in ``bpfdepot.lock`` for this kernel → the artifact the store's index
holds for these sources on this kernel → a compile on this host (when the caller passes
``Compilers``: the loader never imports the builder) → an error naming the command that builds
it. ``--locked`` stops after the first. A prebuilt ``.bpf.o`` in the manifest is read and
checked as it is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loader.artifacts.meta import ArtifactMeta, by_digest, index_ref, read_index
from loader.kernel.elf import check_object, object_channels, read_object_file
from loader.kernel.catalog import find_release
from loader.errors import ArtifactNotFound, BuildError, KernelUnsupported, ManifestError
from loader.kernel.probe import KernelIdentity, running_kernel
from loader.artifacts.lock import load_pin, lock_path, read_lock
from loader.model.manifest import Manifest, ProgramSpec
from loader.pipeline import ProcessorRuntime
from loader.session import Loadable
from loader.model.settings import Settings
from loader.artifacts.sources import program_source_digest
from loader.artifacts.store import ArtifactStore, digest_of


@dataclass(frozen=True, slots=True, kw_only=True)
class Compilers:
    """How this host builds what the store does not have (wired in by the CLI, from builder/)."""

    kernel: Callable[[Manifest, ProgramSpec, KernelIdentity], ArtifactMeta]
    processor: Callable[[Manifest, ProgramSpec, str], ArtifactMeta]


def node_identity(settings: Settings, store: ArtifactStore) -> KernelIdentity:
    """This kernel: from its BTF, or, on a node without BTF, from the farm's kernel catalog."""
    if settings.kernel_btf.exists():
        return running_kernel(settings.kernel_btf)
    uname = os.uname()
    entry = find_release(store, uname.release, uname.machine)
    if entry is None:
        raise KernelUnsupported(
            f"kernel {uname.release}/{uname.machine} exposes no BTF at {settings.kernel_btf} and "
            f"is not in the kernel catalog of {store}",
            hint="add its BTF to the catalog from its package: bpfdepot kernels add --package "
                 "linux-image-….deb --no-node-btf")
    return entry.identity


def _with_min_btf(settings: Settings, store: ArtifactStore, meta: ArtifactMeta, path: Path) -> Loadable:
    """Point libbpf at the artifact's own minimal BTF when this node has none."""
    min_btf = meta.extra.get("min_btf")
    if min_btf and not settings.kernel_btf.exists():
        return Loadable(meta=meta, path=path, btf_custom_path=store.blob_path(min_btf))
    return Loadable(meta=meta, path=path)


def resolve(settings: Settings, store: ArtifactStore, manifest: Manifest, kernel: KernelIdentity, *,
            compilers: Compilers | None = None, locked: bool = False) -> list[Loadable]:
    lock_file = lock_path(manifest)
    lock = read_lock(lock_file) if locked or lock_file.exists() else None
    out = []
    for program in manifest.kernel_programs:
        if not program.is_source:
            out.append(_prebuilt(program, manifest, kernel, settings.home))
            continue
        if program.local_path is None:
            raise ArtifactNotFound(
                f"program '{program.name}': the source {program.path} is not fetched on its own",
                hint="name sources relative to the manifest (file://./NAME.bpf.c) and load the "
                     "manifest by its URL, or point the path at the built .bpf.o")
        pin = lock.pin(program.name, kernel) if lock else None
        if pin is not None:
            out.append(_with_min_btf(settings, store, *load_pin(store, pin)))
            continue
        refusal = next((r for r in lock.refused if r.program == program.name and
                        r.target == f"{kernel.arch}-{kernel.btf_digest}"), None) if lock else None
        if locked and refusal is not None:
            raise ArtifactNotFound(
                f"{lock_file} pins no artifact of '{program.name}' for {kernel}: the farm refused "
                f"it for this kernel ({refusal.reason})",
                hint="fix the program for this kernel (see `bpfdepot submit --wait`), or run a "
                     "kernel it passed on")
        if locked:
            raise ArtifactNotFound(
                f"{lock_file} pins no artifact of '{program.name}' for {kernel} "
                f"(btf {kernel.btf_digest[:12]}); --locked loads nothing else",
                hint=f"build and pin it: bpfdepot submit {manifest.root} --kernels "
                     f"'release={kernel.release}' --wait && bpfdepot lock {manifest.root} --kernels all")
        found = read_index(store, index_ref(program.name,
                                            program_source_digest(manifest, program.name), kernel))
        refusal = found if isinstance(found, dict) else None
        if refusal is not None:
            found = None  # the farm refused it here: a host compile (if any) will say why again
        if found is not None and compilers is not None and not store.has_blob(found[0].digest):
            found = None  # lost or damaged: the build below writes it again
        if found is None:
            if compilers is None:
                if refusal is not None:
                    reasons = [str(r) for r in refusal.get("reasons") or ["refused"]]
                    raise ArtifactNotFound(
                        f"no artifact for '{program.name}' on {kernel}: the farm refused it for "
                        f"this kernel: {reasons[0].splitlines()[0]}", detail="\n".join(reasons),
                        hint="fix the program for this kernel, or run a kernel it passed on")
                raise ArtifactNotFound(
                    f"no artifact for '{program.name}' on {kernel} (these sources were never built for it)",
                    hint=f"run: bpfdepot build {manifest.root}")
            print(f"bpfdepot: building '{program.name}' for {kernel} on this host", file=sys.stderr)
            meta = compilers.kernel(manifest, program, kernel)
        else:
            meta = found[0]
        out.append(_with_min_btf(settings, store, meta, store.blob_path(meta.digest)))
    carried = {name for item in out for name in item.meta.channels}
    missing = [c for c in manifest.channels if c.name not in carried]
    if missing:
        names = ", ".join(p.name for p in manifest.kernel_programs)
        raise ManifestError(
            f"{manifest.path}:{missing[0].line}: channel '{missing[0].name}' is a map in none of "
            f"the kernel programs ({names})",
            hint="name the channel as the program declares its map (BPFDEPOT_CHANNEL), or drop it")
    return out


def artifact(settings: Settings, store: ArtifactStore, digest: str) -> Loadable:
    """A stored artifact named by its object or meta digest."""
    meta, _ = by_digest(store, digest)
    return _with_min_btf(settings, store, meta, store.blob_path(meta.digest))


def _prebuilt(program: ProgramSpec, manifest: Manifest, kernel: KernelIdentity,
              home: Path) -> Loadable:
    """A `.bpf.o` named by the manifest (a file, or an http(s) URL fetched into the cache):
    checked like a fresh build, described in memory."""
    path = _local(program, home, "program")
    info = read_object_file(path)
    decls = object_channels(info, manifest.channel_decls,
                            several_objects=len(manifest.kernel_programs) > 1)
    problems = check_object(info, program.name, decls)
    if problems:
        raise BuildError(f"prebuilt object {path} of '{program.name}' is not usable",
                         detail="\n".join(f"  - {p}" for p in problems), hint="rebuild it")
    data = path.read_bytes()
    meta = ArtifactMeta(
        name=program.name, kind="bpf_object", key="", digest=digest_of(data), size=len(data),
        source_digest="", target=KernelIdentity(release="any", arch=kernel.arch, btf_digest=""),
        toolchain={}, flags=(), inputs={},
        programs=info.program_rows(),
        maps=(), channels={name: {"type": ctype} for name, (ctype, _) in decls.items()},
        required_features=info.required_features, license=info.license or "")
    return Loadable(meta=meta, path=Path(path))


def resolve_processors(settings: Settings, store: ArtifactStore, manifest: Manifest, arch: str, *,
                       compilers: Compilers | None = None) -> dict[str, ProcessorRuntime]:
    """Each user_so program as a checked library: prebuilt .so, the store's build of its
    sources for this arch, or a build on this host; ProcessorError/ArtifactNotFound otherwise."""
    from loader.artifacts.meta import lookup as find
    from loader.processors.abi import ABI_VERSION, check_processor, processor_functions, processor_ref

    functions = processor_functions(manifest.properties)
    initfile = str(manifest.properties.initfile) if manifest.properties.initfile else None
    out = {}
    for program in manifest.programs:
        if program.type != "user_so":
            continue
        if not program.is_source:
            path = _local(program, settings.home, "processor")
        else:
            found = find(store, processor_ref(manifest, program, arch))
            if found is not None and compilers is not None and not store.has_blob(found[0].digest):
                found = None  # lost or damaged: the build below writes it again
            if found is not None:
                path = store.blob_path(found[0].digest)
            elif compilers is None:
                raise ArtifactNotFound(
                    f"no build of processor '{program.name}' ({program.path}) for {arch}",
                    hint=f"run: bpfdepot build {manifest.root}")
            else:
                print(f"bpfdepot: building processor '{program.name}' on this host", file=sys.stderr)
                path = store.blob_path(compilers.processor(manifest, program, arch).digest)
        info = check_processor(path, functions, label=program.name, arch=arch)
        out[program.name] = ProcessorRuntime(
            name=program.name, so_path=str(path), initfile=initfile, init=info.init, pre=info.pre,
            post=info.post, abi=ABI_VERSION, default=info.process[0])
    return out


def _local(program: ProgramSpec, home: Path, what: str) -> Path:
    """A built file's local path: file:// as it is, http(s):// and s3:// fetched (loader/remote.py)."""
    if program.local_path is not None:
        return program.local_path
    if program.scheme in ("http", "https", "s3"):
        from loader.remote import fetch

        return fetch(program.path, home)
    raise ArtifactNotFound(f"{what} '{program.name}': {program.path} is not a file, http(s) "
                           "or s3 URL", hint="give file://, http(s):// or s3:// paths")
