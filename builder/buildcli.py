"""``bpfdepot build BUNDLE [--kernel-btf FILE ...]``: the everyday build, kept quick.

A cache hit is most of what this command does, so its process should cost little more than
Python's own start-up: the modules only a compile, a run or the farm needs (pyelftools,
cryptography, jinja2, cffi, Celery, boto3) are imported where they are used, never at the top
of a module this command imports (tests/unit/test_startup.py holds that). What a new store must
find out first (the toolchain's version: clang --version; this kernel's features: probe loads)
is done in threads while the compiler side is imported; what a compile's checks need after clang
(pyelftools, the target's parsed BTF) is done in a thread while clang runs.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from builder.quick import artifact_line
from loader.artifacts.store import open_store
from loader.errors import BpfDepotError, ManifestError
from loader.model.settings import Settings

if TYPE_CHECKING:
    from builder.compile import Built, Target
    from loader.kernel.probe import KernelIdentity

T = TypeVar("T")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Background(Generic[T]):
    """``fn(*args)`` run in a thread from now on; ``result()`` waits for it and returns its value
    or raises its exception. What it imports must be imported before it starts: two threads
    importing into each other's half-made modules can deadlock."""

    def __init__(self, fn: Callable[..., T], *args: object) -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., T], args: tuple) -> None:
        try:
            self._value = fn(*args)
        except BaseException as exc:  # handed to result(), in the thread that asked for it
            self._error = exc

    def join(self) -> None:
        self._thread.join()

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def this_kernel(settings: Settings) -> tuple[KernelIdentity, frozenset[str], str | None]:
    """The running kernel, the features that load on it (probed once per kernel, then cached)
    and a note to print when they could not be probed."""
    from loader.kernel.probe import probe_features, running_kernel

    kernel = running_kernel(settings.kernel_btf)
    try:
        features = frozenset(f.name for f in probe_features(kernel, settings.cache).values() if f.ok)
    except BpfDepotError as exc:  # not root and never probed: build the portable forms
        return kernel, frozenset(), f"bpfdepot: {exc.message}; building tracepoint forms only"
    return kernel, features, None


def _targets(args: argparse.Namespace, settings: Settings,
             this: tuple[KernelIdentity, frozenset[str], str | None] | None = None) -> list:
    """This kernel (features probed; ``this`` when already found), or each --kernel-btf
    (features from a .config beside it)."""
    from builder.compile import Target, form_features
    from loader.kernel.probe import KernelIdentity, file_digest

    if not args.kernel_btf:
        kernel, features, note = this or this_kernel(settings)
        if note:
            _say(note)
        return [Target(identity=kernel, btf=settings.kernel_btf, features=features)]
    from loader.kernel.catalog import features_from_config

    out = []
    for btf in args.kernel_btf:
        path = Path(btf)
        if not path.is_file():
            raise BpfDepotError(f"kernel BTF {path} does not exist",
                                hint="pass raw BTF files such as ../shared/kernels/6.1.0-50-amd64.btf")
        config = path.with_suffix(".config")
        features = form_features(features_from_config(config.read_text(), args.arch),
                                 probed=False) if config.is_file() else frozenset()
        out.append(Target(identity=KernelIdentity(release=path.name.removesuffix(".btf"),
                                                  arch=args.arch, btf_digest=file_digest(path)),
                          btf=path, features=features))
    return out


def cmd_build(args: argparse.Namespace, settings: Settings) -> int:
    """Build the bundle's kernel programs for this kernel (or each --kernel-btf), then its
    user_so processors and bpftrace scripts; print one line per artifact."""
    from builder.toolchain import find_toolchain
    import loader.kernel.probe  # noqa: F401  (before the threads below: see Background)

    # The toolchain's version and this kernel's features are read from the cache, or, in a new
    # store, found by running clang --version (~25 ms) and loading probe programs (~45 ms):
    # done meanwhile, while this thread imports the compiler side and reads the bundle.
    # The jobs make many short calls into C (file reads, hashing, bpf(2)), and after each one
    # wait for the GIL, which this thread's imports hold for up to the switch interval (5 ms);
    # a short interval while they run made cold builds in a new store ~10 % quicker (measured
    # paired with bench/bench_build.py's commands on a busy machine).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    toolchain_job = Background(find_toolchain, settings.cache)
    kernel_job = None if args.kernel_btf else Background(this_kernel, settings)
    try:
        return _build(args, settings, toolchain_job, kernel_job, interval)
    finally:  # on an error too: a probe must not be cut off while it writes the cache
        toolchain_job.join()
        if kernel_job is not None:
            kernel_job.join()
        sys.setswitchinterval(interval)


def _build(args: argparse.Namespace, settings: Settings, toolchain_job: Background,
           kernel_job: Background | None, interval: float) -> int:
    from builder.compile import build_program, reference_for
    from loader.errors import KernelRefused
    from loader.model.manifest import load_bundle

    manifest = load_bundle(args.bundle)
    skipped = [p for p in manifest.programs if p.local_path is None or not p.is_source]
    if len(skipped) == len(manifest.programs):
        first = skipped[0] if skipped else manifest.programs[0]
        raise ManifestError(
            f"{manifest.path}:{first.line}: nothing to build: program '{first.name}' is {first.path}, "
            "not a local source" + (f" (and {len(skipped) - 1} more like it)" if len(skipped) > 1 else ""),
            hint="bpfdepot builds file:// .bpf.c, .c and .go sources; prebuilt and remote paths "
                 "load as they are (bpfdepot run)")
    for program in skipped:
        _say(f"bpfdepot: '{program.name}' is {program.path}, not a local source: not built")
    store = open_store(settings)
    targets = _targets(args, settings, kernel_job.result() if kernel_job else None)
    toolchain = toolchain_job.result()
    sys.setswitchinterval(interval)  # both jobs are done
    # as the farm does: one compile per variant against the newest target's header, then a
    # relocation check per kernel (builder/compile.py); a kernel refused is reported, not fatal
    references = reference_for(targets)
    passed: set[str] = set()
    refused: list[KernelRefused] = []
    rows: list[tuple[str, str, str, int, str, str]] = []
    published: list[tuple[Target, Built]] = []
    for target in targets:
        for program in manifest.kernel_programs:
            if program in skipped:
                continue
            try:
                built = build_program(store, manifest, program, target, toolchain, settings.cache,
                                      reference=references[target.identity.arch])
            except KernelRefused as exc:
                print(f"{program.name:<16} {str(target.identity):<30} REFUSED", flush=True)
                _say(f"  {exc.message}" + (f"\n  {exc.detail}" if exc.detail else ""))
                refused.append(exc)
                continue
            passed.add(program.name)
            if built.warnings:
                _say(built.warnings)
            how = "cached" if built.cached else f"built in {built.seconds:.2f} s"
            rows.append((program.name, str(target.identity), built.meta.digest, built.meta.size,
                         how, built.meta_digest))
            published.append((target, built))
            print(artifact_line(*rows[-1]), end="", flush=True)
    # builder.processors (jinja2) and builder.bpftrace are imported only for bundles that have
    # such programs: most have neither, and their imports would be a third of a cache hit's time
    if any(p.type == "user_so" for p in manifest.programs):
        _build_processors(manifest, store, toolchain, settings)
    if any(p.type == "bpftrace_object" for p in manifest.programs):
        _check_bpftrace(manifest, store, targets)
    nowhere = sorted({p.name for p in manifest.kernel_programs if p not in skipped} - passed)
    if refused and nowhere:  # refused on every kernel it was built for: nothing to run
        raise KernelRefused(f"{', '.join(nowhere)} refused on every target kernel: "
                            f"{refused[0].message}", hint=refused[0].hint)
    if not (refused or skipped or len(manifest.kernel_programs) < len(manifest.programs)):
        _stamp(args, settings, manifest, store, targets, toolchain, rows, published)
    return 0


def _stamp(args: argparse.Namespace, settings: Settings, manifest, store, targets: list,
           toolchain, rows: list, published: list[tuple[Target, Built]]) -> None:
    """Leave what the next identical ``build`` needs to answer without building (builder/quick.py):
    only for a local store, kernel programs alone, every one stored for every target."""
    import os

    from builder.compile import closure_of
    from builder.quick import record
    from loader.artifacts.meta import index_ref
    from loader.artifacts.store import LocalStore

    argv = getattr(args, "argv", None)
    if argv is None or not isinstance(store, LocalStore) or os.environ.get("BPFDEPOT_SIGNING_KEY"):
        return
    if any("#" in built.meta_digest for _, built in published):
        return  # found in a farm's verdict sheet (loader/artifacts/sheets.py), not at an index ref
    files = [manifest.path, toolchain.clang, toolchain.bpftool, settings.cache / "toolchain.json"]
    files += [t.btf for t in targets]
    kernels = settings.cache / "kernels"
    files += sorted(kernels.iterdir()) if kernels.is_dir() else []
    for program in manifest.kernel_programs:
        files += [f.path for f in closure_of(manifest, program)]
    for target, built in published:
        files += [store.blob_path(built.meta.digest), store.blob_path(built.meta_digest),
                  store.ref_path(index_ref(built.meta.name, built.meta.source_digest,
                                           target.identity))]
        if built.meta.extra.get("min_btf"):
            files.append(store.blob_path(built.meta.extra["min_btf"]))
    record(argv, os.environ, Path.cwd(), files, rows)


def _check_bpftrace(manifest, store, targets: list) -> None:
    """bpftrace_object scripts: checked for every target; the refused kernels fail the build
    after the others are stored (builder/bpftrace.py)."""
    from builder.bpftrace import check_for_targets

    refused = []
    for program in manifest.programs:
        if program.type != "bpftrace_object" or program.local_path is None:
            continue
        built, errors = check_for_targets(store, manifest, program, targets)
        for item in built:
            how = "cached" if item.cached else f"checked in {item.seconds:.2f} s"
            print(f"{program.name:<16} {str(item.meta.target):<30} {item.meta.digest} "
                  f"{item.meta.size:>7} B  {how:<15} meta {item.meta_digest}")
        refused += errors
    if len(refused) == 1:
        raise refused[0]
    if refused:
        from loader.errors import BuildError

        raise BuildError("; ".join(e.message for e in refused), hint=refused[0].hint)


def _build_processors(manifest, store, toolchain, settings: Settings) -> None:
    """user_so sources are built once per arch: natively, for this machine's."""
    from builder.processors import build_processor, host_arch

    for program in manifest.programs:
        if program.type != "user_so" or not program.is_source or program.local_path is None:
            continue
        built = build_processor(store, manifest, program, host_arch(), toolchain, settings.cache)
        if built.warnings:
            _say(built.warnings)
        how = "cached" if built.cached else f"built in {built.seconds:.2f} s"
        print(f"{program.name:<16} {host_arch() + ' (user_so)':<30} {built.meta.digest} "
              f"{built.meta.size:>7} B  {how:<15} meta {built.meta_digest}")
