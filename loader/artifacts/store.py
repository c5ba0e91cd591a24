"""The artifact store: content-addressed blobs plus create-only named refs.

    blobs/sha256/ab/cdef…        immutable bytes, named by their sha256
    refs/<namespace>/<name>      a digest ("sha256:…"); the first writer wins, never overwritten

Namespaces: ``builds/<build key>`` → meta digest (the builder's cache for processors and
bpftrace checks), ``objects/<object key>`` → a kernel program's compile, ``index/<program>/
<source digest>/<arch>-<btf digest>`` → meta digest (how a node finds what was built for it; for
kernel programs the farm's latest verdict there: replaced with ``set_ref``), ``sheets/<program>/
<source digest>/<sheet hex>`` → a verdict sheet (one compile's verdicts for many kernels: where
a node looks when the index ref is absent, loader/artifacts/sheets.py),
``kernels/<arch>-<btf digest>`` → a kernel catalog entry (replaced when a node registers newer
probe results), ``vmimages/<arch>-<btf digest>`` → a VM image for load tests.
Every read checks the sha256 of what it returns; writes go to a temp file and are published
with link(2), which fails if the name exists, so a crash leaves no half-written object. A blob
found damaged (its bytes no longer match its name) is the one thing ever replaced: writing the
right bytes again heals it, so a rebuild repairs the store.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from loader.model.settings import Settings

from loader.errors import BlobCorrupt, BlobNotFound, StoreError

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REF = re.compile(r"^[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*$")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str, where: str = "") -> None:
    if not _DIGEST.fullmatch(digest):
        raise StoreError(f"{where + ': ' if where else ''}not a sha256 digest: {digest!r}",
                         hint="digests look like sha256:<64 hex>")


def check_ref(name: str) -> None:
    if not _REF.fullmatch(name) or ".." in name.split("/"):
        raise StoreError(f"bad ref name {name!r}")


def open_store(settings: "Settings") -> ArtifactStore:
    """The store the settings name: the local folder (default) or s3://BUCKET/PREFIX."""
    if settings.store.startswith("s3://"):
        from loader.artifacts.s3store import S3Store

        return S3Store(settings.store, endpoint=settings.s3_endpoint, cache_dir=settings.cache / "s3")
    return LocalStore(Path(settings.store) if settings.store else settings.home)


# What to do about a damaged or lost blob: a rebuild writes it again (put_blob heals).
REBUILD_HINT = "rebuild it (bpfdepot build BUNDLE, or submit it to the farm) to write it again"


class ArtifactStore(Protocol):
    def put_blob(self, data: bytes, *, new: bool = False) -> str: ...
    def read_blob(self, digest: str) -> bytes: ...
    def has_blob(self, digest: str) -> bool: ...
    def blob_path(self, digest: str) -> Path: ...
    def put_ref(self, name: str, digest: str) -> str: ...
    def get_ref(self, name: str) -> str | None: ...
    def set_ref(self, name: str, digest: str) -> None: ...
    def list_refs(self, prefix: str) -> list[str]: ...
    def read_refs(self, prefix: str) -> dict[str, str]: ...


class LocalStore:
    """The embedded default: a folder (``artifacts/`` or ``$BPFDEPOT_HOME``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"

    def __repr__(self) -> str:
        return f"LocalStore({self.root})"

    def _blob(self, digest: str) -> Path:
        check_digest(digest)
        hexd = digest.removeprefix("sha256:")
        return self.root / "blobs" / "sha256" / hexd[:2] / hexd[2:]

    def _publish(self, path: Path, data: bytes, *, replace: bool = False) -> bool:
        """Write ``data`` at ``path`` unless something is there (``replace``: whatever is
        there, atomically); True when we wrote it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if replace:
                os.replace(tmp, path)
                return True
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StoreError(f"store {self.root} is full", hint="free space or move BPFDEPOT_HOME") from exc
            raise StoreError(f"cannot write {path}: {exc.strerror}") from exc
        finally:
            if os.path.exists(tmp):  # gone when it replaced the damaged copy
                os.unlink(tmp)

    def put_blob(self, data: bytes, *, new: bool = False) -> str:
        """Store ``data`` under its digest (``new`` is a hint for remote stores)."""
        digest = digest_of(data)
        path = self._blob(digest)
        if not self._publish(path, data) and not self.has_blob(digest):
            self._publish(path, data, replace=True)  # a damaged copy was there: this heals it
        return digest

    def read_blob(self, digest: str) -> bytes:
        path = self._blob(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} is not in {self}", hint=REBUILD_HINT) from None
        if digest_of(data) != digest:
            raise BlobCorrupt(f"blob {digest} in {self} is corrupt (its sha256 is {digest_of(data)}); "
                             "nothing was loaded", hint=REBUILD_HINT)
        return data

    def has_blob(self, digest: str) -> bool:
        """True when the blob is there with the bytes its name promises."""
        try:
            return digest_of(self._blob(digest).read_bytes()) == digest
        except FileNotFoundError:
            return False

    def blob_path(self, digest: str) -> Path:
        self.read_blob(digest)  # verify before anyone opens it
        return self._blob(digest)

    def put_ref(self, name: str, digest: str) -> str:
        self._blob(digest)  # a ref is forever: refuse anything that is not a digest
        path = self._ref(name)
        if not self._publish(path, digest.encode()):
            return self.get_ref(name) or digest
        return digest

    def get_ref(self, name: str) -> str | None:
        try:
            value = self._ref(name).read_text().strip()
        except FileNotFoundError:
            return None
        if not _DIGEST.fullmatch(value):
            raise StoreError(f"ref {name} in {self} holds {value!r}, not a digest",
                             hint=f"delete {self._ref(name)}")
        return value

    def set_ref(self, name: str, digest: str) -> None:
        """Point ``name`` at ``digest``, replacing what was there (atomic rename)."""
        self._blob(digest)
        path = self._ref(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        with os.fdopen(fd, "w") as f:
            f.write(digest)
        os.replace(tmp, path)

    def list_refs(self, prefix: str) -> list[str]:
        """Names of the refs under ``prefix`` (a folder-like path such as "kernels"), sorted."""
        base = self._ref(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        root = self.root / "refs"
        return sorted(p.relative_to(root).as_posix() for p in base.rglob("*") if p.is_file())

    def read_refs(self, prefix: str) -> dict[str, str]:
        """Every ref under ``prefix`` with the digest it holds."""
        found = {name: self.get_ref(name) for name in self.list_refs(prefix)}
        return {name: digest for name, digest in found.items() if digest is not None}

    def _ref(self, name: str) -> Path:
        check_ref(name)
        return self.root / "refs" / name

    def ref_path(self, name: str) -> Path:
        """Where the ref ``name`` is kept (builder/quick.py watches it)."""
        return self._ref(name)
