"""S3 reads that time out while the body streams are retried like any transient failure (a
fake client: the behaviour against a real radosgw is in tests/farm)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.artifacts import s3store
from loader.artifacts.s3store import S3Store
from loader.artifacts.store import digest_of
from loader.errors import StoreError


class Body:
    def __init__(self, data: bytes, fail: bool) -> None:
        self.data, self.fail = data, fail

    def read(self) -> bytes:
        if self.fail:
            from botocore.exceptions import ReadTimeoutError

            raise ReadTimeoutError(endpoint_url="http://127.0.0.1:1/bucket/blob")
        return self.data


class Client:
    def __init__(self, data: bytes, timeouts: int) -> None:
        self.data, self.timeouts, self.calls = data, timeouts, 0

    def get_object(self, **kwargs: object) -> dict:
        self.calls += 1
        return {"Body": Body(self.data, fail=self.calls <= self.timeouts)}


def store(tmp_path: Path, client: Client, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    monkeypatch.setattr(s3store, "FIRST_DELAY_S", 0.001)
    made = S3Store("s3://bucket/prefix", endpoint="http://127.0.0.1:1", cache_dir=tmp_path, attempts=3)
    made._s3 = client
    return made


def test_a_body_read_that_times_out_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"\x7fELF bytes"
    client = Client(data, timeouts=2)
    assert store(tmp_path, client, monkeypatch).read_blob(digest_of(data)) == data
    assert client.calls == 3


def test_reads_that_keep_timing_out_are_a_store_error_naming_the_blob(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"\x7fELF bytes"
    client = Client(data, timeouts=10)
    with pytest.raises(StoreError) as caught:
        store(tmp_path, client, monkeypatch).read_blob(digest_of(data))
    assert f"download of {digest_of(data)} failed after 3 attempts: Read timeout" in caught.value.message
    assert caught.value.hint == "is the object store reachable? check BPFDEPOT_S3_ENDPOINT"
    assert client.calls == 3
