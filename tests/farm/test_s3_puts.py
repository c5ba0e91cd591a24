"""The S3 store's small PUTs signed by hand (loader/artifacts/s3put.py), against real radosgw:
they store the right bytes, keep If-None-Match, and anything they cannot do goes to boto3."""

from __future__ import annotations

import uuid

from loader.artifacts.s3put import LeanPuts
from loader.artifacts.s3store import S3Store
from loader.artifacts.store import digest_of
from tests.farm.conftest import _bucket


def _store(rgw, tmp_path) -> S3Store:
    _bucket(rgw.env)
    return S3Store(f"s3://bpfdepot/lean-{uuid.uuid4().hex[:8]}", endpoint=rgw.env["BPFDEPOT_S3_ENDPOINT"],
                   cache_dir=tmp_path / "cache")


def test_lean_puts_store_blobs_and_refs_as_boto3_would(rgw, tmp_path) -> None:
    store = _store(rgw, tmp_path)
    assert isinstance(store._lean, LeanPuts)
    sent: list[tuple[str, bool | None]] = []
    put = store._lean.put

    def counted(bucket, key, body, *, if_none_match):
        done = put(bucket, key, body, if_none_match=if_none_match)
        sent.append((key.rpartition("/")[2], done))
        return done
    store._lean.put = counted
    data = b'{"a meta": "with a key that needs quoting: ~ + = / ?"}'
    digest = store.put_blob(data, new=True)
    assert sent[-1][1] is True  # signed here and accepted, not handed to boto3
    assert store.put_blob(data, new=True) == digest and sent[-1][1] is False  # 412: it exists
    fresh = S3Store(store.url, endpoint=rgw.env["BPFDEPOT_S3_ENDPOINT"], cache_dir=tmp_path / "c2")
    assert fresh.read_blob(digest) == data and digest_of(data) == digest
    store.set_ref("index/prog.x/src_1/x86_64-ab", digest)
    assert sent[-1] == ("x86_64-ab", True)
    other = store.put_blob(b"other bytes")
    store.set_ref("index/prog.x/src_1/x86_64-ab", other)  # refs are replaced
    assert fresh.get_ref("index/prog.x/src_1/x86_64-ab") == other
    assert fresh.read_refs("index/prog.x") == {"index/prog.x/src_1/x86_64-ab": other}


def test_a_put_the_server_refuses_goes_to_boto3(rgw, tmp_path, monkeypatch) -> None:
    store = _store(rgw, tmp_path)
    creds = store._s3._request_signer._credentials.get_frozen_credentials()

    class Wrong:
        access_key, secret_key, token = creds.access_key, "not-the-secret", None

    class Signer:
        def get_frozen_credentials(self):
            return Wrong()
    lean = LeanPuts(type("C", (), {"_request_signer": type("R", (), {"_credentials": Signer()})(),
                                   "meta": store._s3.meta})(), rgw.env["BPFDEPOT_S3_ENDPOINT"])
    assert lean.put(store.bucket, store._key("refs", "x"), b"sha256:" + b"0" * 64,
                    if_none_match=False) is None  # 403 SignatureDoesNotMatch: not done here
    store._lean = lean
    digest = store.put_blob(b"stored by boto3 after the refusal", new=True)
    assert store.read_blob(digest) == b"stored by boto3 after the refusal"


def test_a_proxy_in_the_environment_leaves_every_put_to_boto3(rgw, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert LeanPuts.usable(object(), rgw.env["BPFDEPOT_S3_ENDPOINT"]) is None
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("BPFDEPOT_S3_LEAN", "0")
    assert LeanPuts.usable(object(), rgw.env["BPFDEPOT_S3_ENDPOINT"]) is None
