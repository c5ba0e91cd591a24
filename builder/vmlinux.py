"""``vmlinux.h`` for a target kernel, generated from its BTF by bpftool and cached by digest."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from loader.errors import BuildError


def vmlinux_header(btf: Path, btf_digest: str, bpftool: Path, cache_dir: Path) -> Path:
    """The path of the cached header for this BTF (generated on first use, ~0.2 s)."""
    header = cache_dir / "vmlinux" / f"{btf_digest}.h"
    if header.exists():
        return header
    header.parent.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([str(bpftool), "btf", "dump", "file", str(btf), "format", "c"],
                         capture_output=True, timeout=120)
    if out.returncode != 0 or not out.stdout:
        raise BuildError(f"bpftool cannot read the BTF in {btf}",
                         detail=out.stderr.decode(errors="replace"),
                         hint="pass raw BTF (like /sys/kernel/btf/vmlinux or ../shared/kernels/*.btf)")
    fd, tmp = tempfile.mkstemp(dir=header.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(out.stdout)
    os.replace(tmp, header)
    return header
