"""bpfdepot.lock: reading it, and what a pin that the store cannot satisfy gets."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from loader.errors import ArtifactNotFound, BlobCorrupt, ManifestError
from loader.artifacts.lock import LOCK_VERSION, Pin, load_pin, read_lock
from loader.artifacts.store import LocalStore

PIN = Pin(program="demo", target="x86_64-" + "b" * 64, release="6.18.44", artifact="sha256:" + "a" * 64,
          meta="sha256:" + "c" * 64)


def test_a_pin_whose_meta_is_not_in_the_store_says_write_the_lock_again(tmp_path: Path) -> None:
    """Like every other lock error (exit 3, 'write the lock again'), not a store failure (9)."""
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ArtifactNotFound) as caught:
        load_pin(store, PIN)
    assert caught.value.exit_code == 3
    assert caught.value.message == (f"lock pins meta {PIN.meta} for 'demo' on 6.18.44, but {store} "
                                    "does not hold it")
    assert "bpfdepot lock BUNDLE" in caught.value.hint


def test_a_pin_whose_meta_is_damaged_is_a_store_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    meta = store.put_blob(b"{}")
    store._blob(meta).write_bytes(b"{!")
    with pytest.raises(BlobCorrupt) as caught:
        load_pin(store, replace(PIN, meta=meta))
    assert caught.value.exit_code == 9


def test_a_lock_that_is_not_a_file_or_too_big_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"the lock is not a regular file \(a folder\)"):
        read_lock(tmp_path)
    big = tmp_path / "bpfdepot.lock"
    big.write_text(json.dumps({"version": LOCK_VERSION, "pins": [], "pad": "x" * (16 << 20)}))
    with pytest.raises(ManifestError, match="over the limit of 16,777,216"):
        read_lock(big)
