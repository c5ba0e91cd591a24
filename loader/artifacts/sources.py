"""Which files make up a program's source, and their digest.

A node computes the same source digest as the farm to find what was built for it, so this
lives in the loader. The closure is the entry file plus every header it includes with quotes,
found next to the including file or in the include folders; ``vmlinux.h`` is not a source
(it is generated from a kernel's BTF and covered by its digest) unless the manifest says
``headers: bundle`` (the bundle's own, beside the including file), and angle-bracket includes
are the toolchain's (covered by its version). clang's own dependency list checks the closure
after every compile.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loader.model.manifest import Manifest

# The project's shared BPF headers (bpfdepot.h), found beside the loader in a checkout.
SHARED_INCLUDE = Path(__file__).resolve().parents[2] / "bpf" / "include"
_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*"([^"\n]+)"', re.M)
GENERATED = frozenset({"vmlinux.h"})


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceFile:
    name: str   # stable name inside the build: src/<path in bundle> or include/<path>
    path: Path  # where it is on this machine
    data: bytes


def _name_for(path: Path, roots: Sequence[tuple[str, Path]]) -> str | None:
    for label, root in roots:
        if path.is_relative_to(root):
            return f"{label}/{path.relative_to(root).as_posix()}"
    return None


def source_closure(entry: Path, bundle_root: Path, include_dirs: Sequence[Path], *,
                   vendored: bool = False) -> list[SourceFile]:
    """The entry file and its quoted includes that resolve inside the bundle or include dirs;
    with ``vendored``, also the bundle's own vmlinux.h."""
    # include folders first: an unpacked bundle carries its shared headers inside its root
    includes = [("include", d.resolve()) for d in include_dirs]
    roots = [*includes, ("src", bundle_root.resolve())]
    found: dict[Path, SourceFile] = {}
    todo = [entry.resolve()]
    while todo:
        path = todo.pop()
        if path in found:
            continue
        name = _name_for(path, roots)
        if name is None:  # outside every root: clang's dependency check rejects it later
            continue
        data = path.read_bytes()
        found[path] = SourceFile(name=name, path=path, data=data)
        for match in _INCLUDE.finditer(data):
            header = match.group(1).decode(errors="replace")
            if header in GENERATED and not vendored:
                continue
            # a vendored vmlinux.h is the one beside the including file, as clang finds it
            bases = (path.parent,) if header in GENERATED else (path.parent, *(d for _, d in includes))
            for base in bases:
                candidate = (base / header).resolve()
                if candidate.is_file():
                    todo.append(candidate)
                    break
    return sorted(found.values(), key=lambda f: f.name)


def files_digest(files: Sequence[SourceFile]) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.data).hexdigest() for f in files}


def program_source_digest(manifest: Manifest, program: str) -> str:
    """The source digest of one of ``manifest``'s programs, as the farm computes it."""
    spec = manifest.program(program)
    files = source_closure(spec.local_path, manifest.root, [SHARED_INCLUDE],
                           vendored=spec.headers == "bundle")
    return source_digest(files, manifest.channel_decls, cpu=spec.cpu)


def source_digest(files: Sequence[SourceFile],
                  channels: Mapping[str, tuple[str, str | None]] | None = None,
                  cpu: str | None = None) -> str:
    """sha256 over the closure's names and contents and the manifest's channel declarations
    (they decide what the artifact's meta records) and its ``cpu:`` (it decides the code):
    what a node looks artifacts up by."""
    body: object = files_digest(files)
    if channels or cpu:
        body = {"files": body, "channels": {k: list(v) for k, v in (channels or {}).items()}}
        if cpu:
            body["cpu"] = cpu
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()
