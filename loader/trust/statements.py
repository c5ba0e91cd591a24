"""What the farm signs and the node checks: one in-toto statement per artifact, one signed
version per lock.

An artifact statement (DSSE payload type ``application/vnd.in-toto+json``)::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "object", "digest": {"sha256": HEX}},
                 {"name": "meta.json", "digest": {"sha256": HEX}}],
     "predicateType": "https://bpfdepot.dev/build/v1",
     "predicate": {"source": {"sha256": HEX}, "program": NAME, "kind": "ebpf_object",
                   "target": {"release": R, "btf_sha256": HEX, "arch": A},
                   "toolchain": {...}, "builder": HOST, "built_at": ISO}}

signed by a threshold of the root's ``artifacts`` keys. A lock signature (payload type
``application/vnd.bpfdepot.lock+json``) covers ``{"_type": "bpfdepot-lock", "name": BUNDLE,
"version": N, "lock_sha256": HEX}`` under the ``locks`` role; N only grows.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from loader.trust.keys import PrivateKey, TrustError, open_envelope, sign_envelope
from loader.trust.root import TrustRoot, TrustStore

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://bpfdepot.dev/build/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
LOCK_PAYLOAD_TYPE = "application/vnd.bpfdepot.lock+json"
LOCK_TYPE = "bpfdepot-lock"
TARGET_FIELDS = ("release", "btf_sha256", "arch")


def artifact_statement(*, subjects: dict[str, str], program: str, kind: str, source: str,
                       target: dict[str, str], toolchain: dict[str, str], builder: str,
                       built_at: str) -> dict[str, Any]:
    """``subjects``: name → sha256 hex of each file the artifact is made of."""
    return {"_type": STATEMENT_TYPE,
            "subject": [{"name": n, "digest": {"sha256": d}} for n, d in sorted(subjects.items())],
            "predicateType": PREDICATE_TYPE,
            "predicate": {"program": program, "kind": kind, "source": {"sha256": source},
                          "target": {k: target[k] for k in TARGET_FIELDS},
                          "toolchain": dict(toolchain), "builder": builder,
                          "built_at": built_at}}


def sign_statement(statement: dict[str, Any], keys: list[PrivateKey]) -> dict[str, Any]:
    return sign_envelope(PAYLOAD_TYPE, json.dumps(statement, sort_keys=True).encode(), keys)


def verify_artifact(envelope: Any, root: TrustRoot, *, subjects: dict[str, str],
                    target: dict[str, str] | None, where: str) -> dict[str, Any]:
    """The statement, once the artifacts role signed it, every file in ``subjects`` (name →
    the sha256 of the bytes about to be used) is named with that digest, and its target is
    ``target`` (this node's kernel; None for a processor library, built per arch only)."""
    keys, threshold = root.role("artifacts")
    payload = open_envelope(envelope, PAYLOAD_TYPE, keys, threshold, "artifacts", where)
    try:
        statement = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TrustError(f"{where}: the signed statement is not JSON") from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE \
            or statement.get("predicateType") != PREDICATE_TYPE:
        raise TrustError(f"{where}: not a bpfdepot build statement (fields '_type', "
                         "'predicateType')")
    signed = {}
    for entry in statement.get("subject") or []:
        if isinstance(entry, dict) and isinstance(entry.get("digest"), dict):
            signed[entry.get("name")] = entry["digest"].get("sha256")
    for name, digest in subjects.items():
        if name not in signed:
            raise TrustError(f"{where}: the signed statement does not name '{name}' (field "
                             "'subject')", hint="sign the artifact again with bpfdepot sign")
        if signed[name] != digest:
            raise TrustError(f"{where}: '{name}' is sha256:{digest[:16]}… but the signature is "
                             f"for sha256:{str(signed[name])[:16]}… (field 'subject')",
                             hint="the file changed after it was signed: rebuild and sign it "
                                  "again, or find who changed it")
    predicate = statement.get("predicate") if isinstance(statement.get("predicate"), dict) else {}
    if target is not None:
        have = predicate.get("target") if isinstance(predicate.get("target"), dict) else {}
        for field in TARGET_FIELDS:
            if have.get(field) != target[field]:
                raise TrustError(f"{where}: signed for {field} {have.get(field)!r}, this node's "
                                 f"is {target[field]!r} (field 'predicate.target.{field}')",
                                 hint="use the artifact built for this kernel")
    return statement


def lock_payload(name: str, version: int, lock: bytes) -> dict[str, Any]:
    return {"_type": LOCK_TYPE, "name": name, "version": version,
            "lock_sha256": hashlib.sha256(lock).hexdigest()}


def sign_lock(name: str, version: int, lock: bytes, keys: list[PrivateKey]) -> dict[str, Any]:
    return sign_envelope(LOCK_PAYLOAD_TYPE,
                         json.dumps(lock_payload(name, version, lock), sort_keys=True).encode(),
                         keys)


def verify_lock(envelope: Any, root: TrustRoot, store: TrustStore, *, name: str, lock: bytes,
                where: str, record: bool = True) -> int:
    """The lock's signed version, once the locks role signed exactly these bytes for bundle
    ``name`` and the version is not older than one this node used (then remembered)."""
    keys, threshold = root.role("locks")
    payload = open_envelope(envelope, LOCK_PAYLOAD_TYPE, keys, threshold, "locks", where)
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TrustError(f"{where}: the signed lock statement is not JSON") from None
    if not isinstance(doc, dict) or doc.get("_type") != LOCK_TYPE:
        raise TrustError(f"{where}: not a bpfdepot lock signature (field '_type')")
    if doc.get("name") != name:
        raise TrustError(f"{where}: signed for bundle {doc.get('name')!r}, not {name!r} "
                         "(field 'name')")
    if doc.get("lock_sha256") != hashlib.sha256(lock).hexdigest():
        raise TrustError(f"{where}: the lock changed after it was signed (field 'lock_sha256')",
                         hint="sign the new lock: bpfdepot sign --lock LOCK")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise TrustError(f"{where}: field 'version' must be an integer ≥ 1")
    store.check_lock_version(name, version, record=record)
    return version
