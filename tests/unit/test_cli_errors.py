"""`bpfdepot` errors as a user sees them: exit code of the error class, message and hint on
stderr, no traceback. Only paths that fail before clang, bpftool or the kernel are involved;
any subprocess would fail the test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import builder.toolchain
from builder.cli import main
from builder.compile import ARCH_DEFINES
from builder.toolchain import Toolchain
from loader.errors import ManifestError
from loader.artifacts.store import REBUILD_HINT

TOOLCHAIN = Toolchain(clang=Path("/usr/bin/clang"), clang_version="clang 14",
                      bpftool=Path("/usr/sbin/bpftool"), libbpf_version="1.1")
MANIFEST = """\
kind: ebpfprogram
name: demo
spec:
  programs:
    - name: demo
      path: file://./demo.bpf.c
      type: ebpf_object
"""


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BPFDEPOT_HOME", str(tmp_path / "home"))

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a unit test ran a program: {args[0]!r}")
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    return tmp_path / "home"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "demo.bpf.c").write_text('#include "vmlinux.h"\nchar LICENSE[] SEC("license") = "GPL";\n')
    (folder / "manifest.yaml").write_text(MANIFEST)
    return folder


@pytest.fixture
def fake_toolchain(monkeypatch: pytest.MonkeyPatch) -> None:
    """cmd_build looks the toolchain up first; answer without running `clang --version`."""
    monkeypatch.setattr(builder.toolchain, "find_toolchain", lambda cache: TOOLCHAIN)


def fails(capsys: pytest.CaptureFixture[str], argv: list[str], code: int) -> list[str]:
    """Run the CLI, expect exit ``code`` and nothing on stdout; return the stderr lines."""
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    return err.splitlines()


def test_build_of_a_folder_without_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert fails(capsys, ["build", str(empty)], 2) == [
        f"bpfdepot: error: {empty}: no manifest in this folder (looked for manifest.yaml, manifest.yml)",
        "hint: give the bundle folder that holds manifest.yaml, or the manifest file itself",
    ]


def test_build_of_a_path_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert fails(capsys, ["build", str(missing)], 2) == [
        f"bpfdepot: error: {missing}: no such bundle folder or manifest file",
        "hint: give a folder holding manifest.yaml or manifest.yml, or a manifest file",
    ]


def test_debug_shows_the_exception_instead(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest in this folder"):
        main(["--debug", "build", str(tmp_path)])


def test_inspect_of_a_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.bpf.o"
    assert fails(capsys, ["inspect", str(missing)], 3) == [
        f"bpfdepot: error: cannot inspect '{missing}': not a .bpf.o file, a bundle or a sha256 digest",
        "hint: pass an object file, a bundle folder or a digest printed by `bpfdepot build`",
    ]


def test_inspect_of_a_file_that_is_not_an_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.bpf.o"
    junk.write_bytes(b"not an ELF file at all")
    lines = fails(capsys, ["inspect", str(junk)], 8)
    assert lines[0].startswith(f"bpfdepot: error: '{junk}' is not a valid BPF object: ")
    assert lines[-1] == "hint: rebuild it with clang -target bpf -g"


def test_inspect_of_digests(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digest = "sha256:" + "0" * 64
    assert fails(capsys, ["inspect", digest], 9) == [
        f"bpfdepot: error: blob {digest} is not in LocalStore({home})",
        f"hint: {REBUILD_HINT}",
    ]
    assert fails(capsys, ["inspect", "sha256:xyz"], 9) == [
        "bpfdepot: error: not a sha256 digest: 'sha256:xyz'",
        "hint: digests look like sha256:<64 hex>",
    ]


def test_build_for_a_kernel_btf_that_does_not_exist(bundle: Path, fake_toolchain: None,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert fails(capsys, ["build", str(bundle), "--kernel-btf", "/nonexistent"], 1) == [
        "bpfdepot: error: kernel BTF /nonexistent does not exist",
        "hint: pass raw BTF files such as ../shared/kernels/6.1.0-50-amd64.btf",
    ]


def test_build_for_an_unknown_arch(tmp_path: Path, bundle: Path, fake_toolchain: None,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    btf = tmp_path / "6.1.0-50-amd64.btf"
    btf.write_bytes(b"\x9f\xeb\x01\x00")  # never read beyond its digest: the arch fails first
    assert fails(capsys, ["build", str(bundle), "--kernel-btf", str(btf), "--arch", "sparc64"], 8) == [
        "bpfdepot: error: cannot build BPF programs for arch 'sparc64'",
        f"hint: known: {', '.join(sorted(ARCH_DEFINES))}",
    ]


def test_bad_kernel_btf_is_reported_even_without_clang(tmp_path: Path, bundle: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no clang, no bpftool
    assert fails(capsys, ["build", str(bundle), "--kernel-btf", "/nonexistent"], 1)[0] == (
        "bpfdepot: error: kernel BTF /nonexistent does not exist")


def test_build_of_a_bundle_with_only_a_remote_program_says_nothing_was_built(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It used to print nothing and exit 0."""
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "manifest.yaml").write_text(MANIFEST.replace("file://./demo.bpf.c",
                                                           "http://example.invalid/demo.bpf.o"))
    lines = fails(capsys, ["build", str(folder)], 2)
    assert lines[0] == (f"bpfdepot: error: {folder / 'manifest.yaml'}:5: nothing to build: program 'demo' "
                        "is http://example.invalid/demo.bpf.o, not a local source")


def test_inspect_of_a_bundle_never_built_for_this_kernel(bundle: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("this kernel exposes no BTF")
    lines = fails(capsys, ["inspect", str(bundle)], 3)
    assert lines[0].startswith("bpfdepot: error: no artifact for 'demo' on ")
    assert lines[1] == f"hint: run: bpfdepot build {bundle.resolve()}"
