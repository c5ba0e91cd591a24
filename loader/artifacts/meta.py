"""The artifact contract: ``meta.json`` beside every built object, and how both are found.

A kernel program is compiled once per variant and published per kernel (builder/compile.py,
builder/verdicts.py), in this order, so that no ref ever points at nothing:
    blob(object bytes) → blob(its meta) → ref objects/<object key>            (the compile)
    blob(the kernel's meta.json) → ref index/<program>/<src>/<target>         (each kernel)
    → ref meta-of/<object digest>                                             (once)
The index ref holds the kernel's verdict: its meta, or the farm's refusal (JSON, ``ok: false``,
with the reasons; ``lookup`` skips it, ``read_index`` returns either); a newer pass replaces it.
The farm publishes the verdicts of one compile for the kernels without an index ref together,
in one verdict sheet (loader/artifacts/sheets.py): ``read_index`` reads the sheets where the
index ref is absent, and a meta kept in one is named by its address, ``sha256:<sheet>#<target>``.
Processors and bpftrace checks publish under ``builds/<key>`` and a first-wins index.
The lock (and users) pin the object digest and the meta digest (or address).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from loader.errors import StoreError
from loader.kernel.probe import KernelIdentity
from loader.artifacts.store import ArtifactStore

if TYPE_CHECKING:
    from loader.artifacts.sheets import SheetView

SCHEMA = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ArtifactMeta:
    name: str                      # the manifest's program name
    kind: str                      # "bpf_object"
    key: str                       # sha256 of everything that determines the bytes
    digest: str                    # "sha256:…" of the object
    size: int
    source_digest: str             # sha256 of the source closure (see loader.artifacts.sources)
    target: KernelIdentity
    toolchain: dict[str, str]
    flags: tuple[str, ...]
    inputs: dict[str, str]         # file name in the build → sha256
    programs: tuple[dict[str, Any], ...]
    maps: tuple[dict[str, Any], ...]
    channels: dict[str, dict[str, Any]]
    required_features: tuple[str, ...]
    license: str
    schema: int = SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)
    # where the object was loaded and attached before it was published for this kernel:
    # {"kernel", "how": "vm" | "node <name>", "verdict": "pass", "attached", "skipped", "seconds"}
    load_tested_on: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> bytes:
        return (json.dumps(self.to_body(), indent=1, sort_keys=True) + "\n").encode()

    def to_body(self) -> dict[str, Any]:
        """The values ``to_json`` writes. What asdict gives, made shallowly: its deep copy of
        every layout list took ~1 ms of the farm's ~5 ms per published kernel (nested values
        are plain JSON data already)."""
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        body["target"] = asdict(self.target)
        return body

    @classmethod
    def from_json(cls, data: bytes, where: str) -> ArtifactMeta:
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise StoreError(f"{where}: meta.json is not valid: {exc}", hint="rebuild it") from exc
        return cls.from_body(body, where)

    @classmethod
    def from_body(cls, body: dict[str, Any], where: str) -> ArtifactMeta:
        """The meta of a parsed meta.json, or of a verdict sheet's entry (loader/artifacts/sheets.py)."""
        try:
            body = dict(body)
            if body.get("schema") != SCHEMA:
                raise StoreError(f"{where}: meta.json schema {body.get('schema')} is not {SCHEMA}",
                                 hint="rebuild with this version of bpfdepot")
            body["target"] = KernelIdentity(**body["target"])
            for key in ("flags", "programs", "maps", "required_features"):
                body[key] = tuple(body[key])
            body["load_tested_on"] = tuple(body.get("load_tested_on", ()))  # older metas lack it
            return cls(**body)
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"{where}: meta.json is not valid: {exc}", hint="rebuild it") from exc


def build_ref(key: str) -> str:
    return f"builds/{key}"


def index_ref(program: str, source_digest: str, target: KernelIdentity) -> str:
    return f"index/{program}/{source_digest}/{target.arch}-{target.btf_digest}"


def read_index(store: ArtifactStore, ref: str, *, sheets: SheetView | None = None
               ) -> tuple[ArtifactMeta, str] | dict[str, Any] | None:
    """What a ref holds, in one read: a meta and its digest, or the farm's refusal of a
    program's sources on a kernel (JSON: ok false, reasons; builder/verdicts.py keeps it at the
    index ref, where the artifact would be), or None when nothing was published there. An
    index ref that is absent, or holds a refusal, is looked for in the sources' verdict sheets
    (``sheets`` when the caller listed them already): a pass there comes with its address,
    not a digest (a pass wins over a refusal, as a refusal never replaces a pass)."""
    digest = store.get_ref(ref)
    refusal = None
    if digest is not None:
        data = store.read_blob(digest)
        refusal = refusal_of(data)
        if refusal is None:
            return ArtifactMeta.from_json(data, f"meta {digest}"), digest
    if not ref.startswith("index/"):
        return refusal
    from loader.artifacts.sheets import SheetView

    _, program, source, target = ref.rsplit("/", 3)
    found = (sheets if sheets is not None else SheetView.of(store, program, source)).verdict(target)
    return found if isinstance(found, tuple) or refusal is None else refusal


def refusal_of(data: bytes) -> dict[str, Any] | None:
    """The refusal a blob holds, or None when it is something else (a meta, an object)."""
    if not data.startswith(b"{") or b'"ok": false' not in data:
        return None
    try:
        body = json.loads(data)
    except ValueError:
        return None
    return body if isinstance(body, dict) and body.get("ok") is False else None


def meta_of_ref(object_digest: str) -> str:
    """Where the meta of an object digest is found (so a digest alone can be inspected or run)."""
    return f"meta-of/{object_digest.removeprefix('sha256:')}"


def read_meta(store: ArtifactStore, meta_digest: str) -> ArtifactMeta:
    """The meta a meta digest names, or a verdict sheet's address (``sha256:<sheet>#<target>``)."""
    if "#" in meta_digest:
        from loader.artifacts.sheets import meta_in_sheet

        return meta_in_sheet(store, meta_digest)
    return ArtifactMeta.from_json(store.read_blob(meta_digest), f"meta {meta_digest}")


def lookup(store: ArtifactStore, ref: str) -> tuple[ArtifactMeta, str] | None:
    """The meta (and its digest) a ref points at, or None when nothing was published there
    (or when the farm keeps a refusal there: read_index says why)."""
    found = read_index(store, ref)
    return found if isinstance(found, tuple) else None


def by_digest(store: ArtifactStore, digest: str) -> tuple[ArtifactMeta, str]:
    """The meta for a meta digest, or for an object digest (identical bytes built for several
    targets share one object; its first meta is returned, so prefer meta digests), or for a
    meta's address in a verdict sheet."""
    if "#" in digest:
        return read_meta(store, digest), digest
    data = store.read_blob(digest)
    if data.startswith(b"{"):
        return ArtifactMeta.from_json(data, f"meta {digest}"), digest
    found = lookup(store, meta_of_ref(digest))
    if found is None:
        raise StoreError(f"{digest} is an object without a meta.json in {store}",
                         hint="use the meta digest printed by `bpfdepot build`")
    return found
