"""The cffi declarations come from loader/native's headers, and those agree with libbpf's."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from loader import _libbpf_build

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "loader" / "native"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_restated_libbpf_prototypes_match_libbpf_headers(tmp_path: Path) -> None:
    """A prototype in libbpf_api.h that differs from libbpf's is a 'conflicting types' error."""
    unit = tmp_path / "check.c"
    unit.write_text("#include <bpf/libbpf.h>\n#include <bpf/bpf.h>\n" +
                    "".join(f'#include "{name}"\n' for name in _libbpf_build.HEADERS))
    done = subprocess.run(["gcc", "-fsyntax-only", "-Wall", "-Werror", "-I", str(NATIVE), str(unit)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_every_native_call_from_python_is_declared_in_a_header() -> None:
    """What loader/ calls through ``lib.`` is in the generated cdef (none written by hand)."""
    used = set()
    for path in (ROOT / "loader").rglob("*.py"):
        used |= set(re.findall(r"\blib\.(\w+)", path.read_text()))
    declared = set(re.findall(r"\b(\w+)\s*\(", _libbpf_build.CDEF)) | set(
        re.findall(r"#define (\w+) \.\.\.", _libbpf_build.CDEF)) | set(
        re.findall(r"\b([A-Z][A-Z0-9_]+)\b", _libbpf_build.CDEF))
    assert used and not used - declared, sorted(used - declared)


def test_headers_are_the_only_source_of_the_cdef() -> None:
    assert "libbpf_api.h" in _libbpf_build.HEADERS
    assert {f"{p.name}" for p in NATIVE.glob("bpfdepot_*.h")} <= set(_libbpf_build.HEADERS)
    assert "bpfdepot_results_feed" in _libbpf_build.CDEF and "#include" not in _libbpf_build.CDEF
