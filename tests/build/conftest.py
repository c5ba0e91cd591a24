"""Build tests: real clang and bpftool, no root."""

from __future__ import annotations

import shutil

import pytest

if not (shutil.which("clang") and shutil.which("bpftool")):
    pytest.skip("build tests need clang and bpftool (scripts/setup installs them)", allow_module_level=True)
