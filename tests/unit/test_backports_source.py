"""scripts/backports_source.py: the backports entry comes from the machine's own sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "backports_source.py"


def run(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), "--suite", "bookworm"],
                          capture_output=True, text=True, timeout=30)


def write(root: Path, name: str, text: str) -> None:
    path = root / "etc" / "apt" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_deb822_mirror_and_its_keyring_are_kept(tmp_path: Path) -> None:
    write(tmp_path, "sources.list.d/debian.sources",
          "Types: deb deb-src\nURIs: http://mirror.example.internal/debian\nSuites: bookworm bookworm-updates\n"
          "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
          "Types: deb\nURIs: http://mirror.example.internal/debian-security\nSuites: bookworm-security\n"
          "Components: main\n")
    done = run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("Types: deb\nURIs: http://mirror.example.internal/debian\n"
                           "Suites: bookworm-backports\nComponents: main\n"
                           "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")


def test_a_one_line_source_behind_a_proxy(tmp_path: Path) -> None:
    write(tmp_path, "sources.list",
          "# comment\ndeb [arch=amd64 signed-by=/etc/apt/keyrings/local.gpg] http://proxy:3142/debian bookworm main\n"
          "deb-src http://proxy:3142/debian bookworm main\n")
    write(tmp_path, "sources.list.d/disabled.sources",
          "Enabled: no\nTypes: deb\nURIs: http://elsewhere/debian\nSuites: bookworm\nComponents: main\n")
    done = run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == ["URIs: http://proxy:3142/debian", "Suites: bookworm-backports",
                                            "Components: main", "Signed-By: /etc/apt/keyrings/local.gpg"]


@pytest.mark.parametrize("text", ["", "deb http://deb.debian.org/debian trixie main\n"])
def test_no_source_for_the_suite_is_said_clearly(tmp_path: Path, text: str) -> None:
    write(tmp_path, "sources.list", text)
    done = run(tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"backports_source: no apt source carries the suite 'bookworm' under {tmp_path / 'etc/apt'}\n"
