"""Signatures with an offline trust root: keys, root rotation, artifact statements, locks."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from loader.trust.keys import PrivateKey, TrustError, open_envelope, sign_envelope
from loader.trust.root import TrustStore, make_root, verify_root
from loader.trust.statements import (artifact_statement, sign_lock, sign_statement,
                                     verify_artifact, verify_lock)

NOW = datetime(2026, 11, 30, tzinfo=timezone.utc)
TARGET = {"release": "6.18.44", "btf_sha256": "b" * 64, "arch": "x86_64"}


@pytest.fixture
def keys() -> dict[str, PrivateKey]:
    return {name: PrivateKey.generate() for name in ("root", "root2", "art", "lock", "evil")}


def _root(keys, version=1, root="root", signers=("root",), expires=NOW + timedelta(days=30)):
    return make_root(version=version, expires=expires,
                     role_keys={"root": [keys[root].public], "artifacts": [keys["art"].public],
                                "locks": [keys["lock"].public]},
                     signers=[keys[s] for s in signers])


def test_keys_are_written_once_and_read_back(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    key.save(tmp_path / "k.pem")
    assert oct((tmp_path / "k.pem").stat().st_mode & 0o777) == "0o600"
    assert PrivateKey.load(tmp_path / "k.pem").keyid == key.keyid
    with pytest.raises(TrustError, match="never overwritten"):
        PrivateKey.generate().save(tmp_path / "k.pem")
    (tmp_path / "bad.pem").write_text("nope")
    with pytest.raises(TrustError, match="not an unencrypted PKCS#8"):
        PrivateKey.load(tmp_path / "bad.pem")


def test_envelopes_need_the_role_keys_and_the_exact_payload(keys) -> None:
    env = sign_envelope("t", b"hello", [keys["art"]])
    role = {keys["art"].keyid: keys["art"].public}
    assert open_envelope(env, "t", role, 1, "artifacts", "x") == b"hello"
    flipped = copy.deepcopy(env)
    flipped["payload"] = sign_envelope("t", b"hellp", [keys["evil"]])["payload"]
    with pytest.raises(TrustError, match="does not verify .the content changed after signing"):
        open_envelope(flipped, "t", role, 1, "artifacts", "x")
    with pytest.raises(TrustError, match=f"key {keys['evil'].keyid[:16]} is not one of the trust root.s artifacts keys"):
        open_envelope(sign_envelope("t", b"hello", [keys["evil"]]), "t", role, 1, "artifacts", "x")
    with pytest.raises(TrustError, match="payloadType is 'u'"):
        open_envelope(sign_envelope("u", b"hello", [keys["art"]]), "t", role, 1, "artifacts", "x")
    two = {**role, keys["evil"].keyid: keys["evil"].public}
    doubled = copy.deepcopy(env)
    doubled["signatures"] *= 2  # the same key twice is one signature
    with pytest.raises(TrustError, match="1 valid artifacts signature.s., 2 needed"):
        open_envelope(doubled, "t", two, 2, "artifacts", "x")


def test_roots_verify_rotate_and_expire(keys, tmp_path: Path) -> None:
    v1 = _root(keys)
    root = verify_root(v1, "v1")
    assert root.version == 1 and root.role("artifacts")[1] == 1
    tampered = copy.deepcopy(v1)
    tampered["signed"]["roles"]["artifacts"]["keyids"] = [keys["root"].keyid]
    with pytest.raises(TrustError, match="valid root signature"):
        verify_root(tampered, "v1")
    # v2 moves the root role to a new key: signed by the old and the new root keys
    v2 = _root(keys, version=2, root="root2", signers=("root", "root2"))
    assert verify_root(v2, "v2", previous=root).version == 2
    only_new = _root(keys, version=2, root="root2", signers=("root2",))
    with pytest.raises(TrustError, match="root .previous version."):
        verify_root(only_new, "v2", previous=root)
    with pytest.raises(TrustError, match="version 3 does not follow the trusted root's version 1"):
        verify_root(_root(keys, version=3, signers=("root",)), "v3", previous=root)
    expired = verify_root(_root(keys, expires=NOW - timedelta(seconds=1)), "old")
    with pytest.raises(TrustError, match="expired at .* .field 'expires'."):
        expired.check_current(NOW)
    store = TrustStore(tmp_path / "trust")
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    (tmp_path / "v2.json").write_text(json.dumps(v2))
    (tmp_path / "bad2.json").write_text(json.dumps(only_new))
    store.trust(tmp_path / "v1.json")
    with pytest.raises(TrustError, match="already trusts a root"):
        store.trust(tmp_path / "v2.json")
    with pytest.raises(TrustError):
        store.update([tmp_path / "bad2.json"])
    assert store.root(NOW).version == 1  # a refused rotation changes nothing
    assert store.update([tmp_path / "v2.json"]).version == 2
    assert store.root(NOW).role("root")[0].keys() == {keys["root2"].keyid}


@pytest.mark.parametrize("field,value,message", [
    ("version", 0, "field 'version' must be an integer"),
    ("expires", "soon", "field 'expires' is not an ISO 8601 time"),
    ("_type", "x", "field '_type' is 'x'"),
])
def test_malformed_roots_name_the_field(keys, field, value, message) -> None:
    doc = _root(keys)
    doc["signed"][field] = value
    with pytest.raises(TrustError, match=message):
        verify_root(doc, "r")


def _statement(subjects):
    return artifact_statement(subjects=subjects, program="p", kind="ebpf_object",
                              source="s" * 64, target=TARGET, toolchain={"clang": "14"},
                              builder="farm-1", built_at="2026-11-30T00:00:00Z")


def test_artifact_statements_bind_files_and_kernel(keys) -> None:
    root = verify_root(_root(keys), "r")
    files = {"object": "a" * 64, "meta.json": "c" * 64}
    env = sign_statement(_statement(files), [keys["art"]])
    assert verify_artifact(env, root, subjects=files, target=TARGET, where="p")["predicate"][
        "builder"] == "farm-1"
    with pytest.raises(TrustError, match="'object' is sha256:dddd.*field 'subject'"):
        verify_artifact(env, root, subjects={**files, "object": "d" * 64}, target=TARGET, where="p")
    with pytest.raises(TrustError, match="does not name 'script'"):
        verify_artifact(env, root, subjects={"script": "a" * 64}, target=TARGET, where="p")
    with pytest.raises(TrustError, match="predicate.target.release"):
        verify_artifact(env, root, subjects=files, target={**TARGET, "release": "6.1"}, where="p")
    with pytest.raises(TrustError, match="not one of the trust root.s artifacts keys"):
        verify_artifact(sign_statement(_statement(files), [keys["lock"]]), root, subjects=files,
                        target=TARGET, where="p")


def test_locks_are_bound_and_never_roll_back(keys, tmp_path: Path) -> None:
    root = verify_root(_root(keys), "r")
    store = TrustStore(tmp_path / "trust")
    lock = b"pins: {}\n"
    assert verify_lock(sign_lock("b", 2, lock, [keys["lock"]]), root, store, name="b", lock=lock,
                       where="l") == 2
    with pytest.raises(TrustError, match="version 1, older than version 2 .* a rollback"):
        verify_lock(sign_lock("b", 1, lock, [keys["lock"]]), root, store, name="b", lock=lock,
                    where="l")
    with pytest.raises(TrustError, match="changed after it was signed"):
        verify_lock(sign_lock("b", 3, lock, [keys["lock"]]), root, store, name="b",
                    lock=lock + b"#", where="l")
    with pytest.raises(TrustError, match="signed for bundle 'b', not 'c'"):
        verify_lock(sign_lock("b", 3, lock, [keys["lock"]]), root, store, name="c", lock=lock,
                    where="l")
    with pytest.raises(TrustError, match="not one of the trust root.s locks keys"):
        verify_lock(sign_lock("b", 3, lock, [keys["art"]]), root, store, name="b", lock=lock,
                    where="l")
