"""Compile one kernel program of a bundle once per variant, validate it, store it; then
publish it for each target kernel its relocation check passes on (builder/verdicts.py).

A *variant* is what changes the compiled code: arch, the ``-D`` feature defines a kernel implies
(FORM_DEFINES), ``cpu:``. Kernels of one variant share one compile against a *reference*
header — the newest target's vmlinux.h, or the vmlinux.h the bundle vendors — and CO-RE
relocates the object to each of them; ``headers: per-kernel`` in the manifest asks for a compile
against each kernel's own header instead.

clang runs as a subprocess with flags made here, never taken from the manifest, in a scratch
folder holding only the source closure, the shared headers and the reference vmlinux.h; its
dependency list must stay inside that folder and the toolchain's headers. Paths in the output
are mapped to /bpfdepot, so the same inputs give the same bytes. Both keys are computed before
anything runs: the object key (sources, flags, toolchain, arch, reference header) names the
compile, the record key (object key + target kernel) its verdict for one kernel; a key already
in the store returns its result without running clang.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from builder.pch import INSIDE_HEADER, INSIDE_PCH, header_pch, leads_with_vmlinux
from builder.pch import forget as forget_pch, refused as pch_refused
from builder.sandbox import INSIDE, LIMIT_HINT, Limits, limit_breach, run_sandboxed
from builder.toolchain import Toolchain
from builder.vmlinux import vmlinux_header
from loader.artifacts.meta import SCHEMA, ArtifactMeta, build_ref, lookup, meta_of_ref
from loader.errors import BuildError
from loader.kernel.catalog import release_order
from loader.kernel.probe import KernelIdentity
from loader.model.controls import CPUS
from loader.model.manifest import Manifest, ProgramSpec
from loader.artifacts.sources import (GENERATED, SHARED_INCLUDE, SourceFile, files_digest,
                                      source_closure, source_digest)
from loader.artifacts.store import ArtifactStore

if TYPE_CHECKING:
    from loader.kernel.elf import ObjectInfo

# Imported when first used, not with this module: what only the checks after clang need
# (pyelftools, the BTF reader, signing) loads meanwhile in warm_checks' thread, so a command-line
# build does not wait for it before clang starts.

ARCH_DEFINES = {"x86_64": "x86", "aarch64": "arm64", "s390x": "s390", "ppc64le": "powerpc",
                "riscv64": "riscv", "armv7l": "arm", "loongarch64": "loongarch"}
# Limits for one compile (clang runs in bubblewrap, see builder/sandbox.py): wall clock and CPU
# (s), address space, size of any file written, and how much of clang's output is kept (bytes).
BUILD_LIMITS = Limits(wall_s=120, cpu_s=120, memory_bytes=4 << 30, output_bytes=256 << 20,
                      log_bytes=1 << 20)
# The largest kernel object stored. Real ones are KBs to ~1 MiB (code, BTF, small .data); the
# kernel keeps a map value under KMALLOC_MAX_SIZE anyway, and every byte here is stored once per
# kernel and shipped to every node. A bigger object is a mistake (a huge global array) or an attack.
MAX_OBJECT_BYTES = 8 << 20
MAPPED = "/bpfdepot"
PREFIX_MAP = (f"-fdebug-prefix-map={INSIDE}={MAPPED}", f"-ffile-prefix-map={INSIDE}={MAPPED}")
# Headers clang may read besides the scratch folder: libbpf's and the C library's, and its own.
SYSTEM_HEADERS = (Path("/usr/include"), Path("/usr/lib/llvm-14/lib/clang"), Path("/usr/lib/clang"),
                  Path("/usr/local/include"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """A kernel to build for: its identity, where its BTF is here, and what it supports."""

    identity: KernelIdentity
    btf: Path
    features: frozenset[str] = frozenset()  # probed or from its config; picks program forms
    btf_on_node: bool = True                # False: the artifact carries a minimal BTF
    absent: frozenset[str] = frozenset()    # features it is known to lack (refused if needed)


@dataclass(frozen=True, slots=True, kw_only=True)
class Built:
    meta: ArtifactMeta
    meta_digest: str
    cached: bool
    seconds: float
    warnings: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Everything a build for one kernel is decided by, computed before anything runs."""

    manifest: Manifest
    program: ProgramSpec
    target: Target                # the kernel this plan publishes for
    toolchain: Toolchain
    files: tuple[SourceFile, ...]
    entry: str
    flags: tuple[str, ...]        # the variant: shared by every kernel of one compile
    key: str                      # the record key: the object key + this kernel (+ load test)
    source_digest: str
    anchor: bytes | None = None   # the generated translation unit clang compiles, if any
    reference: Target | None = None  # whose vmlinux.h clang compiles against; None: vendored
    object_key: str = ""          # names the compile, shared by the kernels of a variant
    load_test: str = ""           # how the object is load-tested before publishing ("": not)

    @property
    def header_source(self) -> str:
        """What clang compiles against, for people: a kernel, or the bundle's vmlinux.h."""
        return "the bundle's vmlinux.h" if self.reference is None else str(self.reference.identity)


# Kernel-dependent forms: a program compiles its kprobe or fentry form only where the target
# kernel has it (``#ifdef BPFDEPOT_HAVE_KPROBE``), and its tracepoint form everywhere else.
FORM_DEFINES = (("kprobe", "BPFDEPOT_HAVE_KPROBE"), ("fentry", "BPFDEPOT_HAVE_FENTRY"))
# A kernel config can enable these while the platform still refuses them (fentry is configured
# on the 6.18 kernel these machines run, and loads fail with EPERM): only a probe vouches.
PROBE_ONLY = frozenset({"fentry", "fexit", "lsm"})


def form_features(features: dict[str, bool] | frozenset[str], probed: bool) -> frozenset[str]:
    """The features a build may rely on: all that a node probed, or the config's minus PROBE_ONLY."""
    have = frozenset(k for k, ok in features.items() if ok) if isinstance(features, dict) else features
    return have if probed else have - PROBE_ONLY


def bpf_flags(arch: str, features: frozenset[str] = frozenset(),
              cpu: str | None = None) -> tuple[str, ...]:
    """clang's flags, all made here; ``cpu`` is the manifest's allow-listed ``cpu:`` (v2, v3)."""
    if arch not in ARCH_DEFINES:
        raise BuildError(f"cannot build BPF programs for arch '{arch}'",
                         hint=f"known: {', '.join(sorted(ARCH_DEFINES))}")
    if cpu is not None and cpu not in CPUS:  # the manifest parser refuses others; never pass one
        raise BuildError(f"unknown BPF cpu '{cpu}'", hint=f"one of: {', '.join(CPUS)}")
    forms = tuple(f"-D{define}=1" for feature, define in FORM_DEFINES if feature in features)
    mcpu = (f"-mcpu={cpu}",) if cpu else ()
    return ("-g", "-O2", "-target", "bpf", *mcpu, f"-D__TARGET_ARCH_{ARCH_DEFINES[arch]}", *forms,
            "-Wall", "-Wno-unused-function", "-Wno-compare-distinct-pointer-types")


def build_key(program: ProgramSpec, inputs: dict[str, str], flags: tuple[str, ...],
              toolchain: Toolchain, target: KernelIdentity,
              channels: dict[str, tuple[str, str | None]] | None = None,
              anchor: bytes | None = None, vendored: bool = False) -> str:
    """The object key: what one compile's bytes depend on. ``target`` is the reference kernel
    whose header clang reads (only its arch counts when the bundle vendors its vmlinux.h)."""
    body: dict[str, object] = {"schema": SCHEMA, "program": program.name, "inputs": inputs,
                               "flags": flags, "toolchain": toolchain.as_dict(),
                               "btf": "vendored" if vendored else target.btf_digest,
                               "arch": target.arch}
    if anchor is not None:  # what clang compiles is the generated unit, not the entry itself
        body["anchor"] = hashlib.sha256(anchor).hexdigest()
    if channels:  # the meta stored under the key records them, checked against the object
        body["channels"] = {k: list(v) for k, v in channels.items()}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# Bumped when what a kernel's verdict checks changes, so older verdicts are not reused.
CHECK_VERSION = 1


def record_key(object_key: str, target: Target, load_test: str = "") -> str:
    """The key of one object's verdict and artifact for one kernel: its relocation check, its
    minimal BTF (nodes without BTF) and, when ``load_test`` names how, its load test."""
    body: dict[str, object] = {"schema": SCHEMA, "object": object_key, "check": CHECK_VERSION,
                               "btf": target.identity.btf_digest, "arch": target.identity.arch,
                               "min_btf": not target.btf_on_node,
                               "absent": sorted(target.absent)}
    if load_test:
        body["load_test"] = load_test
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def plan_build(manifest: Manifest, program: ProgramSpec, target: Target, toolchain: Toolchain,
               include_dirs: list[Path] | None = None, *, reference: Target | None = None,
               load_test: str = "", files: tuple[SourceFile, ...] | None = None) -> Plan:
    """Decide the build for ``target`` (sources, flags, keys) without running anything; its
    compile reads ``reference``'s header (default: the target's own). ``files``: the source
    closure, when the caller knows it (a farm worker reads an unpacked bundle once)."""
    if program.local_path is None or not program.is_source or program.type != "ebpf_object":
        raise BuildError(f"program '{program.name}' ({program.path}) is not a local .bpf.c source",
                         hint="only file:// .bpf.c sources are built; prebuilt objects load as they are")
    vendored = program.headers == "bundle"
    if files is None:
        files = closure_of(manifest, program, include_dirs)
    inputs = files_digest(files)
    channels = manifest.channel_decls
    entry = next(f.name for f in files if f.path == program.local_path.resolve())
    # a feature define the sources never name cannot change the code: it is not the variant
    used = frozenset(f for f, define in FORM_DEFINES if f in target.features
                     and any(define.encode() in file.data for file in files))
    flags = bpf_flags(target.identity.arch, used, program.cpu)
    anchor = anchor_unit(entry, channels)
    if vendored and not any(PurePosixPath(f.name).name in GENERATED for f in files):
        raise BuildError(f"program '{program.name}' says `headers: bundle`, but no vmlinux.h is "
                         f"included from beside its sources in {manifest.root}",
                         hint="put the vmlinux.h it compiles against beside the .bpf.c that "
                              "includes it, or drop `headers: bundle`")
    if vendored:
        header = None
    elif program.headers == "per-kernel" or reference is None:
        header = target
    else:
        header = reference
    object_key = build_key(program, inputs, flags, toolchain, (header or target).identity, channels,
                           anchor=anchor, vendored=vendored)
    return Plan(manifest=manifest, program=program, target=target, toolchain=toolchain,
                files=files, entry=entry, flags=flags, key=record_key(object_key, target, load_test),
                source_digest=source_digest(files, channels, cpu=program.cpu), anchor=anchor,
                reference=header, object_key=object_key, load_test=load_test)


def closure_of(manifest: Manifest, program: ProgramSpec,
               include_dirs: list[Path] | None = None) -> tuple[SourceFile, ...]:
    """The source closure a build of ``program`` compiles (builder/compile.py plan_build)."""
    return tuple(source_closure(program.local_path, manifest.root, include_dirs or [SHARED_INCLUDE],
                                vendored=program.headers == "bundle"))


def reference_for(targets: Sequence[Target]) -> dict[str, Target]:
    """The reference kernel per arch: the newest target (its header has the most types; CO-RE
    relocates the object down to the older ones, and the check says where it cannot)."""
    newest: dict[str, Target] = {}
    for target in targets:
        arch = target.identity.arch
        if arch not in newest or release_order(target.identity.release) > \
                release_order(newest[arch].identity.release):
            newest[arch] = target
    return newest


# The translation unit a build compiles when the manifest names channels' event structs.
ANCHOR_FILE = "bpfdepot-event-anchors.c"


def anchor_unit(entry: str, channels: dict[str, tuple[str, str | None]]) -> bytes | None:
    """The generated unit that compiles ``entry`` and anchors each ``event:`` struct, or None.

    A program written the usual libbpf way may use its event struct only through a local pointer
    (``struct event *e = bpf_ringbuf_reserve(...)``, or a stack struct handed to
    bpf_perf_event_output); clang then leaves the struct out of BTF and nothing could decode it.
    The marker bpfdepot.h's BPFDEPOT_CHANNEL leaves (``bpfdepot_event__<channel>``) keeps it in,
    without editing the user's source: the entry is #included, so clang's file:line stays in the
    user's files. The text depends only on the entry's name and the channel declarations (both
    in the build key), so the same inputs still give the same bytes."""
    events = sorted((name, event) for name, (_, event) in channels.items() if event)
    if not events:
        return None
    lines = [f"/* Generated by bpfdepot (builder/compile.py anchor_unit): {entry}, then one marker",
             " * per channel whose event struct the manifest names, so its BTF is in the object. */",
             f'#include "{entry}"']
    lines += [f"struct {event} *bpfdepot_event__{name} __attribute__((used));"
              for name, event in events]
    return ("\n".join(lines) + "\n").encode()


def check_events(info, program: str, decls: dict[str, tuple[str, str | None]]) -> None:
    """Every ``event:`` the manifest names for this object's channels is a struct its source
    defines (a pointer to an undefined struct compiles, leaving only a forward declaration)."""
    for name, (_, event) in sorted(decls.items()):
        if event and info.btf is not None and info.btf.by_name(event, "struct") is None:
            raise BuildError(
                f"channel '{name}': the manifest says `event: {event}`, but the source of "
                f"'{program}' defines no struct {event}",
                hint=f"define struct {event} in the program or a header it includes, or set "
                     "`event:` to the struct the channel carries")


def check_links_and_sizes(info, program: ProgramSpec, target: Target) -> None:
    """Faults clang lets through and libbpf would only report on the node, each named here: an
    extern nothing resolves (the object would not even open), and a map left for user space to
    size (max_entries or a stack map's value_size 0) that the manifest does not size."""
    from loader.kernel.elf import unresolved_externs, unsized_maps

    externs = [name for name, sec in info.externs if not sec]
    if externs:
        names = ", ".join(f"'{n}'" for n in externs)
        raise BuildError(
            f"program '{program.name}' uses extern {names}, which nothing defines: libbpf "
            f"resolves only __kconfig and __ksym externs, so the object built for "
            f"{target.identity} would not open", detail="\n".join(unresolved_externs(info)),
            hint=f"define {names} in the program, or declare {'it' if len(externs) == 1 else 'them'} "
                 "__ksym (a kernel symbol or kfunc) or __kconfig (CONFIG_*)")
    problems = unresolved_externs(info)
    if problems:
        raise BuildError(f"program '{program.name}' has a __kconfig extern libbpf cannot fill",
                         detail="\n".join(problems),
                         hint="name a CONFIG_* option (declare it __weak if a kernel may lack it)")
    sized = {(m.map, key) for m in getattr(program, "maps", ()) for key in ("max_entries", "value_size")
             if getattr(m, key, None) is not None}
    unsized = unsized_maps(info, sized)
    if unsized:
        name, key, kind = unsized[0]
        raise BuildError(
            f"map '{name}' of program '{program.name}' ({kind}) has {key} 0: it is sized from "
            "user space, and the manifest does not size it",
            detail="\n".join(f"  - map '{n}' ({k}): {w} 0" for n, w, k in unsized),
            hint=f"add maps: {{{name}: {{{key}: N}}}} to program '{program.name}' in the manifest, "
                 f"or give the map __uint({key}, N) in the source")


def check_hooks(info, program: ProgramSpec, target: Target) -> tuple[dict[str, str], str] | None:
    """The tracepoints the target kernel lacks, per program section: refused (naming the hook
    and the kernel) when a program that would load needs one, else noted when `forms:` leaves it
    out there: ({program: hook}, the note), or None when every hook exists."""
    from loader.kernel.hooks import kernel_btf, lacking_forms, missing_hooks

    from builder.relocate import kernel_types

    # the relocation check's index of this kernel answers by name without indexing every
    # type's name again (~50 ms for a kernel, the first time a process asks)
    btf = kernel_btf(str(target.btf))
    index = kernel_types(target.btf, target.identity.btf_digest) if btf is not None else None
    missing = missing_hooks(((p.name, p.section) for p in info.programs), btf,
                            index.has_typedef if index is not None else None)
    if not missing:
        return None
    in_forms = {p for form in program.forms for p in form}
    needed = [p for p in missing if p not in program.autoload_off and p not in in_forms]
    if needed:
        raise BuildError(
            f"program '{program.name}' hooks what kernel {target.identity} does not have: "
            + ", ".join(f"{p} ({missing[p]})" for p in needed),
            hint="add a form for kernels without it (`forms:` in the manifest, e.g. a tp_btf or "
                 "cgroup form beside it) or leave this kernel out of the build's targets")
    lacking = lacking_forms(program.forms, missing)
    if program.forms and all(lacking):
        raise BuildError(
            f"no form of program '{program.name}' fits kernel {target.identity}",
            detail="\n".join(f"  - form {i + 1} ({', '.join(f)}) needs {why}"
                              for i, (f, why) in enumerate(zip(program.forms, lacking)) if why),
            hint="add a form whose tracepoints this kernel has")
    chosen = next((i for i, why in enumerate(lacking) if not why), None)
    note = (f"{program.name}: kernel {target.identity} has no "
            + ", ".join(sorted({str(h) for h in missing.values()}))
            + (f"; form {chosen + 1} ({', '.join(program.forms[chosen])}) loads there"
               if chosen is not None else "; those programs stay unloaded there"))
    return {p: str(h) for p, h in missing.items()}, note


def find_built(store: ArtifactStore, key: str, index: str) -> Built | None:
    """The stored result of the build ``key``, or None; a hit is also published at ``index``,
    the ref nodes look artifacts up by."""
    from loader.trust.artifacts import sign_published

    started = time.perf_counter()
    found = lookup(store, build_ref(key))
    if not found:
        return None
    meta, meta_digest = found
    blobs = [meta.digest] + ([meta.extra["min_btf"]] if meta.extra.get("min_btf") else [])
    if not all(store.has_blob(b) for b in blobs):
        return None  # lost or damaged: build again, which writes the blob back (heals the store)
    store.put_ref(index, meta_digest)
    sign_published(store, meta, meta_digest)  # built before a key was set: signed now
    return Built(meta=meta, meta_digest=meta_digest, cached=True, seconds=time.perf_counter() - started)


def build_program(store: ArtifactStore, manifest: Manifest, program: ProgramSpec, target: Target,
                  toolchain: Toolchain, cache_dir: Path, include_dirs: list[Path] | None = None,
                  *, reference: Target | None = None) -> Built:
    """Build ``program`` for ``target`` (or find it built): compile against ``reference``'s
    header (default: the target's), then check and publish it for the target. Raise BuildError
    with clang's words, or KernelRefused naming why the object cannot run on the target."""
    from builder.verdicts import build_for

    return build_for(store, plan_build(manifest, program, target, toolchain, include_dirs,
                                       reference=reference), cache_dir)


@dataclass(frozen=True, slots=True, kw_only=True)
class Compiled:
    """One compile's object and its meta (target: the reference kernel; key: the object key),
    stored under ``object_ref``; the kernels of its variant are published from it."""

    meta: ArtifactMeta
    meta_digest: str
    cached: bool
    seconds: float
    warnings: str = ""


JUST_READ: dict[str, tuple[bytes, ObjectInfo]] = {}  # object digest → its bytes and parse,
# from the compile that made it to the first check of it (which takes it out)


def object_ref(object_key: str) -> str:
    return f"objects/{object_key}"


def find_compiled(store: ArtifactStore, object_key: str) -> Compiled | None:
    """The stored compile named by ``object_key``, or None (also when its object blob is lost)."""
    found = lookup(store, object_ref(object_key))
    if found is None or not store.has_blob(found[0].digest):
        return None
    return Compiled(meta=found[0], meta_digest=found[1], cached=True, seconds=0.0)


def compile_object(store: ArtifactStore, plan: Plan, cache_dir: Path) -> Compiled:
    """Compile the plan's variant against its reference header, check what holds on every
    kernel (size, links, map sizes, channels), and store object blob → meta blob → object ref.
    Nothing is published for a kernel here: builder/verdicts.py does that per kernel."""
    from loader.kernel.elf import check_object, object_channels, read_object

    started = time.perf_counter()
    program, toolchain, manifest = plan.program, plan.toolchain, plan.manifest
    reference = plan.reference or plan.target  # a vendored header: named after the first target
    what = (f"'{program.name}' for {reference.identity}" if plan.reference is not None
            else f"'{program.name}' (with the bundle's vmlinux.h)")
    if plan.reference is not None:
        header = vmlinux_header(reference.btf, reference.identity.btf_digest, toolchain.bpftool,
                                cache_dir)
    else:  # the bundle's own vmlinux.h sits beside its sources; -I vmlinux finds nothing
        header = cache_dir / "vmlinux" / "empty.h"
        if not header.exists():
            header.parent.mkdir(parents=True, exist_ok=True)
            header.write_bytes(b"")
    # a header shared by many compiles is parsed once (builder/pch.py); a kernel's own header
    # (`headers: per-kernel`) usually serves one compile, less than the PCH costs to make
    pch = None
    entry = next((f for f in plan.files if f.name == plan.entry), None)
    if (plan.reference is not None and program.headers != "per-kernel" and entry is not None
            and leads_with_vmlinux(entry.data, header)):
        pch = header_pch(header, plan.flags, PREFIX_MAP, toolchain, cache_dir, BUILD_LIMITS)
    scratch_root = cache_dir.parent / "tmp"
    scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=scratch_root))
    try:
        data, warnings = _compile(plan.files, plan.entry, header, plan.flags, toolchain, scratch,
                                  program, reference, manifest.root, plan.anchor, pch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    check_size(data, MAX_OBJECT_BYTES, f"the object built from {what}",
               hint="shrink large global arrays (.data/.bss/.rodata): size maps with max_entries "
                    "instead, or keep the data in user space")
    info = read_object(data, what.replace("'", ""))
    check_links_and_sizes(info, program, reference)
    decls = object_channels(info, manifest.channel_decls,
                            several_objects=len(manifest.kernel_programs) > 1)
    check_events(info, program.name, decls)
    problems = check_object(info, program.name, decls)
    if problems:
        raise BuildError(f"the object built from {what} is not usable",
                         detail="\n".join(f"  - {p}" for p in problems),
                         hint="fix the source or the manifest as each line says")
    digest = store.put_blob(data)
    while len(JUST_READ) >= 8:  # a compile whose checks never ran (an error) leaves its own
        JUST_READ.pop(next(iter(JUST_READ)))
    JUST_READ[digest] = (data, info)  # its kernels' checks (builder/verdicts.py) parse it no more
    meta = ArtifactMeta(
        name=program.name, kind="bpf_object", key=plan.object_key, digest=digest, size=len(data),
        source_digest=plan.source_digest, target=reference.identity, toolchain=toolchain.as_dict(),
        flags=plan.flags, inputs=files_digest(plan.files),
        programs=info.program_rows(),
        maps=tuple({"name": m.name, "type": m.type_name, "max_entries": m.max_entries,
                    "key_size": m.key_size, "value_size": m.value_size} for m in info.maps),
        channels={c.name: _channel_meta(info, c.name, c.type, c.event) for c in manifest.channels
                  if c.name in decls},
        required_features=info.required_features, license=info.license or "",
        extra={"form": sorted(d for f, d in FORM_DEFINES if f"-D{d}=1" in plan.flags),
               "reference": plan.header_source})
    meta_digest = store.put_ref(object_ref(plan.object_key), store.put_blob(meta.to_json()))
    return Compiled(meta=meta, meta_digest=meta_digest, cached=False,
                    seconds=time.perf_counter() - started, warnings=warnings)


def check_size(data: bytes, limit: int, what: str, *, hint: str) -> None:
    """Refuse to store a build output over ``limit`` bytes (nothing is published)."""
    if len(data) > limit:
        raise BuildError(f"{what} is {len(data):,} bytes, over the limit of {limit:,} "
                         f"({limit >> 20} MiB)", hint=hint)


def publish(store: ArtifactStore, meta: ArtifactMeta, index: str) -> str:
    """Publish a stored object's meta: meta blob → build ref → ``index`` → meta-of ref, so no
    ref ever points at nothing. Returns the meta digest the build ref holds (the first wins)."""
    from loader.trust.artifacts import sign_published

    meta_digest = store.put_ref(build_ref(meta.key), store.put_blob(meta.to_json(), new=True))
    store.put_ref(index, meta_digest)
    store.put_ref(meta_of_ref(meta.digest), meta_digest)
    sign_published(store, meta, meta_digest)  # with BPFDEPOT_SIGNING_KEY (loader/trust)
    return meta_digest


def _channel_meta(info, name: str, ctype: str, declared: str | None) -> dict:
    from loader.kernel.elf import EVENT_MAPS, PROGRAM_CHANNELS

    if ctype in PROGRAM_CHANNELS:  # an iterator: the channel is a program, there is no event
        section = next(p.section for p in info.programs if p.name == name)
        return {"type": ctype, "program": name, "section": section}
    map_type = info.map(name).type_name
    # an event channel's struct, or a map read whole: its key bytes then its value bytes
    decoder = info.decoder(name, declared) if map_type in EVENT_MAPS else info.map_decoder(name)
    return {"type": ctype, "map_type": map_type, "event": decoder.struct,
            "event_size": decoder.size,
            "layout": [{"name": f.name, "offset": f.offset, "size": f.size, "decoder": f.decoder}
                       for f in decoder.fields]}


def _compile(files, entry: str, header: Path, flags: tuple[str, ...], toolchain: Toolchain,
             scratch: Path, program: ProgramSpec, target: Target, root: Path,
             anchor: bytes | None = None, pch: Path | None = None) -> tuple[bytes, str]:
    """clang in the sandbox; with ``pch`` (builder/pch.py) vmlinux.h comes precompiled. When
    clang refuses the PCH itself, it is dropped and the compile runs again without it."""
    if pch is not None:
        try:
            return _compile_once(files, entry, header, flags, toolchain, scratch, program,
                                 target, root, anchor, _pch=pch)
        except BuildError as exc:
            if not pch_refused(exc.detail or ""):
                raise
            forget_pch(pch)
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
    return _compile_once(files, entry, header, flags, toolchain, scratch, program, target, root,
                         anchor)


def _compile_once(files, entry: str, header: Path, flags: tuple[str, ...], toolchain: Toolchain,
                  scratch: Path, program: ProgramSpec, target: Target, root: Path,
                  anchor: bytes | None = None, _pch: Path | None = None) -> tuple[bytes, str]:
    for f in files:
        dest = scratch / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.data)
    unit = entry
    if anchor is not None:  # beside src/ and include/, so it never shadows a bundle file
        (scratch / ANCHOR_FILE).write_bytes(anchor)
        unit = ANCHOR_FILE
    (scratch / "vmlinux").mkdir()
    (scratch / "vmlinux" / "vmlinux.h").touch()  # the mount point of the cached header, read-only
    entry_dir = str(Path(entry).parent)
    # Inside the sandbox the scratch folder is /work: every path here is relative to it, or the
    # toolchain's under /usr, and /work is what the prefix maps hide (so any scratch gives the
    # same bytes).
    cmd = [str(toolchain.clang), *flags, *PREFIX_MAP, "-I", "vmlinux", "-I", "include",
           "-I", entry_dir, "-MD", "-MF", "deps.d", "-c", unit, "-o", "out.bpf.o"]
    ro_files = {INSIDE_HEADER: header}
    if _pch is not None:
        (scratch / INSIDE_PCH).touch()
        ro_files[INSIDE_PCH] = _pch
        cmd[-4:-4] = ["-include-pch", INSIDE_PCH]
    limits = BUILD_LIMITS
    out = run_sandboxed(cmd, workdir=scratch, limits=limits, ro_files=ro_files)
    breach = limit_breach(out, limits, "clang")
    if breach:
        raise BuildError(f"{breach} on '{program.name}' for {target.identity}", hint=LIMIT_HINT)
    raw = out.stderr.decode(errors="replace")
    stderr = _user_paths(raw, scratch, root)
    if out.returncode != 0:
        missing = _missing_file(raw, root)
        if missing is not None and missing.outside:  # where the user is it may exist; not here
            raise BuildError(f"program '{program.name}' includes {missing.shown}, {OUTSIDE_TEXT}: "
                             "the build sees only the bundle, bpf/include and the toolchain's "
                             "headers, so clang could not read it",
                             detail=stderr.strip(), hint=OUTSIDE_HINT)
        if missing is not None and missing.system:
            raise BuildError(f"program '{program.name}' needs the header '{missing.name}' "
                             f"(included by {missing.by}), which is not installed for BPF builds",
                             detail=stderr.strip(), hint=SYSTEM_HEADER_HINT)
        if anchor is not None and re.search(rf"^{re.escape(ANCHOR_FILE)}:\d+:\d+: error:", stderr, re.M):
            raise BuildError(f"clang failed on program '{program.name}' for {target.identity}: "
                             "an `event:` of the manifest does not fit the source",
                             detail=stderr.strip(),
                             hint=f"{ANCHOR_FILE} is bpfdepot's marker of each channel's event "
                                  "struct: the program already declares bpfdepot_event__<channel> "
                                  "(BPFDEPOT_CHANNEL) with another struct; make `event:` name "
                                  "that struct, or drop it")
        raise BuildError(f"clang failed on program '{program.name}' for {target.identity}",
                         detail=stderr.strip(),
                         hint="fix the error at the file:line above and build again")
    _check_deps(scratch, program)
    return _read_regular(scratch / "out.bpf.o"), stderr.strip()  # the warnings, if any


def _read_regular(path: Path) -> bytes:
    """A file the sandbox wrote, never through a symlink it could have left in its place."""
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
        return f.read()


_MISSING = re.compile(r"^(?P<file>[^\n:]*):\d+:\d+: (?:fatal )?error: (?:'(?P<include>[^'\n]+)' "
                      r"file not found|Could not find incbin file '(?P<incbin>[^'\n]+)')", re.M)
OUTSIDE_TEXT = "outside its bundle"
OUTSIDE_HINT = "include only files inside the bundle or from bpf/include"
SYSTEM_HEADER_HINT = ("BPF programs compile with -target bpf against vmlinux.h: include \"vmlinux.h\" "
                      "for kernel types instead of <linux/...> or libc headers, and only libbpf's "
                      "<bpf/...> headers besides")


@dataclass(frozen=True, slots=True)
class Missing:
    """A file clang could not open, as the user would name it."""

    name: str        # as written in the #include or .incbin
    shown: str       # the path it names where the user is
    by: str          # the file that included it
    outside: bool    # it names a place outside the bundle (absolute, or .. out of it)
    system: bool     # a system header included by another system header (not installed here)


def _missing_file(stderr: str, root: Path) -> Missing | None:
    """The first file clang reports as not found that is more than a typo inside the bundle."""
    for match in _MISSING.finditer(stderr):
        name, by = match["include"] or match["incbin"], match["file"]
        if name.startswith("/"):  # never the bundle's: its files are named relative to it
            path = Path(posixpath.normpath(name))
            if any(path.is_relative_to(d) for d in SYSTEM_HEADERS):
                return Missing(name=name, shown=str(path), by=by, outside=False, system=True)
            return Missing(name=name, shown=str(path), by=by, outside=True, system=False)
        if by.startswith("/"):  # a system header including another that is not installed
            return Missing(name=name, shown=name, by=by, outside=False, system=True)
        # Relative to the including file (incbin: to /work); without clamping at /, as on the host.
        base = posixpath.dirname(by) if match["include"] else ""
        where = posixpath.normpath(posixpath.join(base, name))  # relative to /work
        if not where.startswith(("src/", "include/", "vmlinux/")):
            return Missing(name=name, shown=os.path.normpath(root / ".." / where), by=by,
                           outside=True, system=False)  # src/ is the bundle root
    return None


def _user_paths(text: str, scratch: Path, root: Path) -> str:
    """Name files as the user knows them, so clang's file:line points at their file."""
    text = text.replace(f"{scratch}/", "")
    text = re.sub(rf"(?<![\w/.-]){re.escape(INSIDE)}/", "", text)  # the scratch as clang saw it
    text = re.sub(r"(?<![\w/.-])src/", f"{root}/", text)
    return re.sub(r"(?<![\w/.-])include/", f"{SHARED_INCLUDE}/", text)


def _check_deps(scratch: Path, program: ProgramSpec) -> None:
    scratch = scratch.resolve()  # deps are resolved below; BPFDEPOT_HOME may sit behind a symlink
    text = _read_regular(scratch / "deps.d").decode(errors="replace")
    deps = text.replace("\\\n", " ").split(":", 1)[1].split()
    for dep in deps:
        if dep == INSIDE or dep.startswith(f"{INSIDE}/"):  # clang ran in the sandbox: /work is scratch
            dep = dep[len(INSIDE):].lstrip("/") or "."
        path = (scratch / dep).resolve() if not dep.startswith("/") else Path(dep).resolve()
        if path.is_relative_to(scratch) or any(path.is_relative_to(d) for d in SYSTEM_HEADERS):
            continue
        raise BuildError(f"program '{program.name}' reads {path}, {OUTSIDE_TEXT} and the "
                         "toolchain's headers", hint=OUTSIDE_HINT)
