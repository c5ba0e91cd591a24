"""The compilers and tools a build uses, and their versions (part of every build key).

Versions are cached by the binary's path, size and mtime, so a cache-hit build runs no tool.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loader.errors import BuildError

LIBBPF_VERSION_H = Path("/usr/include/bpf/libbpf_version.h")


@dataclass(frozen=True, slots=True, kw_only=True)
class Toolchain:
    clang: Path
    clang_version: str
    bpftool: Path
    libbpf_version: str

    def as_dict(self) -> dict[str, str]:
        return {"clang": self.clang_version, "libbpf": self.libbpf_version}


def _need(tool: str) -> Path:
    found = shutil.which(tool)
    if not found:
        raise BuildError(f"{tool} is not installed",
                         hint="run ./setup.sh (apt-get install clang llvm bpftool libbpf-dev)")
    return Path(os.path.realpath(found))


def tool_version(binary: Path, cache: Path | None, args: tuple[str, ...] = ("--version",),
                 env: dict[str, str] | None = None) -> str:
    """The first line ``binary args`` prints, remembered by the binary's path, size and mtime."""
    stat = binary.stat()
    stamp = f"{binary}:{stat.st_size}:{stat.st_mtime_ns}"
    known = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    if stamp not in known:
        out = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60, env=env)
        known[stamp] = out.stdout.splitlines()[0].strip() if out.stdout.strip() else "unknown"
        if cache is None:
            return known[stamp]
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent)  # threads of one process build at once
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(known, indent=1))
        os.replace(tmp, cache)
    return known[stamp]


def libbpf_headers_version() -> str:
    try:
        text = LIBBPF_VERSION_H.read_text()
    except FileNotFoundError:
        raise BuildError("libbpf headers are missing", hint="apt-get install libbpf-dev") from None
    major = re.search(r"LIBBPF_MAJOR_VERSION\s+(\d+)", text)
    minor = re.search(r"LIBBPF_MINOR_VERSION\s+(\d+)", text)
    return f"{major.group(1)}.{minor.group(1)}" if major and minor else "unknown"


def find_toolchain(cache_dir: Path) -> Toolchain:
    clang = _need("clang")
    return Toolchain(clang=clang, clang_version=tool_version(clang, cache_dir / "toolchain.json"),
                     bpftool=_need("bpftool"), libbpf_version=libbpf_headers_version())
