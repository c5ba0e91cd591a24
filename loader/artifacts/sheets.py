"""Verdict sheets: the verdicts of one compile for many kernels, published in one write.

A farm task compiles an object once and checks it for every kernel of its variant (30 kernels
are 30 verdicts). Published one by one, each kernel costs a meta blob and an index ref: two
store writes, most of the price of an extra kernel. A sheet holds them all instead:

    blob(sheet) → ref sheets/<program>/<sources>/<sheet hex>                  (one compile)

    {"kind": "bpfdepot-verdict-sheet", "version": 1, "program", "source_digest",
     "object_key", "object", "published_ns",
     "base":    the meta fields every kernel shares (the compile's),
     "metas":   {"<arch>-<btf>": {"key", "target", "extra"}},   the kernels that passed
     "refused": {"<arch>-<btf>": the refusal, as the index ref would hold it}}

A kernel's meta is ``base`` with its entry, and its bytes are ``ArtifactMeta.to_json`` of that,
exactly as if it had been stored alone: signatures and nodes recompute the same meta digest. A
meta kept in a sheet is named by its *address*, ``sha256:<sheet>#<arch>-<btf>``, wherever a
meta digest goes (job records, lock pins, ``bpfdepot inspect``); ``read_meta`` reads both.

Sheets never replace a kernel's own index ref: ``read_index`` reads the index ref first (a
load-tested artifact, a local build, a refusal written one by one) and the sheets only when it
is absent or holds a refusal. Among sheets the newest pass wins; a pass wins over any refusal
(as at an index ref, where a refusal never replaces a pass). The farm publishes a kernel that
has an index ref there, not in a sheet (builder/jobs.py). Every sheet has a ref of its own,
named by its digest: sheets are never rewritten, so publishers never race.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from loader.artifacts.meta import ArtifactMeta
from loader.artifacts.store import ArtifactStore, check_digest
from loader.errors import StoreError
from loader.kernel.probe import KernelIdentity

KIND = "bpfdepot-verdict-sheet"
VERSION = 1
PER_KERNEL = ("key", "target", "extra")  # what differs between the kernels of one compile
_PARSED_MAX = 512
_PARSED: dict[str, dict[str, Any]] = {}  # sheets are blobs: parsed once per process
_LOCK = threading.Lock()


def sheet_prefix(program: str, source_digest: str) -> str:
    return f"sheets/{program}/{source_digest}"


def target_key(identity: KernelIdentity) -> str:
    return f"{identity.arch}-{identity.btf_digest}"


def split_address(address: str) -> tuple[str, str]:
    sheet, _, target = address.partition("#")
    check_digest(sheet, f"meta address {address!r}")
    return sheet, target


def publish_sheet(store: ArtifactStore, *, program: str, source_digest: str, object_key: str,
                  metas: dict[str, ArtifactMeta], refused: dict[str, dict[str, Any]]) -> str:
    """Store one compile's verdicts (``metas`` of the kernels that passed, ``refused`` bodies
    of the others, both by target key) as one sheet; its digest. Blob first, then its ref:
    a reader sees the whole sheet or none of it."""
    base: dict[str, Any] = {}
    entries: dict[str, dict[str, Any]] = {}
    for target, meta in metas.items():
        body = meta.to_body()  # what to_json writes: a meta rebuilt from it has its bytes
        if not base:
            base = {k: v for k, v in body.items() if k not in PER_KERNEL}
        elif any(body[k] != v for k, v in base.items()):
            raise ValueError(f"sheet for {program}: the metas of one compile differ beyond "
                             f"{PER_KERNEL} ({target})")
        entries[target] = {k: body[k] for k in PER_KERNEL}
    sheet = {"kind": KIND, "version": VERSION, "program": program, "source_digest": source_digest,
             "object_key": object_key, "object": base.get("digest", ""),
             "published_ns": time.time_ns(), "base": base, "metas": entries, "refused": refused}
    digest = store.put_blob(json.dumps(sheet, sort_keys=True, separators=(",", ":")).encode(),
                            new=True)
    store.put_ref(f"{sheet_prefix(program, source_digest)}/{digest.removeprefix('sha256:')}",
                  digest)
    return digest


def read_sheet(store: ArtifactStore, digest: str) -> dict[str, Any]:
    with _LOCK:
        found = _PARSED.get(digest)
    if found is not None:
        return found
    try:
        sheet = json.loads(store.read_blob(digest))  # read_blob checks the sha256
    except ValueError as exc:
        raise StoreError(f"verdict sheet {digest} in {store} is not JSON: {exc}",
                         hint="delete its ref under sheets/ and build again") from None
    if not isinstance(sheet, dict) or sheet.get("kind") != KIND or sheet.get("version") != VERSION:
        raise StoreError(f"{digest} in {store} is not a verdict sheet of version {VERSION}",
                         hint="build again with this version of bpfdepot")
    with _LOCK:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[digest] = sheet
    return sheet


def meta_in_sheet(store: ArtifactStore, address: str) -> ArtifactMeta:
    """The meta an address names (raises StoreError when the sheet has no pass for it)."""
    digest, target = split_address(address)
    sheet = read_sheet(store, digest)
    entry = sheet["metas"].get(target)
    if entry is None:
        raise StoreError(f"verdict sheet {digest} holds no artifact for kernel {target}",
                         hint="use the meta digest `bpfdepot submit --wait` or the lock printed")
    return ArtifactMeta.from_body({**sheet["base"], **entry}, f"meta {address}")


@dataclass(frozen=True, slots=True)
class SheetView:
    """The sheets of one program's sources, listed once: every kernel's verdict among them."""

    store: ArtifactStore
    sheets: tuple[tuple[str, dict[str, Any]], ...]  # (digest, sheet), oldest first

    @classmethod
    def of(cls, store: ArtifactStore, program: str, source_digest: str) -> SheetView:
        digests = store.read_refs(sheet_prefix(program, source_digest)).values()
        sheets = [(d, read_sheet(store, d)) for d in digests]
        return cls(store, tuple(sorted(sheets, key=lambda s: (s[1].get("published_ns", 0), s[0]))))

    def targets(self) -> set[str]:
        return {t for _, s in self.sheets for t in (*s["metas"], *s["refused"])}

    def verdict(self, target: str) -> tuple[ArtifactMeta, str] | dict[str, Any] | None:
        """The newest pass for ``target`` (its meta and address), else its newest refusal."""
        refusal = None
        for digest, sheet in reversed(self.sheets):
            if target in sheet["metas"]:
                address = f"{digest}#{target}"
                return ArtifactMeta.from_body({**sheet["base"], **sheet["metas"][target]},
                                              f"meta {address}"), address
            if refusal is None and target in sheet["refused"]:
                refusal = sheet["refused"][target]
        return refusal
