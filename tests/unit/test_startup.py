"""The everyday command line's start-up: what `bpfdepot build` imports, and the CLI's helpers.

A cache-hit `bpfdepot build` should take ≤ 100 ms for the whole process, of which Python itself
takes ~40: heavy packages (pyelftools, cryptography, jinja2, cffi, Celery, boto3, rich) are
imported only on the paths that use them. These tests run the imports in a fresh interpreter,
so a module-level import that slips back in fails here, named.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builder.buildcli import Background
from builder.cli import parser

ROOT = Path(__file__).resolve().parents[2]

# Not needed to read a manifest, find the toolchain and kernel, or look a build key up.
HEAVY = ("elftools", "cryptography", "jinja2", "rich", "celery", "kombu", "boto3", "botocore",
         "redis", "cffi", "_cffi_backend", "loader._libbpf", "loader.libbpf.core",
         "loader.decoders.btf", "loader.flamegraph", "builder.flamecli", "builder.processors",
         "builder.bpftrace", "builder.kernels", "builder.farmcli", "loader.trust.keys",
         "loader.trust.root", "xml.sax", "urllib.request", "http.client", "socket")

# What `bpfdepot build BUNDLE` runs up to the build key lookup, without compiling.
BUILD_PATH = """
import json, sys
from builder.cli import parser
args = parser("build").parse_args(["build", sys.argv[1]])
import builder.compile, builder.toolchain, loader.kernel.probe
from loader.model.manifest import load_bundle
from loader.programs import program_kinds
manifest = load_bundle(args.bundle)
assert manifest.kernel_programs and program_kinds()
print(json.dumps(sorted(sys.modules)))
"""


def _imported(code: str, *args: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("bundle", ["bench/flood", "bpf/tcp_connlat"])
def test_the_build_path_imports_no_heavy_package(bundle: str) -> None:
    modules = _imported(BUILD_PATH, bundle)
    assert "loader.model.manifest" in modules and "builder.compile" in modules
    assert _heavy(modules) == [], "imported on every `bpfdepot build`; import them where used"


def test_the_lazy_imports_still_load_where_used() -> None:
    """Each module made lazy is imported by the function that needs it (not left unimported)."""
    code = """
import json, sys
from loader.kernel.elf import read_object
from loader.errors import BuildError
try:
    read_object(b"not an ELF", "x")
except BuildError as exc:
    assert "not a valid BPF object" in exc.message, exc.message
from loader.trust.keys import PrivateKey
key = PrivateKey.generate()
assert key.public.verifies(key.sign(b"m"), b"m") and not key.public.verifies(key.sign(b"m"), b"n")
from builder.processors import abi_header
assert "#define" in abi_header()
from loader.flamegraph.svg import render_svg
assert "t&lt;" in render_svg([], title="t<")
print(json.dumps(sorted(sys.modules)))
"""
    modules = _imported(code)
    assert {"elftools.elf.elffile", "cryptography", "jinja2", "xml.sax.saxutils"} <= modules


def test_the_run_command_keeps_its_flame_graph_flags() -> None:
    args = parser("run").parse_args(["run", "bpf/cpu_profile", "--flamegraph", "out.svg"])
    assert args.flamegraph == "out.svg"
    with pytest.raises(SystemExit):  # `build` has no such flag
        parser("build").parse_args(["build", "b", "--flamegraph", "out.svg"])


def test_background_returns_the_value_and_raises_the_error_in_the_caller() -> None:
    assert Background(lambda a, b: a + b, 2, 3).result() == 5
    job = Background(int, "not a number")
    job.join()
    with pytest.raises(ValueError, match="not a number"):
        job.result()
