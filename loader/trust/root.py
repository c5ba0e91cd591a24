"""The node's offline trust root: which keys may sign what, until when, and how it changes.

A root file is ``{"signed": {...}, "signatures": [{keyid, sig}]}`` with, in ``signed``::

    {"_type": "bpfdepot-root", "version": 1, "expires": "2027-11-30T00:00:00Z",
     "keys": {KEYID: {"keytype": "ed25519", "public": HEX}, ...},
     "roles": {"root": {"keyids": [...], "threshold": 1},
               "artifacts": {"keyids": [...], "threshold": 1},
               "locks": {"keyids": [...], "threshold": 1}}}

The signatures cover the canonical JSON of ``signed``. A root is valid when a threshold of its
own root keys signed it; a *successor* (rotation) must also carry a threshold of the previous
root's root keys and be exactly one version newer — so a node holding v1 accepts v2 only through
the chain, and a stolen artifacts key cannot make a root. The node keeps its root in
``<home>/trust/root.json`` (``TrustStore``) with the highest lock version it has seen per lock,
so an older lock (a rollback) is refused. Nothing is ever fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loader.trust.keys import (PrivateKey, PublicKey, TrustError, canonical, check_signatures,
                               read_json, signatures)

ROLES = ("root", "artifacts", "locks")
ROOT_TYPE = "bpfdepot-root"


@dataclass(frozen=True, slots=True)
class Role:
    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True, slots=True)
class TrustRoot:
    version: int
    expires: datetime
    keys: dict[str, PublicKey]
    roles: dict[str, Role]
    document: dict[str, Any]  # the whole signed file, as written

    def role(self, name: str) -> tuple[dict[str, PublicKey], int]:
        """The keys and threshold of role ``name``."""
        role = self.roles[name]
        return {k: self.keys[k] for k in role.keyids}, role.threshold

    def check_current(self, now: datetime | None = None) -> None:
        now = now or datetime.now(timezone.utc)
        if now >= self.expires:
            raise TrustError(f"trust root version {self.version} expired at "
                             f"{self.expires.isoformat()} (field 'expires')",
                             hint="install its successor: bpfdepot keys update NEW-ROOT.json")


def _fail(where: str, field: str, what: str) -> TrustError:
    return TrustError(f"{where}: field '{field}' {what}",
                      hint="make roots with bpfdepot keys root-init / root-rotate")


def parse_root(doc: Any, where: str) -> TrustRoot:
    """The structure of a root file (signatures are checked by ``verify_root``)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("signed"), dict) \
            or not isinstance(doc.get("signatures"), list):
        raise TrustError(f"{where} is not a trust root ({{signed: ..., signatures: [...]}})")
    signed = doc["signed"]
    if signed.get("_type") != ROOT_TYPE:
        raise _fail(where, "_type", f"is {signed.get('_type')!r}, not {ROOT_TYPE!r}")
    version = signed.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(where, "version", "must be an integer ≥ 1")
    try:
        expires = datetime.fromisoformat(str(signed.get("expires")).replace("Z", "+00:00"))
    except ValueError:
        raise _fail(where, "expires", "is not an ISO 8601 time") from None
    if expires.tzinfo is None:
        raise _fail(where, "expires", "has no time zone (end it with Z)")
    keys_doc = signed.get("keys")
    if not isinstance(keys_doc, dict) or not keys_doc:
        raise _fail(where, "keys", "must map key ids to public keys")
    keys = {kid: PublicKey.from_json(kid, k, where) for kid, k in keys_doc.items()}
    roles_doc = signed.get("roles")
    if not isinstance(roles_doc, dict):
        raise _fail(where, "roles", f"must map {', '.join(ROLES)} to {{keyids, threshold}}")
    roles = {}
    for name in ROLES:
        role = roles_doc.get(name)
        if not isinstance(role, dict) or not isinstance(role.get("keyids"), list):
            raise _fail(where, f"roles.{name}", "is missing or has no keyids")
        keyids = tuple(role["keyids"])
        threshold = role.get("threshold")
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1 \
                or threshold > len(set(keyids)):
            raise _fail(where, f"roles.{name}.threshold", f"must be 1..{len(set(keyids))}")
        for kid in keyids:
            if kid not in keys:
                raise _fail(where, f"roles.{name}.keyids", f"names key {str(kid)[:16]} that "
                            "is not in 'keys'")
        roles[name] = Role(keyids, threshold)
    return TrustRoot(version, expires, keys, roles, doc)


def verify_root(doc: Any, where: str, previous: TrustRoot | None = None) -> TrustRoot:
    """A root signed by a threshold of its own root keys and, when it succeeds ``previous``, one
    version newer and signed by a threshold of the previous root keys too."""
    root = parse_root(doc, where)
    data = canonical(doc["signed"])
    if previous is not None:
        if root.version != previous.version + 1:
            raise TrustError(f"{where}: version {root.version} does not follow the trusted root's "
                             f"version {previous.version} (field 'version')",
                             hint=f"install each root from {previous.version + 1} up in order: "
                                  "bpfdepot keys update ROOT-v2.json ROOT-v3.json ...")
        keys, threshold = previous.role("root")
        check_signatures(data, doc["signatures"], keys, threshold, "root (previous version)",
                         where)
    keys, threshold = root.role("root")
    check_signatures(data, doc["signatures"], keys, threshold, "root", where)
    return root


def make_root(*, version: int, expires: datetime, role_keys: dict[str, list[PublicKey]],
              thresholds: dict[str, int] | None = None,
              signers: list[PrivateKey]) -> dict[str, Any]:
    """A signed root document; ``signers`` are the new root keys (and, for a rotation, the
    previous root's)."""
    keys = {k.keyid: k.to_json() for ks in role_keys.values() for k in ks}
    signed = {"_type": ROOT_TYPE, "version": version,
              "expires": expires.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "keys": keys,
              "roles": {name: {"keyids": [k.keyid for k in role_keys[name]],
                               "threshold": (thresholds or {}).get(name, 1)} for name in ROLES}}
    return {"signed": signed, "signatures": signatures(canonical(signed), signers)}


class TrustStore:
    """``<home>/trust``: the node's current root and the highest lock version seen per lock."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.root_path = folder / "root.json"
        self.locks_path = folder / "lock-versions.json"

    def has_root(self) -> bool:
        return self.root_path.exists()

    def root(self, now: datetime | None = None) -> TrustRoot:
        """The trusted root, checked again (signatures, expiry) at every use."""
        if not self.has_root():
            raise TrustError(f"this node has no trust root ({self.root_path})",
                             hint="install one: bpfdepot keys trust ROOT.json (or load with "
                                  "--allow-unsigned, which is logged)")
        root = verify_root(read_json(self.root_path, "trust root"), str(self.root_path))
        root.check_current(now)
        return root

    def trust(self, path: Path) -> TrustRoot:
        """Install the first root (an operator's explicit act: trust on first use)."""
        if self.has_root():
            raise TrustError(f"this node already trusts a root ({self.root_path})",
                             hint="a new root is installed through its chain: bpfdepot keys "
                                  "update NEW.json")
        root = verify_root(read_json(path, "trust root"), str(path))
        root.check_current()
        self._write(self.root_path, root.document)
        return root

    def update(self, paths: list[Path]) -> TrustRoot:
        """Rotate through each successive root; nothing is written unless all of them hold."""
        current = verify_root(read_json(self.root_path, "trust root"), str(self.root_path)) \
            if self.has_root() else None
        if current is None:
            raise TrustError("this node has no trust root to update",
                             hint="install the first one: bpfdepot keys trust ROOT.json")
        for path in paths:
            current = verify_root(read_json(path, "trust root"), str(path), previous=current)
        current.check_current()
        self._write(self.root_path, current.document)
        return current

    def check_lock_version(self, name: str, version: int, *, record: bool) -> None:
        """Refuse a lock older than one this node has seen (a rollback); remember newer ones."""
        seen = self._lock_versions()
        highest = seen.get(name, 0)
        if version < highest:
            raise TrustError(f"lock of '{name}' is version {version}, older than version "
                             f"{highest} this node has already used (field 'version'): a rollback",
                             hint="use the current lock; an older one is refused on purpose")
        if record and version > highest:
            seen[name] = version
            self._write(self.locks_path, seen)

    def _lock_versions(self) -> dict[str, int]:
        if not self.locks_path.exists():
            return {}
        doc = read_json(self.locks_path, "lock versions")
        return {str(k): int(v) for k, v in doc.items()} if isinstance(doc, dict) else {}

    def _write(self, path: Path, doc: Any) -> None:
        """Whole or not at all (loader/artifacts/lock.py write_json), in a 0700 folder."""
        from loader.artifacts.lock import write_json

        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json(path, doc)
