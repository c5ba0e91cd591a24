"""Signing what the farm publishes, and checking it on the node before anything loads.

Farm side (``sign_published``, called by builder/compile.py ``publish`` for kernel objects,
processor libraries and checked bpftrace scripts): with ``BPFDEPOT_SIGNING_KEY`` naming an
artifacts-role key, each published artifact gets an in-toto statement (loader/trust/statements.py)
over its file, its ``meta.json`` and its minimal BTF when it has one, stored as a blob and named
by the ref ``signatures/<meta digest>``.

Node side (``TrustPolicy.check``): with a trust root installed (``bpfdepot keys trust``), every
file a run is about to load — kernel objects, processor libraries, bpftrace scripts — must be a
stored artifact whose statement verifies against the root's artifacts role, naming exactly
these bytes. Anything else (unsigned, a prebuilt file from a bundle or a URL, a compile on this
host without a key) is refused, unless the run says ``--allow-unsigned``, which it then says
for each such file. Without a trust root nothing is checked beyond the store's digests.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from loader.artifacts.meta import ArtifactMeta, lookup, meta_of_ref
from loader.artifacts.store import ArtifactStore, digest_of
from loader.errors import TrustError

# Keys, roots and statements are imported where something is signed or checked: every build
# imports this module (sign_published), and a store without a signing key signs nothing.
if TYPE_CHECKING:
    from loader.trust.keys import PrivateKey
    from loader.trust.root import TrustRoot, TrustStore

SIGNING_KEY_ENV = "BPFDEPOT_SIGNING_KEY"
LOCK_KEY_ENV = "BPFDEPOT_LOCK_KEY"


def signature_ref(meta_digest: str) -> str:
    return f"signatures/{meta_digest.removeprefix('sha256:')}"


def _subjects(meta: ArtifactMeta, meta_digest: str) -> dict[str, str]:
    out = {"object": meta.digest.removeprefix("sha256:"),
           "meta.json": meta_digest.removeprefix("sha256:")}
    if meta.extra.get("min_btf"):
        out["min_btf"] = str(meta.extra["min_btf"]).removeprefix("sha256:")
    return out


def _target(meta: ArtifactMeta) -> dict[str, str]:
    return {"release": meta.target.release, "btf_sha256": meta.target.btf_digest,
            "arch": meta.target.arch}


def signing_key(env: dict[str, str] | None = None, var: str = SIGNING_KEY_ENV) -> PrivateKey | None:
    path = (os.environ if env is None else env).get(var)
    if not path:
        return None
    from loader.trust.keys import PrivateKey

    return PrivateKey.load(Path(path))


def sign_artifact(store: ArtifactStore, meta: ArtifactMeta, meta_digest: str, key: PrivateKey,
                  *, replace: bool = False) -> str:
    """Store the signed statement of one published artifact; the envelope's digest."""
    from socket import gethostname  # socket only where a statement is signed (~2 ms to import)

    from loader.trust.statements import artifact_statement, sign_statement

    statement = artifact_statement(
        subjects=_subjects(meta, meta_digest), program=meta.name, kind=meta.kind,
        source=meta.source_digest.removeprefix("sha256:"), target=_target(meta),
        toolchain={k: str(v) for k, v in meta.toolchain.items()}, builder=gethostname(),
        built_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    envelope = store.put_blob(json.dumps(sign_statement(statement, [key]), sort_keys=True).encode())
    if replace:
        store.set_ref(signature_ref(meta_digest), envelope)
    else:
        store.put_ref(signature_ref(meta_digest), envelope)
    return envelope


def sign_published(store: ArtifactStore, meta: ArtifactMeta, meta_digest: str) -> None:
    """The farm's hook: sign when a key is configured and the artifact has no signature yet.
    A meta kept in a verdict sheet (``meta_digest`` is its address) is signed by the digest of
    its bytes, which is what nodes recompute (loader/artifacts/sheets.py)."""
    key = signing_key()
    if key is None:
        return
    if "#" in meta_digest:
        meta_digest = digest_of(meta.to_json())
    if store.get_ref(signature_ref(meta_digest)) is None:
        sign_artifact(store, meta, meta_digest, key)


@dataclass
class TrustPolicy:
    """What a run accepts: ``root`` None means no trust root on this node."""

    root: TrustRoot | None
    allow_unsigned: bool
    say: Callable[[str], None]
    trust: TrustStore | None = None

    @classmethod
    def for_node(cls, home: Path, *, allow_unsigned: bool, say: Callable[[str], None]) -> TrustPolicy:
        from loader.trust.root import TrustStore

        store = TrustStore(home / "trust")
        root = store.root() if store.has_root() else None  # expired or damaged: TrustError
        if root is not None and allow_unsigned:
            say("bpfdepot: --allow-unsigned: files without a valid signature load anyway "
                "(each is named below)")
        return cls(root, allow_unsigned, say, store)

    def check_lock(self, lock_file: Path, bundle: str) -> None:
        """A lock the run uses: signed by the locks role for these bytes, and not older than
        one this node used (``bpfdepot.lock.sig`` beside it)."""
        if self.root is None or not lock_file.exists():
            return
        sig = lock_file.with_name(lock_file.name + ".sig")
        try:
            if not sig.exists():
                raise TrustError(f"{lock_file} is not signed (no {sig.name})",
                                 hint="sign it: BPFDEPOT_LOCK_KEY=KEY bpfdepot sign --lock "
                                      f"{lock_file.parent}")
            from loader.trust.keys import read_json
            from loader.trust.statements import verify_lock

            version = verify_lock(read_json(sig, "lock signature"), self.root, self.trust,
                                  name=bundle, lock=lock_file.read_bytes(), where=str(sig))
            self.say(f"bpfdepot: {lock_file.name}: signed, version {version}")
        except TrustError as exc:
            if not self.allow_unsigned:
                raise
            self.say(f"bpfdepot: --allow-unsigned: using {lock_file} without a valid signature "
                     f"({exc.message})")

    def check(self, store: ArtifactStore, files: Iterable[tuple[str, Path, ArtifactMeta | None]]) -> None:
        """Each (label, file about to load, its meta when resolved from the store)."""
        if self.root is None:
            return
        for label, path, meta in files:
            try:
                self._check_one(store, label, path, meta)
            except TrustError as exc:
                if not self.allow_unsigned:
                    raise
                self.say(f"bpfdepot: --allow-unsigned: loading {label} without a valid "
                         f"signature ({exc.message})")

    def _check_one(self, store: ArtifactStore, label: str, path: Path,
                   meta: ArtifactMeta | None) -> None:
        digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        if meta is None or meta.digest != digest or not meta.key:
            found = lookup(store, meta_of_ref(digest))
            if found is None:
                raise TrustError(f"{label} ({path}) is not a signed artifact of the store: it "
                                 "was built or fetched outside the farm",
                                 hint="build it with the farm (bpfdepot submit) under a signing "
                                      "key, or run with --allow-unsigned")
            meta = found[0]
        meta_digest = digest_of(meta.to_json())
        envelope_digest = store.get_ref(signature_ref(meta_digest))
        if envelope_digest is None:
            raise TrustError(f"{label} ({meta.digest[:19]}…) has no signature in the store",
                             hint="sign it: BPFDEPOT_SIGNING_KEY=KEY bpfdepot sign "
                                  f"{meta_digest}, or run with --allow-unsigned")
        try:
            envelope = json.loads(store.read_blob(envelope_digest))
        except ValueError:
            raise TrustError(f"{label}: its signature blob is not JSON") from None
        subjects = _subjects(meta, meta_digest)
        subjects["object"] = digest.removeprefix("sha256:")  # the bytes about to load
        from loader.trust.statements import verify_artifact

        verify_artifact(envelope, self.root, subjects=subjects, target=_target(meta),
                        where=label)
