"""LocalStore on a tmp folder: content-addressed blobs, create-only refs, and their errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from loader.errors import BlobCorrupt, BlobNotFound, StoreError
from loader.artifacts.store import REBUILD_HINT, LocalStore, digest_of

DATA = b"\x7fELF not really an object\n"
DATA_SHA = hashlib.sha256(DATA).hexdigest()
OTHER = b"other bytes"


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_put_then_read_round_trip(store: LocalStore) -> None:
    digest = store.put_blob(DATA)
    assert digest == f"sha256:{DATA_SHA}"
    assert store.read_blob(digest) == DATA
    assert store.blob_path(digest).read_bytes() == DATA


def test_digest_is_sha256_of_the_bytes_and_names_the_file(store: LocalStore) -> None:
    assert digest_of(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert digest_of(DATA) == "sha256:" + DATA_SHA
    digest = store.put_blob(DATA)
    expected = store.root / "blobs" / "sha256" / DATA_SHA[:2] / DATA_SHA[2:]
    assert store.blob_path(digest) == expected
    assert expected.read_bytes() == DATA


def test_put_of_the_same_bytes_twice_writes_once(store: LocalStore) -> None:
    first = store.put_blob(DATA)
    path = store.blob_path(first)
    before = path.stat()
    second = store.put_blob(DATA)
    after = path.stat()
    assert second == first
    # link(2) fails on the existing name: the first file stays, not a replaced copy
    assert (after.st_ino, after.st_mtime_ns, after.st_nlink) == (before.st_ino, before.st_mtime_ns, 1)
    assert [p.name for p in path.parent.iterdir()] == [DATA_SHA[2:]]


def test_ref_is_create_only(store: LocalStore) -> None:
    a, b = store.put_blob(DATA), store.put_blob(OTHER)
    assert store.get_ref("builds/k1") is None
    assert store.put_ref("builds/k1", a) == a
    assert store.put_ref("builds/k1", b) == a  # the first writer wins; the caller learns which
    assert store.get_ref("builds/k1") == a
    assert (store.root / "refs" / "builds" / "k1").read_text() == a
    assert store.put_ref("builds/k2", b) == b


def test_nested_index_ref(store: LocalStore) -> None:
    a = store.put_blob(DATA)
    name = f"index/tcp_connlat/{'1' * 64}/x86_64-{'2' * 64}"
    assert store.put_ref(name, a) == a
    assert store.get_ref(name) == a


def test_altered_blob_is_reported_corrupt(store: LocalStore) -> None:
    digest = store.put_blob(DATA)
    path = store.root / "blobs" / "sha256" / DATA_SHA[:2] / DATA_SHA[2:]
    path.write_bytes(DATA + b"!")
    with pytest.raises(StoreError) as exc:
        store.read_blob(digest)
    err = exc.value
    actual = hashlib.sha256(DATA + b"!").hexdigest()
    assert err.message == (f"blob {digest} in LocalStore({store.root}) is corrupt (its sha256 is "
                           f"sha256:{actual}); nothing was loaded")
    assert err.hint == REBUILD_HINT
    assert err.exit_code == 9
    with pytest.raises(StoreError, match="is corrupt"):
        store.blob_path(digest)  # verified before anyone opens it


def test_missing_blob(store: LocalStore) -> None:
    digest = "sha256:" + "ab" * 32
    with pytest.raises(StoreError) as exc:
        store.read_blob(digest)
    assert exc.value.message == f"blob {digest} is not in LocalStore({store.root})"
    assert exc.value.hint == REBUILD_HINT
    assert isinstance(exc.value, BlobNotFound)


def test_writing_the_right_bytes_again_heals_a_damaged_blob(store: LocalStore) -> None:
    """What the hint promises: a rebuild (which puts the same bytes) repairs the store."""
    digest = store.put_blob(DATA)
    path = store.root / "blobs" / "sha256" / DATA_SHA[:2] / DATA_SHA[2:]
    path.write_bytes(DATA[:-1] + b"?")
    assert not store.has_blob(digest)
    with pytest.raises(BlobCorrupt):
        store.read_blob(digest)
    assert store.put_blob(DATA) == digest
    assert store.has_blob(digest) and store.read_blob(digest) == DATA
    path.unlink()
    assert not store.has_blob(digest)
    store.put_blob(DATA)
    assert store.read_blob(digest) == DATA


@pytest.mark.parametrize("bad", [
    "", "sha256:", "sha256:abc", "sha256:" + "A" * 64, "sha512:" + "a" * 64, "a" * 64,
    "sha256:" + "a" * 63 + "g", "sha256:../../" + "a" * 58, " sha256:" + "a" * 64,
])
def test_bad_digest_strings_are_rejected(store: LocalStore, bad: str) -> None:
    with pytest.raises(StoreError) as exc:
        store.read_blob(bad)
    assert exc.value.message == f"not a sha256 digest: {bad!r}"
    assert exc.value.hint == "digests look like sha256:<64 hex>"
    assert not (store.root / "blobs").exists()


@pytest.mark.parametrize("name", [
    "..", "../x", "builds/../../etc", "builds/..", "/abs", "a//b", "a/", "", "a b", "a\\b",
])
def test_bad_ref_names_are_rejected(store: LocalStore, name: str) -> None:
    digest = store.put_blob(DATA)
    with pytest.raises(StoreError) as exc:
        store.put_ref(name, digest)
    assert exc.value.message == f"bad ref name {name!r}"
    with pytest.raises(StoreError, match="bad ref name"):
        store.get_ref(name)
    assert not (store.root / "refs").exists()


def test_ref_holding_garbage_is_reported(store: LocalStore) -> None:
    path = store.root / "refs" / "builds" / "k"
    path.parent.mkdir(parents=True)
    path.write_text("not a digest\n")
    with pytest.raises(StoreError) as exc:
        store.get_ref("builds/k")
    assert exc.value.message == f"ref builds/k in LocalStore({store.root}) holds 'not a digest', not a digest"
    assert exc.value.hint == f"delete {path}"


def test_put_ref_rejects_a_non_digest(store: LocalStore) -> None:
    with pytest.raises(StoreError, match="not a sha256 digest"):
        store.put_ref("builds/k", "not-a-digest")
    assert store.get_ref("builds/k") is None


def test_trailing_newline_is_not_a_valid_digest_or_ref_name(store: LocalStore) -> None:
    digest = store.put_blob(DATA)
    with pytest.raises(StoreError, match="not a sha256 digest"):
        store.read_blob(digest + "\n")  # today: looked up as a file whose name ends in "\n"
    with pytest.raises(StoreError, match="bad ref name"):
        store.put_ref("builds/k\n", digest)  # today: creates refs/builds/"k\n"


def test_no_temp_files_remain(store: LocalStore) -> None:
    a = store.put_blob(DATA)
    store.put_blob(DATA)  # the losing write cleans up too
    store.put_blob(OTHER)
    store.put_ref("builds/k", a)
    store.put_ref("builds/k", a)
    assert list((store.root / "tmp").iterdir()) == []
