"""Debian kernel packages for the VM tests and bench/bench_vmtest.py, downloaded once per machine.

They are kept in ``$BPFDEPOT_TEST_CACHE/debs`` (default /var/cache/bpfdepot-test/debs) across
runs. ``apt-get download`` finds the 6.1 packages in bookworm and the 6.12 ones in
bookworm-security, both in a fresh Debian 12's default sources; when apt does not know a
package yet, its lists are refreshed once (``apt-get update``, root).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]{1,127}$")  # Debian policy 5.6.1; no leading "-"
# apt's words for "the archive cannot be reached" (as opposed to "no such package")
_UNREACHABLE = re.compile(r"Failed to fetch|Could not resolve|Temporary failure resolving|"
                          r"Could not connect|Unable to connect|Connection (failed|timed out)|"
                          r"Network is unreachable")
_UNKNOWN = re.compile(r"Unable to locate package|Can't select candidate|has no installation candidate")


class ArchiveUnreachable(Exception):
    """The Debian archive could not be reached: the caller skips, with this message."""


def cache_root(env: Mapping[str, str]) -> Path:
    return Path(env.get("BPFDEPOT_TEST_CACHE") or "/var/cache/bpfdepot-test")


def _download(package: str, into: Path) -> subprocess.CompletedProcess:
    # the sandbox user _apt cannot write into a root-owned cache: download as the caller
    return subprocess.run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", package],
                          cwd=into, capture_output=True, text=True, timeout=600, check=False)


def fetch_package(package: str, cache: Path) -> Path:
    """The cached ``<package>_<version>_<arch>.deb``, downloaded on first use."""
    if not _PACKAGE.fullmatch(package):
        raise ValueError(f"{package!r} is not a Debian package name")
    debs = cache / "debs"
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=debs, prefix=".download-") as tmp:
        proc = _download(package, Path(tmp))
        if proc.returncode != 0 and _UNKNOWN.search(proc.stderr) and os.geteuid() == 0:
            update = subprocess.run(["apt-get", "-q", "update"], capture_output=True, text=True, check=False,
                                    timeout=600)
            if _UNREACHABLE.search(update.stdout + update.stderr):
                raise ArchiveUnreachable(f"apt-get update cannot reach the Debian archive: "
                                         f"{_first(update.stdout + update.stderr, _UNREACHABLE)}")
            proc = _download(package, Path(tmp))
        if proc.returncode != 0:
            if _UNREACHABLE.search(proc.stderr):
                raise ArchiveUnreachable(f"apt-get download {package} cannot reach the Debian "
                                         f"archive: {_first(proc.stderr, _UNREACHABLE)}")
            raise RuntimeError(f"apt-get download {package} failed: {proc.stderr.strip()}\n"
                               "6.1 kernels are in bookworm, 6.12 kernels in bookworm-security: "
                               "check /etc/apt/sources.list.d/ and run apt-get update")
        (deb,) = Path(tmp).glob(f"{package}_*.deb")
        shutil.move(deb, debs / deb.name)
    return debs / deb.name


def _first(text: str, pattern: re.Pattern[str]) -> str:
    return next((line.strip() for line in text.splitlines() if pattern.search(line)), text.strip())
