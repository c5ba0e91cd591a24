"""The load-test VM's image: the static loader, the base initramfs, and both cached per kernel.

    loader      loadtest.c built with ``gcc -static … -lbpf -lelf -lz -lzstd`` (Debian's
                libbpf 1.1), cached in ``<cache_dir>/vmtest/`` by the digest of its recipe
    initramfs   a gzipped newc cpio: busybox-static, ``/init`` (mounts proc, sysfs, devtmpfs,
                bpffs, debugfs, tracefs, runs the loader on /objects, powers off), the loader
    VM image    per kernel, in the store: the ref ``vmimages/<arch>-<btf digest>`` names a JSON
                blob naming the kernel's vmlinuz blob, the initramfs blob and the loader's digest;
                blobs are copied to ``<cache_dir>/blobs/`` for QEMU to read

A run appends its objects to the base initramfs as a second, uncompressed cpio archive (the
kernel unpacks concatenated archives in order), after padding the gzipped part to 4 bytes: the
unpacker looks for the next magic at a 4-byte boundary and, missing it, says "invalid magic"
and drops the objects. Everything is built in Python with fixed modes and times, so the same
recipe gives the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from builder.vmtest.run import VmTestError
from loader.artifacts.store import ArtifactStore, check_digest, digest_of
from loader.errors import StoreError
from loader.kernel.catalog import KernelEntry

LOADER_SOURCE = Path(__file__).with_name("loadtest.c")
BUSYBOX = Path("/bin/busybox")  # busybox-static: one static binary, every applet the init needs
BUILD_PACKAGES = "gcc libbpf-dev libelf-dev zlib1g-dev libzstd-dev busybox-static"
LOADER_CFLAGS = ("-O2", "-static", "-Wall")
LOADER_LIBS = ("-lbpf", "-lelf", "-lz", "-lzstd")
FORMAT = 1  # of the image record and the initramfs layout: bump to rebuild every stored image
OBJECTS_DIR = "objects"         # where the VM holds a run's objects: /objects/000.o …

MAX_OBJECTS = 1000              # files in one boot (their names are 000.o … 999.o)
MAX_OBJECT_BYTES = 64 << 20     # all objects of one boot: the initramfs lives in the VM's 512 MiB

INIT = f"""#!/bin/sh
# bpfdepot load-test VM: PID 1 (made by builder/vmtest/image.py)
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t bpf bpffs /sys/fs/bpf
/bin/busybox mount -t debugfs debugfs /sys/kernel/debug
/bin/busybox mount -t tracefs tracefs /sys/kernel/tracing
/loadtest /{OBJECTS_DIR}
echo "BPFDEPOT-LOADER-EXIT $?"
/bin/busybox poweroff -f
"""


def recipe_digest() -> str:
    """What the loader and initramfs are made from: a stored image made from another recipe
    is rebuilt (busybox's own bytes are recorded by the loader digest's neighbour in the
    record, not here, so that the recipe is known without reading the host's binaries)."""
    h = hashlib.sha256()
    for part in (str(FORMAT).encode(), LOADER_SOURCE.read_bytes(), INIT.encode(),
                 " ".join(LOADER_CFLAGS + LOADER_LIBS).encode()):
        h.update(len(part).to_bytes(8, "little") + part)
    return "sha256:" + h.hexdigest()


def build_loader(cache_dir: Path) -> Path:
    """The static loader for this recipe, compiled on first use (~1 s)."""
    out = cache_dir / "vmtest" / f"loadtest-{recipe_digest().removeprefix('sha256:')[:16]}"
    if out.exists():
        return out
    if shutil.which("gcc") is None:
        raise VmTestError("building the VM's static loader needs gcc", hint=f"apt-get install {BUILD_PACKAGES}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".loadtest-")
    os.close(fd)
    try:
        proc = subprocess.run(["gcc", *LOADER_CFLAGS, "-o", tmp, str(LOADER_SOURCE), *LOADER_LIBS],
                              capture_output=True, timeout=300, check=False)
        if proc.returncode != 0:
            raise VmTestError(f"building the VM's static loader from {LOADER_SOURCE.name} failed",
                              detail=proc.stderr.decode(errors="replace")[-4000:],
                              hint=f"the static libraries come from: apt-get install {BUILD_PACKAGES}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


# ---------------------------------------------------------------- cpio (newc)

_DIR, _FILE, _LINK, _CHR = 0o040755, 0o100755, 0o120777, 0o020600


def _cpio_entry(ino: int, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    fields = (ino, mode, 0, 0, 1 if mode != _DIR else 2, 0, len(data), 0, 0, rdev[0], rdev[1],
              len(name) + 1, 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def cpio(entries: list[tuple[str, int, bytes]], *, devices: tuple[tuple[str, int, int], ...] = ()) -> bytes:
    """A newc archive of (path, mode, bytes-or-link-target) entries, plus character devices."""
    parts = [_cpio_entry(i + 1, name, mode, data) for i, (name, mode, data) in enumerate(entries)]
    parts += [_cpio_entry(len(entries) + i + 1, name, _CHR, rdev=(major, minor))
              for i, (name, major, minor) in enumerate(devices)]
    parts.append(_cpio_entry(0, "TRAILER!!!", 0))
    return b"".join(parts)


def base_initramfs(loader: Path) -> bytes:
    """The gzipped base archive, padded to 4 bytes so another archive may follow."""
    if not BUSYBOX.is_file():
        raise VmTestError(f"the VM's initramfs needs {BUSYBOX}", hint="apt-get install busybox-static")
    dirs = ["bin", "dev", "proc", "sys", "tmp", OBJECTS_DIR]
    entries = [(d, _DIR, b"") for d in dirs]
    entries += [("bin/busybox", _FILE, BUSYBOX.read_bytes()), ("bin/sh", _LINK, b"busybox"),
                ("init", _FILE, INIT.encode()), ("loadtest", _FILE, loader.read_bytes())]
    # the kernel opens /dev/console for PID 1's stdio before /init runs, so it must exist
    # in the archive itself (devtmpfs is mounted over /dev only later)
    raw = cpio(entries, devices=(("dev/console", 5, 1),))
    packed = gzip.compress(raw, compresslevel=6, mtime=0)
    return packed + b"\0" * (-len(packed) % 4)


def objects_archive(objects: list[bytes]) -> bytes:
    """The second archive of a run: ``objects/000.o`` … in the given order."""
    if len(objects) > MAX_OBJECTS:
        raise VmTestError(f"{len(objects)} objects for one VM boot: at most {MAX_OBJECTS}",
                          hint="split them over several load tests")
    total = sum(len(o) for o in objects)
    if total > MAX_OBJECT_BYTES:
        raise VmTestError(f"{total} bytes of objects for one VM boot: at most {MAX_OBJECT_BYTES}",
                          hint="split them over several load tests")
    return cpio([(f"{OBJECTS_DIR}/{object_file(i)}", 0o100644, data) for i, data in enumerate(objects)])


def object_file(index: int) -> str:
    """The VM's name for the index-th object: the caller's names never enter the VM."""
    return f"{index:03d}.o"


# ---------------------------------------------------------------- the image, per kernel

@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRecord:
    """The stored JSON naming one kernel's VM image."""

    release: str
    arch: str
    kernel: str       # blob digest of the vmlinuz (the KernelEntry's image)
    initramfs: str    # blob digest of the base initramfs
    loader: str       # digest of the static loader inside it
    recipe: str       # recipe_digest() it was made with

    def to_json(self) -> bytes:
        """Deterministic JSON: the same image always gives the same blob."""
        return (json.dumps({"format": FORMAT, **{k: getattr(self, k) for k in self.__slots__}},
                           sort_keys=True, separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> ImageRecord:
        try:
            raw = json.loads(data)
            record = cls(**{k: raw[k] for k in cls.__slots__})
            for digest in (record.kernel, record.initramfs, record.loader, record.recipe):
                check_digest(digest, where)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{where} is not a VM image record ({exc!r})",
                             hint="it is rebuilt when its ref is removed") from None
        return record


def image_ref(entry: KernelEntry) -> str:
    """The store ref of a kernel's VM image: one per kernel identity, like its catalog entry."""
    return f"vmimages/{entry.arch}-{entry.btf_digest}"


def _need_image(entry: KernelEntry) -> str:
    if entry.image is None:
        raise VmTestError(f"kernel {entry} has no boot image to load-test in a VM: it was "
                          f"{entry.source or 'added'}, not from its package",
                          hint=f"bpfdepot kernels add --package linux-image-{entry.release}.deb "
                               f"(apt-get download linux-image-{entry.release} fetches it)")
    return entry.image


def _build(store: ArtifactStore, entry: KernelEntry, kernel: str, cache_dir: Path) -> ImageRecord:
    loader = build_loader(cache_dir)
    initramfs = store.put_blob(base_initramfs(loader))
    return ImageRecord(release=entry.release, arch=entry.arch, kernel=kernel, initramfs=initramfs,
                       loader=digest_of(loader.read_bytes()), recipe=recipe_digest())


def image_record(store: ArtifactStore, entry: KernelEntry, cache_dir: Path) -> ImageRecord:
    """The kernel's VM image record from the store, built and stored on first use."""
    kernel = _need_image(entry)
    ref, recipe = image_ref(entry), recipe_digest()
    found = store.get_ref(ref)
    if found is not None:
        record = ImageRecord.from_json(store.read_blob(found), f"VM image {ref} ({found})")
        if record.recipe == recipe and record.kernel == kernel:
            return record
    record = _build(store, entry, kernel, cache_dir)
    digest = store.put_blob(record.to_json())
    if found is None:
        won = store.put_ref(ref, digest)  # create-only: a concurrent worker may have won
        if won != digest:
            return ImageRecord.from_json(store.read_blob(won), f"VM image {ref} ({won})")
    else:
        store.set_ref(ref, digest)  # made by another recipe (an older loader): replaced
    return record


def local_blob(store: ArtifactStore, digest: str, cache_dir: Path) -> Path:
    """A store blob as a local file QEMU can open (copied once; read_blob checks its sha256)."""
    path = cache_dir / "blobs" / digest.removeprefix("sha256:")
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".blob-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(store.read_blob(digest))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def vm_image(store: ArtifactStore, entry: KernelEntry, cache_dir: Path) -> tuple[Path, Path]:
    """(vmlinuz, base initramfs) as local files: built once per kernel, kept in the store."""
    record = image_record(store, entry, cache_dir)
    return local_blob(store, record.kernel, cache_dir), local_blob(store, record.initramfs, cache_dir)
