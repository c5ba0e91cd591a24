"""Opt-in tests that add real Debian kernel packages from the configured apt sources.

They download about 400 MB the first time (kept in a cache folder that is never emptied), so
they run only when asked:

    BPFDEPOT_TEST_PACKAGES=1 python3 -m pytest -q tests/kernels

``BPFDEPOT_TEST_DEB_CACHE`` moves the .deb cache (default /var/cache/bpfdepot-test/kernel-debs).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TOOLS = ("apt-get", "apt-cache", "dpkg-deb", "lz4", "zstd", "xz", "objcopy")


def _why_skip() -> str | None:
    if os.environ.get("BPFDEPOT_TEST_PACKAGES") != "1":
        return "downloads real kernel packages (~400 MB once): set BPFDEPOT_TEST_PACKAGES=1"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"needs the {', '.join(missing)} command(s) (scripts/setup --test installs them)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this folder's tests (only these: the hook sees every collected item) unless asked."""
    reason = _why_skip()
    if reason is None:
        return
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def deb_cache() -> Path:
    """Kept between runs on purpose: each package is downloaded once."""
    folder = Path(os.environ.get("BPFDEPOT_TEST_DEB_CACHE") or "/var/cache/bpfdepot-test/kernel-debs")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
