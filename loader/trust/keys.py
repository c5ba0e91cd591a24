"""Ed25519 keys, canonical JSON and DSSE envelopes: the primitives of bpfdepot's signatures.

    keyid        sha256 of the raw 32-byte public key, hex: names a key in roots and signatures
    canonical    the bytes a signature covers: JSON with sorted keys, no spaces, UTF-8
    DSSE         an envelope {payloadType, payload (base64), signatures [{keyid, sig}]}; each
                 signature covers PAE(payloadType, payload) (the DSSE v1 pre-authentication
                 encoding), so a payload cannot be passed off under another type

Private keys are PKCS#8 PEM files, written 0600 and never overwritten; public keys travel inside
trust roots as ``{"keytype": "ed25519", "public": HEX}``. Nothing here touches the network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loader.errors import TrustError

# cryptography (~15 ms to import) is imported where a key is made or used: every build imports
# this module (through the signing of artifacts) but only a store with a signing key signs.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAX_DOCUMENT = 4 << 20  # a root, statement or lock signature read from disk or a store


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True, slots=True)
class PublicKey:
    keyid: str
    key: Ed25519PublicKey

    @classmethod
    def from_json(cls, keyid: str, doc: Any, where: str) -> PublicKey:
        if not isinstance(doc, dict) or doc.get("keytype") != "ed25519":
            raise TrustError(f"{where}: key {keyid[:16]} is not {{keytype: ed25519, public: HEX}}")
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            raw = bytes.fromhex(doc["public"])
            key = Ed25519PublicKey.from_public_bytes(raw)
        except (KeyError, TypeError, ValueError):
            raise TrustError(f"{where}: key {keyid[:16]} has no valid 32-byte ed25519 public "
                             "key") from None
        if hashlib.sha256(raw).hexdigest() != keyid:
            raise TrustError(f"{where}: key id {keyid[:16]} is not the sha256 of its public key",
                             hint="key ids are computed, not chosen: regenerate the root")
        return cls(keyid, key)

    def to_json(self) -> dict[str, str]:
        from cryptography.hazmat.primitives import serialization

        raw = self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"keytype": "ed25519", "public": raw.hex()}

    def verifies(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self.key.verify(signature, data)
            return True
        except InvalidSignature:
            return False


@dataclass(frozen=True, slots=True)
class PrivateKey:
    key: Ed25519PrivateKey

    @property
    def public(self) -> PublicKey:
        from cryptography.hazmat.primitives import serialization

        pub = self.key.public_key()
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return PublicKey(hashlib.sha256(raw).hexdigest(), pub)

    @property
    def keyid(self) -> str:
        return self.public.keyid

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    @classmethod
    def generate(cls) -> PrivateKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    def save(self, path: Path) -> None:
        """Write the PEM with mode 0600; an existing file is never replaced."""
        from cryptography.hazmat.primitives import serialization

        pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise TrustError(f"{path} exists: a key is never overwritten",
                             hint="choose another file, or remove the old key yourself") from None
        with os.fdopen(fd, "wb") as out:
            out.write(pem)

    @classmethod
    def load(cls, path: Path) -> PrivateKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TrustError(f"cannot read key {path}: {exc.strerror}") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise TrustError(f"{path} is not an unencrypted PKCS#8 PEM private key",
                             hint="make one with: bpfdepot keys generate FILE") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise TrustError(f"{path} is not an ed25519 key")
        return cls(key)


def sign_envelope(payload_type: str, payload: bytes, keys: list[PrivateKey]) -> dict[str, Any]:
    """A DSSE envelope of ``payload`` signed by every key in ``keys``."""
    return {"payloadType": payload_type, "payload": base64.b64encode(payload).decode(),
            "signatures": signatures(pae(payload_type, payload), keys)}


def open_envelope(envelope: Any, payload_type: str, keys: dict[str, PublicKey], threshold: int,
                  role: str, where: str) -> bytes:
    """The payload of a DSSE envelope once ``threshold`` distinct keys of ``role`` (``keys``)
    have signed it; TrustError naming the keys that did not verify otherwise."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("signatures"), list):
        raise TrustError(f"{where} is not a signed envelope (payloadType, payload, signatures)",
                         hint="it was not signed by bpfdepot sign, or is damaged")
    if envelope.get("payloadType") != payload_type:
        raise TrustError(f"{where}: payloadType is {envelope.get('payloadType')!r}, not "
                         f"{payload_type!r}")
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise TrustError(f"{where}: payload is not base64") from None
    check_signatures(pae(payload_type, payload), envelope["signatures"], keys, threshold, role,
                     where)
    return payload


def check_signatures(data: bytes, signatures: list, keys: dict[str, PublicKey], threshold: int,
                     role: str, where: str) -> None:
    """At least ``threshold`` distinct keys of ``role`` signed ``data``; TrustError naming the
    keys that did not verify otherwise."""
    good, bad, unknown = set(), [], []
    for entry in signatures:
        keyid = entry.get("keyid") if isinstance(entry, dict) else None
        key = keys.get(keyid) if isinstance(keyid, str) else None
        if key is None:
            unknown.append(str(keyid)[:16])
            continue
        try:
            sig = base64.b64decode(entry.get("sig", ""), validate=True)
        except (TypeError, ValueError):
            sig = b""
        if key.verifies(sig, data):
            good.add(keyid)
        else:
            bad.append(keyid[:16])
    if len(good) < threshold:
        why = []
        if bad:
            why.append(f"signature by key {', '.join(bad)} does not verify (the content changed "
                       "after signing)")
        if unknown:
            why.append(f"key {', '.join(unknown)} is not one of the trust root's {role} keys")
        if not signatures:
            why.append("it has no signatures")
        raise TrustError(f"{where}: {len(good)} valid {role} signature(s), {threshold} needed: "
                         + "; ".join(why or ["not enough distinct keys signed"]),
                         hint=f"sign it with the {role} key(s) of this node's trust root "
                              "(bpfdepot keys show)")


def signatures(data: bytes, keys: list[PrivateKey]) -> list[dict[str, str]]:
    return [{"keyid": k.keyid, "sig": base64.b64encode(k.sign(data)).decode()} for k in keys]


def read_json(path: Path, what: str) -> Any:
    """A bounded JSON document from disk."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_DOCUMENT + 1)
    except OSError as exc:
        raise TrustError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_DOCUMENT:
        raise TrustError(f"{what} {path} is over {MAX_DOCUMENT} bytes")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrustError(f"{what} {path} is not JSON: {exc}") from None
