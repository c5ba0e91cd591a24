"""The ``bpfdepot`` command's entry point, and the answer to a ``build`` nothing changed for.

Most ``bpfdepot build`` runs find every artifact already stored: the sources, the kernel and the
toolchain are what they were last time. Finding that out the full way imports the build side
(YAML, the manifest model, the compiler driver: ~60 ms) before it hashes anything. So a build
that succeeded leaves a *stamp*, as make and ninja do: the size, time stamp and inode of every
file its answer depended on — the manifest, each program's source closure, the target's BTF,
the toolchain's binaries and the probe caches — the store files it printed, and the lines it
printed. The next ``build`` with the same arguments and environment stats those files (stdlib
only, a few ms) and, when every one is unchanged, prints the same lines as cache hits. Any
difference, a missing stamp, a store that is not a local folder, or a bundle with processors or
bpftrace scripts (built by other tools) takes the full path, which writes the stamp again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

VERSION = 1
STAMPS = "build-stamps"  # under the store's cache folder
# The modules whose logic decides what a build prints: a change to any of them (an upgrade of
# bpfdepot, an edit in a checkout) makes older stamps useless.
_CODE = ("quick.py", "buildcli.py", "compile.py", "verdicts.py", "relocate.py", "pch.py",
         "toolchain.py")
_KERNEL_BTF = "/sys/kernel/btf/vmlinux"


def main() -> int:
    """``bpfdepot``: a ``build`` answered from its stamp, else the full command line."""
    argv = sys.argv[1:]
    if argv[:1] == ["build"]:
        lines = replay(argv, os.environ, Path.cwd())
        if lines is not None:
            sys.stdout.write(lines)
            sys.stdout.flush()
            return 0
    from builder.cli import main as full

    return full(argv)


def artifact_line(program: str, target: str, digest: str, size: int, how: str, meta: str) -> str:
    """One line of ``bpfdepot build`` output: the same from a build and from its stamp."""
    return f"{program:<16} {target:<30} {digest} {size:>7} B  {how:<15} meta {meta}\n"


def home_of(env: dict[str, str] | os._Environ, cwd: Path) -> Path:
    """BPFDEPOT_HOME as loader/model/settings.py resolves it (default ./artifacts)."""
    home = Path(env.get("BPFDEPOT_HOME") or "artifacts")
    return home if home.is_absolute() else cwd / home


def stamp_path(argv: Sequence[str], env, cwd: Path) -> Path | None:
    """Where the stamp of this exact command lives; None when a stamp cannot answer it."""
    if env.get("BPFDEPOT_STORE", "").startswith("s3://") or "--debug" in argv:
        return None
    here = Path(__file__).resolve().parent
    code = [_stat(here / name) for name in _CODE]
    key = json.dumps({"v": VERSION, "argv": list(argv), "cwd": str(cwd), "code": code,
                      "env": sorted((k, v) for k, v in env.items() if k.startswith("BPFDEPOT_")),
                      "python": sys.executable, "boot": _boot_id()})
    digest = hashlib.sha256(key.encode()).hexdigest()
    return home_of(env, cwd) / "cache" / STAMPS / f"{digest}.json"


def replay(argv: Sequence[str], env, cwd: Path) -> str | None:
    """The output of a build whose stamp still holds, or None."""
    path = stamp_path(argv, env, cwd)
    if path is None:
        return None
    try:
        stamp = json.loads(path.read_bytes())
        if stamp.get("v") != VERSION:
            return None
        for name, seen in stamp["files"]:
            if _stat(Path(name)) != seen:
                return None
        return "".join(artifact_line(*row[:4], "cached", row[5]) for row in stamp["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no stamp, or one from elsewhere: the full build answers


def record(argv: Sequence[str], env, cwd: Path, files: Iterable[Path],
           rows: Sequence[tuple[str, str, str, int, str, str]]) -> None:
    """Leave the stamp of a build that printed ``rows`` after reading ``files``."""
    path = stamp_path(argv, env, cwd)
    if path is None:
        return
    watched = sorted({str(Path(f).absolute()) for f in files} | {_KERNEL_BTF})
    stamp = {"v": VERSION, "files": [[f, _stat(Path(f))] for f in watched], "rows": list(rows)}
    if any(seen is None for _, seen in stamp["files"]):
        return  # something it read is already gone: nothing to vouch for
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(stamp))
        os.replace(tmp, path)
    except OSError:
        pass  # a stamp only saves time


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _boot_id() -> str:
    """This boot: the running kernel (and its BTF) cannot change without a new one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
