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
    # pyelftools is left out: builder/buildcli.py imports it in a thread when a build outlasts
    # WARM_AFTER_S, which a cache hit on a very busy machine might (tests/unit checks it is
    # imported by no module's top level)
    heavy = sorted(m for m in imported if m != "elftools" and not m.startswith("elftools.")
                   and any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == [], "a cache-hit build imported these; import them where they are used"
