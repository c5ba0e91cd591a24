"""`bpfdepot build` as a user runs it: a fresh store, then the same bundle again.

The CLI finds the toolchain's version and this kernel's features in threads while it imports
the compiler side (builder/buildcli.py); the object and meta must be the ones a second, cached run
finds, and the cached run must import none of the packages only a compile (or a run) needs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_startup import HEAVY

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bpf" / "tcp_connlat"
LINE = re.compile(r"^tcp_connlat\s+\S+\s+(sha256:[0-9a-f]{64})\s+\d+ B\s+(.+?)\s+meta (sha256:[0-9a-f]{64})$")


def _build(home: Path, *python_flags: str) -> tuple[tuple[str, str, str], str]:
    done = subprocess.run([sys.executable, *python_flags, "-m", "builder.cli", "build", str(BUNDLE)],
                          cwd=ROOT, env=dict(os.environ, BPFDEPOT_HOME=str(home)),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [line] = [m.groups() for m in map(LINE.match, done.stdout.splitlines()) if m]
    return line, done.stderr


def test_a_fresh_store_builds_and_the_next_run_is_a_light_cache_hit(tmp_path: Path) -> None:
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("this kernel exposes no BTF")
    home = tmp_path / "home"
    (digest, how, meta), _ = _build(home)
    assert how.startswith("built in ")
    assert (home / "cache" / "toolchain.json").is_file()  # written by the toolchain thread
    (digest2, how2, meta2), importtime = _build(home, "-X", "importtime")
    assert (digest2, how2, meta2) == (digest, "cached", meta)
    imported = {line.split("|")[-1].strip() for line in importtime.splitlines()
                if line.startswith("import time:")}
    # pyelftools is left out: builder/verdicts.py warm_checks imports it in a thread while a
    # compile runs (tests/unit checks it is imported by no module's top level)
    heavy = sorted(m for m in imported if m != "elftools" and not m.startswith("elftools.")
                   and any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == [], "a cache-hit build imported these; import them where they are used"


def _quick(home: Path, bundle: Path, *python_flags: str) -> subprocess.CompletedProcess:
    """The command as the console script runs it (builder.quick: a stamp, else builder.cli)."""
    done = subprocess.run([sys.executable, *python_flags, "-m", "builder.quick", "build", str(bundle)],
                          cwd=ROOT, env=dict(os.environ, BPFDEPOT_HOME=str(home)),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def test_an_unchanged_build_is_answered_from_its_stamp_until_something_changes(tmp_path: Path) -> None:
    """The stamp answers without importing the build side (no YAML parsed); an edited source, a
    lost object or an edited shared header each take the full path again, which heals and
    stamps anew (builder/quick.py)."""
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("this kernel exposes no BTF")
    import shutil

    bundle = tmp_path / "tcp_connlat"
    shutil.copytree(BUNDLE, bundle)
    home = tmp_path / "home"
    first = _quick(home, bundle)
    [(digest, how, meta)] = [m.groups() for m in map(LINE.match, first.stdout.splitlines()) if m]
    assert how.startswith("built in ")
    again = _quick(home, bundle, "-X", "importtime")
    assert again.stdout == first.stdout.replace(how.ljust(15), "cached".ljust(15))
    imported = {line.split("|")[-1].strip() for line in again.stderr.splitlines()
                if line.startswith("import time:")}
    assert "yaml" not in imported and "builder.cli" not in imported  # the stamp answered

    source = bundle / "tcp_connlat.bpf.c"
    source.write_text(source.read_text() + "\n/* edited */\n")
    edited = _quick(home, bundle)
    [(digest2, how2, _)] = [m.groups() for m in map(LINE.match, edited.stdout.splitlines()) if m]
    assert how2.startswith("built in ")  # new sources: a new object key, so clang runs
    assert "cached" in _quick(home, bundle).stdout

    blob = home / "blobs" / "sha256" / digest2[7:9] / digest2[9:]
    blob.unlink()
    healed = _quick(home, bundle)
    assert "built in " in healed.stdout and blob.is_file()  # the full path wrote it back
