"""Compile one kernel program of a bundle for one target kernel, validate it, store it.

clang runs as a subprocess with flags made here, never taken from the manifest, in a scratch
folder holding only the source closure, the shared headers and the target's vmlinux.h; its
dependency list must stay inside that folder and the toolchain's headers. Paths in the output
are mapped to /bpfdepot, so the same inputs give the same bytes. The build key is computed
before anything runs: a key already in the store returns its artifact without running clang.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from builder.toolchain import Toolchain
from builder.vmlinux import vmlinux_header
from loader.artifact import SCHEMA, ArtifactMeta, build_ref, index_ref, lookup, meta_of_ref
from loader.elfinfo import check_object, read_object
from loader.errors import BuildError
from loader.kernel import KernelIdentity
from loader.manifest import Manifest, ProgramSpec
from loader.sources import files_digest, source_closure, source_digest
from loader.store import ArtifactStore

SHARED_INCLUDE = Path(__file__).resolve().parent.parent / "bpf" / "include"
ARCH_DEFINES = {"x86_64": "x86", "aarch64": "arm64", "s390x": "s390", "ppc64le": "powerpc",
                "riscv64": "riscv", "armv7l": "arm", "loongarch64": "loongarch"}
# Limits for one compile: wall clock (s), CPU (s), address space and output file size (bytes).
WALL_S, CPU_S, MEMORY_B, OUTPUT_B = 120, 120, 4 << 30, 256 << 20
MAPPED = "/bpfdepot"
# Headers clang may read besides the scratch folder: libbpf's and the C library's, and its own.
SYSTEM_HEADERS = (Path("/usr/include"), Path("/usr/lib/llvm-14/lib/clang"), Path("/usr/lib/clang"),
                  Path("/usr/local/include"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """A kernel to build for: its identity and where its BTF is on this machine."""

    identity: KernelIdentity
    btf: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Built:
    meta: ArtifactMeta
    meta_digest: str
    cached: bool
    seconds: float


def bpf_flags(arch: str) -> tuple[str, ...]:
    if arch not in ARCH_DEFINES:
        raise BuildError(f"cannot build BPF programs for arch '{arch}'",
                         hint=f"known: {', '.join(sorted(ARCH_DEFINES))}")
    return ("-g", "-O2", "-target", "bpf", f"-D__TARGET_ARCH_{ARCH_DEFINES[arch]}", "-Wall",
            "-Wno-unused-function", "-Wno-compare-distinct-pointer-types")


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_S, CPU_S))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_B, MEMORY_B))
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_B, OUTPUT_B))


def build_key(program: ProgramSpec, inputs: dict[str, str], flags: tuple[str, ...],
              toolchain: Toolchain, target: KernelIdentity,
              channels: dict[str, tuple[str, str | None]] | None = None) -> str:
    body: dict[str, object] = {"schema": SCHEMA, "program": program.name, "inputs": inputs,
                               "flags": flags, "toolchain": toolchain.as_dict(),
                               "btf": target.btf_digest, "arch": target.arch}
    if channels:  # the meta stored under the key records them, checked against the object
        body["channels"] = {k: list(v) for k, v in channels.items()}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def build_program(store: ArtifactStore, manifest: Manifest, program: ProgramSpec, target: Target,
                  toolchain: Toolchain, cache_dir: Path) -> Built:
    """Build ``program`` for ``target`` (or find it built); raise BuildError with clang's words."""
    started = time.perf_counter()
    if program.local_path is None or not program.is_source or program.type != "ebpf_object":
        raise BuildError(f"program '{program.name}' ({program.path}) is not a local .bpf.c source",
                         hint="only file:// .bpf.c sources are built; prebuilt objects load as they are")
    files = source_closure(program.local_path, manifest.root, [SHARED_INCLUDE])
    inputs = files_digest(files)
    channels = manifest.channel_decls
    src_digest = source_digest(files, channels)
    entry = next(f.name for f in files if f.path == program.local_path.resolve())
    flags = bpf_flags(target.identity.arch)
    key = build_key(program, inputs, flags, toolchain, target.identity, channels)

    found = lookup(store, build_ref(key))
    if found:
        meta, meta_digest = found
        store.put_ref(index_ref(program.name, src_digest, target.identity), meta_digest)
        return Built(meta=meta, meta_digest=meta_digest, cached=True,
                     seconds=time.perf_counter() - started)

    header = vmlinux_header(target.btf, target.identity.btf_digest, toolchain.bpftool, cache_dir)
    scratch_root = cache_dir.parent / "tmp"
    scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=scratch_root))
    try:
        data = _compile(files, entry, header, flags, toolchain, scratch, program, target, manifest.root)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    info = read_object(data, f"{program.name} for {target.identity}")
    problems = check_object(info, program.name, channels)
    if problems:
        raise BuildError(f"the object built from '{program.name}' for {target.identity} is not usable",
                         detail="\n".join(f"  - {p}" for p in problems),
                         hint="fix the source or the manifest as each line says")
    digest = store.put_blob(data)
    meta = ArtifactMeta(
        name=program.name, kind="bpf_object", key=key, digest=digest, size=len(data),
        source_digest=src_digest, target=target.identity, toolchain=toolchain.as_dict(),
        flags=flags, inputs=inputs,
        programs=tuple({"name": p.name, "section": p.section, "insns": p.insns, "feature": p.feature}
                       for p in info.programs),
        maps=tuple({"name": m.name, "type": m.type_name, "max_entries": m.max_entries,
                    "key_size": m.key_size, "value_size": m.value_size} for m in info.maps),
        channels={c.name: _channel_meta(info, c.name, c.type, c.event) for c in manifest.channels},
        required_features=info.required_features, license=info.license or "")
    meta_digest = store.put_blob(meta.to_json())
    meta_digest = store.put_ref(build_ref(key), meta_digest)
    store.put_ref(index_ref(program.name, src_digest, target.identity), meta_digest)
    store.put_ref(meta_of_ref(digest), meta_digest)
    return Built(meta=meta, meta_digest=meta_digest, cached=False, seconds=time.perf_counter() - started)


def _channel_meta(info, name: str, ctype: str, declared: str | None) -> dict:
    decoder = info.decoder(name, declared)
    return {"type": ctype, "map_type": info.map(name).type_name, "event": decoder.struct,
            "event_size": decoder.size,
            "layout": [{"name": f.name, "offset": f.offset, "size": f.size, "decoder": f.decoder}
                       for f in decoder.fields]}


def _compile(files, entry: str, header: Path, flags: tuple[str, ...], toolchain: Toolchain,
             scratch: Path, program: ProgramSpec, target: Target, root: Path) -> bytes:
    for f in files:
        dest = scratch / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.data)
    (scratch / "vmlinux").mkdir()
    try:
        os.link(header, scratch / "vmlinux" / "vmlinux.h")
    except OSError:
        shutil.copyfile(header, scratch / "vmlinux" / "vmlinux.h")
    entry_dir = str(Path(entry).parent)
    cmd = [str(toolchain.clang), *flags, f"-fdebug-prefix-map={scratch}={MAPPED}",
           f"-ffile-prefix-map={scratch}={MAPPED}", "-I", "vmlinux", "-I", "include", "-I", entry_dir,
           "-MD", "-MF", "deps.d", "-c", entry, "-o", "out.bpf.o"]
    try:
        out = subprocess.run(cmd, cwd=scratch, capture_output=True, timeout=WALL_S,
                             preexec_fn=_limits, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise BuildError(f"clang took longer than {WALL_S} s on '{program.name}' for {target.identity}",
                         hint="a source that includes a device or loops in the preprocessor never ends") from None
    stderr = _user_paths(out.stderr.decode(errors="replace"), scratch, root)
    if out.returncode != 0:
        raise BuildError(f"clang failed on program '{program.name}' for {target.identity}",
                         detail=stderr.strip(),
                         hint="fix the error at the file:line above and build again")
    _check_deps(scratch, program)
    return (scratch / "out.bpf.o").read_bytes()


def _user_paths(text: str, scratch: Path, root: Path) -> str:
    """Name files as the user knows them, so clang's file:line points at their file."""
    text = text.replace(f"{scratch}/", "")
    text = re.sub(r"(?<![\w/.-])src/", f"{root}/", text)
    return re.sub(r"(?<![\w/.-])include/", f"{SHARED_INCLUDE}/", text)


def _check_deps(scratch: Path, program: ProgramSpec) -> None:
    scratch = scratch.resolve()  # deps are resolved below; BPFDEPOT_HOME may sit behind a symlink
    deps = (scratch / "deps.d").read_text().replace("\\\n", " ").split(":", 1)[1].split()
    for dep in deps:
        path = (scratch / dep).resolve() if not dep.startswith("/") else Path(dep).resolve()
        if path.is_relative_to(scratch) or any(path.is_relative_to(d) for d in SYSTEM_HEADERS):
            continue
        raise BuildError(f"program '{program.name}' reads {path}, outside its bundle and the "
                         "toolchain's headers",
                         hint="include only files inside the bundle or from bpf/include")
