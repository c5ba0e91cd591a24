"""Many kernel packages into the catalog in one go: fetched and read in parallel, stored one
by one, identical BTFs kept once, progress on stderr.

Downloads wait on the network and reading a package (dpkg-deb, then decompressing a 10–30 MB
vmlinuz) on the CPU, so each has its own small thread pool: a package is read as soon as its
download ends, while others still download. lzma and zlib release the GIL while they work;
zstd and lz4 run as child processes. Reader threads store a new kernel's blobs (content-
addressed, so any thread may); only the calling thread writes catalog entries, so the duplicate
check and the write of an entry never race: each entry is written whole (blobs first, then its
ref) or not at all, and a failed package leaves the others stored.

Two packages with byte-identical BTF are one kernel identity (the catalog keys entries by arch
and BTF digest): the first one stored stays, a later one with the same release is "already
known", and one with another release is skipped with its release recorded in the kept entry's
``source`` ("…; same BTF: 6.1.0-51-cloud-amd64"), so nothing is dropped silently. Artifacts
are built per BTF, so a node of the skipped release finds them by its BTF digest.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import queue
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from builder.debian import AptIndex, DebCache, IndexPackage, LocalDeb, Source, resolve
from builder.kernelpkg import PackageKernel, read_package
from builder.kernels import KernelBlobs, format_table, put_blobs, store_package
from loader.artifacts.store import ArtifactStore
from loader.errors import BpfDepotError
from loader.kernel.catalog import (FLAVOURS, KernelEntry, get_kernel, parse_version_range, put_kernel,
                                   release_order)
from loader.model.settings import Settings

Outcome = Literal["added", "known", "duplicate"]
DOWNLOADS = 3  # parallel apt-get downloads: enough to keep a mirror busy, polite to it


@dataclass(slots=True)
class BatchReport:
    """What one ``kernels add --package …`` did, package by package."""

    added: list[KernelEntry] = field(default_factory=list)
    known: list[KernelEntry] = field(default_factory=list)
    duplicates: list[tuple[str, KernelEntry]] = field(default_factory=list)  # (release, kept entry)
    failed: list[tuple[str, str]] = field(default_factory=list)              # (package, why)
    downloaded: int = 0
    cached: int = 0

    def summary(self) -> str:
        return (f"kernels add: {len(self.added)} added, {len(self.known)} already known, "
                f"{len(self.duplicates)} identical BTF skipped, {len(self.failed)} failed "
                f"({self.downloaded} downloaded, {self.cached} from the cache)")


def record(store: ArtifactStore, kernel: PackageKernel, *, btf_on_node: bool = True,
           blobs: KernelBlobs | None = None) -> tuple[Outcome, KernelEntry]:
    """Store one read package unless its BTF is already in the catalog (see the module doc);
    ``blobs`` when a reader thread has stored its blobs already."""
    old = get_kernel(store, kernel.arch, kernel.btf_digest)
    if old is not None and old.release != kernel.release:
        note = f"; same BTF: {kernel.release}"
        if note not in old.source:
            old = put_kernel(store, dataclasses.replace(old, source=old.source + note))
        return "duplicate", old
    if old is not None and old.image is not None and old.config_blob is not None:
        return "known", old
    # new, or known without its boot image or config (added with --btf, or registered by a node)
    return "added", store_package(store, kernel, btf_on_node=btf_on_node, blobs=blobs)


def _read(store: ArtifactStore, path: Path) -> tuple[PackageKernel, KernelBlobs | None]:
    """Read a package and, when its BTF is new to the catalog, store its blobs here in the
    reader thread (writing 10–30 MB per kernel), leaving only the small entry to the caller.
    Two packages with one BTF in the same run may both store theirs: blobs are
    content-addressed, so the worst case is one unreferenced boot image."""
    kernel = read_package(path)
    if get_kernel(store, kernel.arch, kernel.btf_digest) is not None:
        return kernel, None
    return kernel, put_blobs(store, btf=kernel.btf, config=kernel.config, image=kernel.image)


def _name(source: Source) -> str:
    return source.path.name if isinstance(source, LocalDeb) else source.name


def _fetch(cache: DebCache, source: Source) -> tuple[Path, str]:
    """The .deb on disk and how it got there: "local", "downloaded" or "cached"."""
    if isinstance(source, LocalDeb):
        if not source.path.is_file():
            raise BpfDepotError(f"kernel package {source.path} does not exist",
                                hint="give a .deb file, a package name or a glob")
        cache.check_size(source.path.stat().st_size, str(source.path))
        return source.path, "local"
    path, downloaded = cache.fetch(source)
    return path, "downloaded" if downloaded else "cached"


def _why(exc: BaseException) -> str:
    if isinstance(exc, BpfDepotError):
        return exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    return f"{type(exc).__name__}: {exc}"


def add_packages(store: ArtifactStore, sources: Sequence[Source], cache: DebCache, *,
                 progress: TextIO, btf_on_node: bool = True,
                 jobs: int | None = None) -> BatchReport:
    """Fetch, read and store every source; one progress line per package as it completes."""
    report = BatchReport()
    done: queue.Queue[tuple[Source, str, tuple[PackageKernel, KernelBlobs | None] | BaseException]] \
        = queue.Queue()
    readers = jobs or max(1, min(4, os.cpu_count() or 1))

    with ThreadPoolExecutor(DOWNLOADS, thread_name_prefix="deb-fetch") as fetching, \
            ThreadPoolExecutor(readers, thread_name_prefix="deb-read") as reading:

        def fetched(source: Source, future: Future[tuple[Path, str]]) -> None:
            try:
                path, how = future.result()
                reading.submit(_read, store, path).add_done_callback(
                    lambda read: done.put((source, how, read.exception() or read.result())))
            except BaseException as exc:  # noqa: BLE001 - reported as this package's failure
                done.put((source, "", exc))

        for source in sources:
            fetching.submit(_fetch, cache, source).add_done_callback(
                lambda future, source=source: fetched(source, future))

        for n in range(1, len(sources) + 1):
            source, how, result = done.get()
            report.downloaded += how == "downloaded"
            report.cached += how == "cached"
            size = f"{source.size / 1e6:5.1f} MB" if isinstance(source, IndexPackage) else ""
            if isinstance(result, BaseException):
                report.failed.append((_name(source), _why(result)))
                print(f"[{n}/{len(sources)}] {_name(source)}  FAILED: {_why(result)}", file=progress,
                      flush=True)
                continue
            kernel, blobs = result
            try:
                outcome, entry = record(store, kernel, btf_on_node=btf_on_node, blobs=blobs)
            except (BpfDepotError, OSError) as exc:  # the store refused: this one failed, others go on
                report.failed.append((_name(source), _why(exc)))
                print(f"[{n}/{len(sources)}] {kernel.release}  FAILED: {_why(exc)}", file=progress,
                      flush=True)
                continue
            if outcome == "added":
                report.added.append(entry)
                said = "added"
            elif outcome == "known":
                report.known.append(entry)
                said = "already known"
            else:
                report.duplicates.append((kernel.release, entry))
                said = f"same BTF as {entry.release}, skipped"
            print(f"[{n}/{len(sources)}] {kernel.release}  {size}  btf {kernel.btf_digest[:12]}…  "
                  f"{said} ({how})", file=progress, flush=True)
    return report


def plan_text(sources: Sequence[Source], cache: DebCache) -> str:
    """What ``--dry-run`` prints: one line per package, whether it is cached, the total."""
    lines, to_fetch = [], 0
    for source in sources:
        if isinstance(source, LocalDeb):
            lines.append(f"{source.path}  (local file)")
            continue
        path = cache.folder / source.filename
        # a cheap look (name and size); the real fetch also checks SHA256 and dpkg-deb
        cached = path.is_file() and path.stat().st_size == source.size
        to_fetch += 0 if cached else source.size
        lines.append(f"{source.name}  {source.version}  {source.size / 1e6:.1f} MB  "
                     f"{'cached' if cached else 'to download'}")
    lines.append(f"{len(sources)} packages, {to_fetch / 1e6:.1f} MB to download into {cache.folder}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the command

def cmd_add_packages(args: argparse.Namespace, settings: Settings, store: ArtifactStore) -> int:
    """``--package VALUE…`` / ``--from-index``: resolve, then add them all (builder/kernelbatch)."""
    flavours = [f.strip() for f in (args.flavour or "").split(",") if f.strip()]
    for flavour in flavours:
        if flavour not in FLAVOURS:
            raise BpfDepotError(f"--flavour {args.flavour}: unknown flavour '{flavour}'",
                                hint=f"flavours are {', '.join(FLAVOURS)}")
    versions = parse_version_range(args.versions) if args.versions else ()
    if args.limit is not None and args.limit < 1:
        raise BpfDepotError(f"--limit {args.limit}: give a count of 1 or more")
    if args.max_size < 1:
        raise BpfDepotError(f"--max-size {args.max_size}: give megabytes, 1 or more")
    cache = DebCache(Path(args.deb_cache) if args.deb_cache else settings.cache / "debs",
                     max_bytes=args.max_size * 1_000_000)
    sources = resolve(args.package or [], from_index=args.from_index,
                      index=AptIndex(apt_cache=cache.apt_cache), flavours=flavours,
                      versions=versions, limit=args.limit)
    if args.dry_run:
        print(plan_text(sources, cache), end="")
        return 0
    report = add_packages(store, sources, cache, progress=sys.stderr,
                          btf_on_node=not args.no_node_btf, jobs=args.jobs)
    print(report.summary(), file=sys.stderr)
    shown = {(e.arch, e.btf_digest): e for e in report.added + report.known
             + [kept for _, kept in report.duplicates]}
    if shown:
        print(format_table(sorted(shown.values(), key=lambda e: release_order(e.release))), end="")
    return 1 if report.failed else 0
