"""vmlinux.h precompiled once per (header, flags, toolchain), so a compile parses only its own code.

A CO-RE program's first line is ``#include "vmlinux.h"``: some 3 MB of kernel types that clang
parses again for every compile, about four fifths of a small program's compile time (190 of
235 ms here). clang can keep that parse as a precompiled header (PCH) and load it with
``-include-pch``; the object it then writes is byte for byte the one a plain compile writes
(tests/build/test_pch.py checks every catalog program), so the object key does not change.

The PCH is used only where it cannot change the meaning of the source: the entry's first
directive must be that include, after at most comments and #defines of names vmlinux.h never
mentions (a program that includes anything else first, or that uses kernel headers instead of
vmlinux.h, compiles as it always did). It is
built in the same sandbox as a compile, at the same path (/work/vmlinux/vmlinux.h) and with the
same flags, from bpfdepot's own inputs only (the cached header and flags made in
builder/compile.py, never the manifest's), so no bundle can shape what another bundle's compile
loads. clang checks the header's size and time stamp and the flags against the PCH and refuses
a mismatch: the compile then runs again without it (builder/compile.py) and the PCH is rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from builder.sandbox import Limits, run_sandboxed
from builder.toolchain import Toolchain

INSIDE_HEADER = "vmlinux/vmlinux.h"       # where compiles see the reference header
INSIDE_PCH = "vmlinux/vmlinux.h.pch"      # and its PCH, beside it
# What may come before the include: blank lines, comments, one-line object-like #defines.
_SKIP = re.compile(rb'\s+|//[^\n]*(?:\n|\Z)|/\*.*?\*/', re.S)
_DEFINE = re.compile(rb'#[ \t]*define[ \t]+([A-Za-z_]\w*)(?![\w(])[^\n\\]*(?:\n|\Z)')
_INCLUDE = re.compile(rb'#[ \t]*include[ \t]*[<"]vmlinux\.h[>"]')


def defines_before_vmlinux(source: bytes) -> tuple[str, ...] | None:
    """The macros the entry defines before its first directive, ``#include "vmlinux.h"``
    (or ``<vmlinux.h>``); None when anything else comes first."""
    at, names = 0, []
    while at < len(source):
        if (skip := _SKIP.match(source, at)) and skip.end() > at:
            at = skip.end()
        elif define := _DEFINE.match(source, at):
            names.append(define[1].decode())
            at = define.end()
        else:
            return tuple(names) if _INCLUDE.match(source, at) else None
    return None


def leads_with_vmlinux(source: bytes, header: Path) -> bool:
    """Whether loading vmlinux.h first means what the entry says: its first directive is the
    include, after at most #defines of names the header never mentions (a ``#define
    BPFDEPOT_FILTER`` before it is common; one the header reads would change its meaning)."""
    names = defines_before_vmlinux(source)
    if names is None:
        return False
    return not names or not any(_mentions(header, name) for name in names)


_MENTIONS: dict[tuple[str, int, str], bool] = {}


def _mentions(header: Path, name: str) -> bool:
    """Whether ``name`` occurs as a word in the header (cached per header size and name)."""
    key = (str(header), header.stat().st_size, name)
    if key not in _MENTIONS:
        text = header.read_bytes()
        _MENTIONS[key] = re.search(rb"(?<!\w)" + re.escape(name.encode()) + rb"(?!\w)",
                                   text) is not None
    return _MENTIONS[key]


def header_pch(header: Path, flags: Sequence[str], prefix_map: Sequence[str],
               toolchain: Toolchain, cache_dir: Path, limits: Limits) -> Path | None:
    """The cached PCH of ``header`` for these flags, built on first use (~0.5 s, once per
    reference kernel and variant); None when clang cannot make one (the compile goes on
    without it). It is built with exactly the compile's options: clang refuses a PCH whose
    language, target or macro options differ from the compile that loads it."""
    options = [*flags, *prefix_map]
    key = hashlib.sha256(json.dumps({"header": header.name, "size": header.stat().st_size,
                                     "flags": options,
                                     "toolchain": toolchain.as_dict()},
                                    sort_keys=True).encode()).hexdigest()[:20]
    pch = cache_dir / "vmlinux" / f"{header.stem}-{key}.pch"
    if pch.exists():
        return pch
    pch.parent.mkdir(parents=True, exist_ok=True)
    # one builder per PCH: a second worker waiting here then finds it made
    with open(pch.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if pch.exists():
            return pch
        scratch = Path(tempfile.mkdtemp(prefix="pch-", dir=pch.parent))
        try:
            (scratch / "vmlinux").mkdir()
            (scratch / INSIDE_HEADER).touch()  # the mount point of the cached header
            cmd = [str(toolchain.clang), *options, "-x", "c-header",
                   INSIDE_HEADER, "-o", "out.pch"]
            out = run_sandboxed(cmd, workdir=scratch, limits=limits,
                                ro_files={INSIDE_HEADER: header})
            made = scratch / "out.pch"
            if out.returncode != 0 or out.timed_out or not made.is_file():
                return None
            os.replace(made, pch)
            return pch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def forget(pch: Path) -> None:
    """Drop a PCH clang refused (another header under the same name, a changed toolchain), so
    the next compile builds it again."""
    try:
        pch.unlink()
    except FileNotFoundError:
        pass


def refused(stderr: str) -> bool:
    """Whether clang's error is about the PCH itself rather than the program."""
    return bool(re.search(r"precompiled header|PCH file|has been modified since the "
                          r"(?:precompiled header|PCH)|\.pch", stderr))

