"""Pack a bundle as a deterministic ``.tar.gz``, and unpack one that came from anyone.

``pack_bundle`` stores the manifest and every file it uses: each local program's source closure
(bundle files at their path in the bundle; shared headers under ``.bpfdepot/include/``), the
initfile and prebuilt objects. Entries are sorted and carry no time, owner or mode of the
machine that packed them, so the same content gives the same bytes: the bundle is stored under
its sha256.

``unpack_bundle`` treats the archive as hostile. It walks the members itself (never
``extractall``), takes regular files and folders only, refuses names that could land outside the
destination or mean two things, and counts the bytes it really writes, in chunks, against caps
on the total, each file and the compression ratio; header sizes are never trusted. The gzip
stream is decompressed first into an anonymous temporary file, itself capped, so a truncated or
corrupt archive fails on its checksum and the end of the tar can be checked too. On any error
nothing stays in the destination.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from loader.errors import ManifestError
from loader.model.manifest import MANIFEST_NAMES, Manifest
from loader.artifacts.sources import source_closure

INCLUDE_PREFIX = ".bpfdepot/include"  # where shared headers travel inside a bundle
_CHUNK = 1 << 16
_BLOCK = 512  # tar's block size
# What tar adds around each entry at most: a header, a pax header and its data (names are at
# most 255 bytes), and the padding of the data to a block; then the end blocks and the padding
# of the last record.
_ENTRY_OVERHEAD = 4 * _BLOCK
_END_OVERHEAD = 20 * _BLOCK + 2 * _BLOCK
_HINT = "pack the bundle with bpfdepot submit (relative paths, regular files and folders only)"


class BundleError(ManifestError):
    """A packed bundle that cannot be taken: what is wrong, with which entry."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BundleLimits:
    """Caps on what one archive may unpack to: entries, bytes written in total and per file,
    bytes written per byte of archive, folder depth and name length (bytes)."""

    entries: int = 2000
    total_bytes: int = 64 << 20
    file_bytes: int = 16 << 20
    ratio: int = 200
    depth: int = 32
    name_len: int = 255


def bundle_include_dir(root: Path) -> Path:
    """Where an unpacked bundle's shared headers are (the include folder of its builds)."""
    return root / ".bpfdepot" / "include"


def bundle_files(manifest: Manifest, include_dirs: Sequence[Path]) -> dict[str, bytes]:
    """Archive name → content of every file the manifest uses, the manifest first among them."""
    files: dict[str, bytes] = {}

    def add(name: str, data: bytes, origin: Path) -> None:
        if files.get(name, data) != data:
            raise BundleError(f"{manifest.path}: two different files would be packed as {name!r} "
                              f"(one is {origin})",
                              hint=f"rename the bundle's own {name}: {INCLUDE_PREFIX}/ holds "
                              "the shared headers")
        files[name] = data

    add(manifest.path.name, manifest.raw, manifest.path)
    for program in manifest.programs:
        if program.local_path is None:
            continue
        if not program.is_source:  # a prebuilt object or library, as it is
            add(_in_bundle(program.local_path, manifest.root), program.local_path.read_bytes(),
                program.local_path)
            continue
        for f in source_closure(program.local_path, manifest.root, include_dirs):
            label, _, rest = f.name.partition("/")
            add(rest if label == "src" else f"{INCLUDE_PREFIX}/{rest}", f.data, f.path)
    initfile = manifest.properties.initfile
    if initfile is not None:
        add(_in_bundle(initfile, manifest.root), initfile.read_bytes(), initfile)
    return files


def pack_bundle(manifest: Manifest, include_dirs: Sequence[Path]) -> bytes:
    """The bundle as a ``.tar.gz`` whose bytes depend only on the names and contents packed."""
    files = bundle_files(manifest, include_dirs)
    folders = {str(parent) for name in files for parent in PurePosixPath(name).parents} - {"."}
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(folders | set(files)):
                info = tarfile.TarInfo(name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if name in files:
                    info.type, info.mode, info.size = tarfile.REGTYPE, 0o644, len(files[name])
                    tar.addfile(info, io.BytesIO(files[name]))
                else:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
    return raw.getvalue()


def unpack_bundle(data: bytes, dest: Path, limits: BundleLimits = BundleLimits()) -> Path:
    """Unpack an untrusted bundle into ``dest`` (absent or empty); return its manifest's path."""
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise BundleError(f"cannot unpack a bundle into {dest}: it is not an empty folder",
                          hint="unpack into a new folder")
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryFile() as stream:
            _decompress(data, stream, limits)
            _extract(stream, dest, len(data), limits)
        return _manifest_in(dest)
    except BaseException:
        for child in dest.iterdir():  # it was empty: everything in it is ours
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        if created:
            dest.rmdir()
        raise


def _in_bundle(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root).as_posix()  # the manifest keeps these inside root


def _decompress(data: bytes, out: BinaryIO, limits: BundleLimits) -> None:
    """gunzip ``data`` into ``out``; no longer than the most the entries could need."""
    most_written = min(limits.total_bytes, limits.ratio * len(data))
    cap = most_written + (limits.entries + 1) * _ENTRY_OVERHEAD + _END_OVERHEAD
    size = 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as gz:
            while chunk := gz.read(_CHUNK):
                size += len(chunk)
                if size > cap:
                    rule = (f"over {limits.ratio}× its compressed size" if most_written < limits.total_bytes
                            else f"over {_size(limits.total_bytes)} in total")
                    raise BundleError(f"the bundle's archive expands to {rule} (stopped at {size} bytes)",
                                      hint=f"a bundle holds sources and small objects; {_HINT}")
                out.write(chunk)
    except EOFError:
        raise BundleError(f"the bundle's archive is truncated ({len(data)} bytes, the gzip stream "
                          "does not end)", hint="upload the whole file again") from None
    except (gzip.BadGzipFile, zlib.error) as err:
        raise BundleError(f"the bundle is not a gzip-compressed tar archive ({err})",
                          hint=f"{_HINT}; or: tar -czf bundle.tar.gz -C <folder> .") from None
    out.seek(0)


def _extract(stream: BinaryIO, dest: Path, packed: int, limits: BundleLimits) -> None:
    """Write each member of the tar in ``stream`` under ``dest``, checking it first."""
    kinds: dict[str, bool] = {}  # every path made so far → is a folder
    names: set[str] = set()  # the names entries had, to catch one given twice
    count = written = 0
    try:
        with tarfile.open(fileobj=stream, mode="r:") as tar:
            for member in tar:
                count += 1
                if count > limits.entries:
                    raise BundleError(f"the bundle has more than {limits.entries} entries "
                                      f"(the limit; at entry {member.name!r})", hint=_HINT)
                name = _check_name(member.name, limits)
                _check_type(member)
                if name is None:  # "." or "./": the bundle's root itself
                    continue
                if name in names:
                    raise BundleError(f"bundle entry {name!r} appears twice in the archive",
                                      hint=_HINT)
                names.add(name)
                _make_parents(dest, name, kinds)
                if kinds.get(name, member.isdir()) != member.isdir():
                    raise BundleError(f"bundle entry {name!r} is both a folder and a file",
                                      hint=_HINT)
                if member.isdir():
                    if name not in kinds:
                        os.mkdir(dest / name, 0o755)
                        kinds[name] = True
                    continue
                kinds[name] = False
                written = _copy(tar.extractfile(member), dest / name, name, written, packed, limits)
            _check_end(stream, tar.offset, count)
    except (tarfile.TarError, EOFError, UnicodeError, ValueError) as err:
        raise BundleError(f"the bundle's tar archive is damaged after {count} entries ({err})",
                          hint=_HINT) from None


def _check_name(raw: str, limits: BundleLimits) -> str | None:
    """The entry's name with any "." parts dropped (None for the root), or a BundleError."""
    shown = repr(raw)
    try:
        size = len(raw.encode("utf-8"))  # names that are not UTF-8 come back with surrogates
    except UnicodeError:
        raise BundleError(f"bundle entry {shown} is not valid UTF-8", hint=_HINT) from None
    if any(ord(c) < 0x20 or c == "\x7f" for c in raw):
        raise BundleError(f"bundle entry {shown} has a NUL or control character in its name",
                          hint=_HINT)
    if "\\" in raw:
        raise BundleError(f"bundle entry {shown} has a backslash in its name",
                          hint="name files with '/' between folders; " + _HINT)
    if raw.startswith("/"):
        raise BundleError(f"bundle entry {shown} is an absolute path",
                          hint="store paths relative to the bundle's root; " + _HINT)
    if size > limits.name_len:
        raise BundleError(f"bundle entry {shown} has a name of {size} bytes, over the limit of "
                          f"{limits.name_len}", hint="use shorter names")
    parts = raw.removesuffix("/").split("/")
    if ".." in parts:
        raise BundleError(f"bundle entry {shown} has a '..' component",
                          hint="store paths relative to the bundle's root, inside it; " + _HINT)
    if "" in parts:
        raise BundleError(f"bundle entry {shown} has an empty component ('//')", hint=_HINT)
    parts = [part for part in parts if part != "."]
    if len(parts) > limits.depth:
        raise BundleError(f"bundle entry {shown} is {len(parts)} folders deep, over the limit of "
                          f"{limits.depth}", hint="flatten the bundle's folders")
    return "/".join(parts) or None


_KINDS = {tarfile.SYMTYPE: "a symlink", tarfile.LNKTYPE: "a hard link",
          tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
          tarfile.FIFOTYPE: "a fifo", tarfile.CONTTYPE: "a contiguous file",
          tarfile.GNUTYPE_SPARSE: "a sparse file"}


def _check_type(member: tarfile.TarInfo) -> None:
    """Regular files and folders only; a sparse file's header size is not what it unpacks to."""
    if member.isdir() or (member.type in (tarfile.REGTYPE, tarfile.AREGTYPE)
                          and member.sparse is None):
        return
    kind = "a sparse file" if member.sparse is not None else _KINDS.get(
        member.type, f"of type {member.type!r}")
    target = f" (to {member.linkname!r})" if member.issym() or member.islnk() else ""
    raise BundleError(f"bundle entry {member.name!r} is {kind}{target}: bundles hold regular "
                      "files and folders only",
                      hint="copy the file into the bundle instead of linking it; " + _HINT)


def _make_parents(dest: Path, name: str, kinds: dict[str, bool]) -> None:
    """Make the folders above ``name`` that no entry made yet; none of them may be a file."""
    path = ""
    for part in name.split("/")[:-1]:
        path = f"{path}/{part}" if path else part
        if path not in kinds:
            os.mkdir(dest / path, 0o755)
            kinds[path] = True
        elif not kinds[path]:
            raise BundleError(f"bundle entry {name!r} is inside {path!r}, which is a file",
                              hint=_HINT)


def _copy(source: BinaryIO | None, path: Path, name: str, written: int, packed: int,
          limits: BundleLimits) -> int:
    """Copy one member in chunks, counting what is written; return the bundle's new total."""
    assert source is not None  # regular files always have data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    size = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(_CHUNK):
            size += len(chunk)
            written += len(chunk)
            if size > limits.file_bytes:
                raise BundleError(f"bundle entry {name!r} is over {_size(limits.file_bytes)} "
                                  "(the limit for one file)",
                                  hint="a bundle holds sources and small objects; leave "
                                  "large data out of it")
            if written > limits.total_bytes:
                raise BundleError(f"the bundle's files are over {_size(limits.total_bytes)} in "
                                  f"total (the limit; reached at entry {name!r})",
                                  hint="a bundle holds sources and small objects; leave "
                                  "large data out of it")
            if written > limits.ratio * packed:
                raise BundleError(f"the bundle expands to over {limits.ratio}× its compressed "
                                  f"size of {packed} bytes (the limit; reached at entry {name!r})",
                                  hint="this looks like a compression bomb; " + _HINT)
            out.write(chunk)
    return written


def _check_end(stream: BinaryIO, offset: int, count: int) -> None:
    """After the last member only zero blocks may follow; anything else (or nothing at all)
    means a damaged or cut archive, which tarfile would otherwise end at silently."""
    stream.seek(offset)
    tail = 0
    while chunk := stream.read(_CHUNK):
        if chunk.count(0) != len(chunk):
            raise BundleError(f"the bundle's tar archive is damaged after {count} entries "
                              f"(data that is no tar entry at byte {offset})", hint=_HINT)
        tail += len(chunk)
    if tail < _BLOCK:
        raise BundleError(f"the bundle's tar archive is truncated after {count} entries "
                          "(no end-of-archive blocks)", hint="upload the whole file again")


def _manifest_in(dest: Path) -> Path:
    found = [dest / name for name in MANIFEST_NAMES if (dest / name).is_file()]
    if len(found) != 1:
        what = "no manifest" if not found else f"both {' and '.join(MANIFEST_NAMES)}"
        raise BundleError(f"the bundle has {what} at its root",
                          hint=f"a bundle holds exactly one of {', '.join(MANIFEST_NAMES)} "
                          "at its top; " + _HINT)
    return found[0]


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n % (1 << 20) else f"{n} bytes"
