"""`bpfdepot kernels`: the reference kernels added from their BTF and config, kernel packages
(synthetic .debs built here with dpkg-deb and objcopy) taken apart, and the CLI end to end."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.kernels import add_btf, add_package
from loader.kernel.catalog import list_kernels, select
from loader.errors import BpfDepotError
from loader.kernel.probe import FEATURES
from loader.artifacts.store import LocalStore

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT.parent / "shared" / "kernels"
RELEASES = ("6.1.0-50-amd64", "6.12.100+deb12-amd64", "6.18.44-fc-v669")
needs_kernels = pytest.mark.skipif(not KERNELS.is_dir(),
                                   reason=f"reference kernels not found at {KERNELS}")


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def readme_digests() -> dict[str, str]:
    """``<sha256>  <stem>.btf`` lines of ../shared/kernels/README.md."""
    text = (KERNELS / "README.md").read_text()
    return {m.group(2): m.group(1) for m in re.finditer(r"^([0-9a-f]{64})  (\S+)\.btf$", text, re.M)}


@needs_kernels
@pytest.mark.parametrize("release", RELEASES)
def test_add_each_reference_kernel(store: LocalStore, release: str) -> None:
    entry = add_btf(store, KERNELS / f"{release}.btf", config=KERNELS / f"{release}.config",
                    release=None, arch="x86_64")
    assert entry.release == release
    assert entry.arch == "x86_64"
    assert entry.btf_digest == readme_digests()[release]
    assert store.read_blob(entry.btf_blob) == (KERNELS / f"{release}.btf").read_bytes()
    assert store.read_blob(entry.config_blob or "") == (KERNELS / f"{release}.config").read_bytes()
    assert entry.features_from == "config" and entry.btf_on_node
    assert entry.features["kprobe"] is (release != "6.18.44-fc-v669")
    assert entry.features["tracepoint"] and entry.features["ringbuf"] and entry.features["tp_btf"]
    assert list_kernels(store) == [entry]


@needs_kernels
def test_without_a_config_nothing_is_claimed(store: LocalStore) -> None:
    entry = add_btf(store, KERNELS / "6.1.0-50-amd64.btf", config=None, release="6.1.0-50-amd64",
                    arch="amd64", btf_on_node=False)
    assert entry.arch == "x86_64"
    assert entry.features == {} and entry.config_blob is None and not entry.btf_on_node
    assert entry.has("kprobe") is None
    # a config given later fills in the features of the same identity
    again = add_btf(store, KERNELS / "6.1.0-50-amd64.btf", config=KERNELS / "6.1.0-50-amd64.config",
                    release=None, arch="x86_64")
    assert list_kernels(store) == [again] and again.features["kprobe"]


def test_add_btf_refuses_what_is_not_btf(store: LocalStore, tmp_path: Path) -> None:
    bad = tmp_path / "vmlinux.btf"
    bad.write_bytes(b"#\n# Linux/x86 6.1.176 Kernel Configuration\n")
    with pytest.raises(BpfDepotError) as caught:
        add_btf(store, bad, config=None, release=None, arch="x86_64")
    assert caught.value.message == (f"{bad} is not raw BTF: bad magic 0x0a23 at offset 0 "
                                    "(expected 0xeb9f)")
    with pytest.raises(BpfDepotError, match="does not exist"):
        add_btf(store, tmp_path / "missing.btf", config=None, release=None, arch="x86_64")
    assert list_kernels(store) == []


# ---------------------------------------------------------------- synthetic kernel packages

def tiny_btf() -> bytes:
    """Raw BTF with one type, ``int`` (layout: Documentation/bpf/btf.rst)."""
    strings = b"\0int\0"
    types = struct.pack("<4I", 1, 1 << 24, 4, 32)  # name_off, info (KIND_INT), size, encoding
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings)) \
        + types + strings


def elf(tmp_path: Path, btf: bytes | None) -> bytes:
    """A copy of /bin/true, with ``btf`` as its .BTF section (as in a vmlinux) when given."""
    if shutil.which("objcopy") is None:
        pytest.skip("needs objcopy (binutils)")
    out = tmp_path / "vmlinux"
    shutil.copy("/bin/true", out)
    if btf is not None:
        (tmp_path / "btf.bin").write_bytes(btf)
        subprocess.run(["objcopy", "--add-section", f".BTF={tmp_path / 'btf.bin'}",
                        "--set-section-flags", ".BTF=alloc,readonly", str(out)],
                       check=True, capture_output=True)
    return out.read_bytes()


def with_tool(*argv: str) -> Callable[[bytes], bytes]:
    def run(data: bytes) -> bytes:
        if shutil.which(argv[0]) is None:
            pytest.skip(f"needs the {argv[0]} command")
        return subprocess.run(argv, input=data, capture_output=True, check=True).stdout
    return run


def lzma_alone(data: bytes) -> bytes:
    """.lzma as the kernel's `lzma -9` writes it: a 64 MiB dictionary, so the header starts
    5d 00 00 00 04 (the magic matched). A bigger dictionary than the data was packed with
    decodes the same, so only the header is changed, sparing 600 MiB of encoder memory."""
    packed = lzma.compress(data, format=lzma.FORMAT_ALONE)
    return packed[:1] + struct.pack("<I", 64 << 20) + packed[5:]


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda d: gzip.compress(d, mtime=0),
    "xz": lambda d: lzma.compress(d, check=lzma.CHECK_CRC32),  # as the kernel's xz_wrap.sh
    "bzip2": bz2.compress,
    "lzma": lambda d: lzma_alone(d),
    "zstd": with_tool("zstd", "-q", "-c"),
    "lz4": with_tool("lz4", "-l", "-q", "-c"),  # -l: the legacy frame the kernel uses
}


def bzimage(payload: bytes, compress: Callable[[bytes], bytes]) -> bytes:
    """A fake bzImage: boot sector junk, a decoy gzip stream that is no ELF, the compressed
    vmlinux, then its 4-byte size (as arch/x86/boot/compressed appends) and more junk."""
    boot = b"MZ" + bytes(510) + b"HdrS" + bytes(range(256)) * 8
    decoy = gzip.compress(b"not an ELF" * 100, mtime=0)
    return boot + decoy + b"\x1f\x8b\x08junk" + compress(payload) \
        + struct.pack("<I", len(payload)) + b"\0" * 64


def deb(tmp_path: Path, files: dict[str, bytes], *, arch: str = "amd64") -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb")
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: linux-image-9.9.9-test\nVersion: 9.9.9-1\nArchitecture: " + arch + "\n"
        "Maintainer: bpfdepot tests <tests@example.invalid>\nDescription: a synthetic kernel\n")
    for name, data in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_bytes(data)
    out = tmp_path / "linux-image-9.9.9-test_9.9.9-1_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(out)],
                   check=True, capture_output=True)
    return out


CONFIG = ("#\n# Linux/x86 9.9.9 Kernel Configuration\n#\nCONFIG_BPF_SYSCALL=y\nCONFIG_BPF_EVENTS=y\n"
          "CONFIG_TRACEPOINTS=y\nCONFIG_DEBUG_INFO_BTF=y\n# CONFIG_KPROBES is not set\nCONFIG_NET=y\n")


@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_add_package_finds_the_btf_in_the_compressed_vmlinux(store: LocalStore, tmp_path: Path,
                                                              kind: str) -> None:
    btf = tiny_btf()
    image = bzimage(elf(tmp_path, btf), COMPRESSORS[kind])
    package = deb(tmp_path, {"boot/vmlinuz-9.9.9-test": image, "boot/config-9.9.9-test": CONFIG.encode(),
                             "boot/System.map-9.9.9-test": b"ffffffff81000000 T _text\n"})
    entry = add_package(store, package)
    assert entry.release == "9.9.9-test"
    assert entry.arch == "x86_64"
    assert entry.btf_digest == hashlib.sha256(btf).hexdigest()
    assert store.read_blob(entry.btf_blob) == btf
    assert store.read_blob(entry.config_blob or "") == CONFIG.encode()
    assert entry.features_from == "config" and entry.source == f"package {package.name}"
    assert {n for n in FEATURES if entry.features[n]} == {"tracepoint", "raw_tracepoint", "tp_btf",
                                                          "socket_filter", "xdp", "ringbuf",
                                                          "perf_event_array"}


def test_a_kernel_without_btf_is_refused_with_the_reason(store: LocalStore, tmp_path: Path) -> None:
    config = CONFIG.replace("CONFIG_DEBUG_INFO_BTF=y", "# CONFIG_DEBUG_INFO_BTF is not set")
    package = deb(tmp_path, {"boot/vmlinuz-9.9.9-test": bzimage(elf(tmp_path, None), COMPRESSORS["xz"]),
                             "boot/config-9.9.9-test": config.encode()})
    with pytest.raises(BpfDepotError) as caught:
        add_package(store, package)
    assert caught.value.message == (
        f"boot/vmlinuz-9.9.9-test in {package.name} has no .BTF section: the kernel was built "
        "without BTF (its config has no CONFIG_DEBUG_INFO_BTF=y)")
    assert "CONFIG_DEBUG_INFO_BTF=y" in caught.value.hint
    assert list_kernels(store) == []


def test_packages_without_a_usable_image_are_refused(store: LocalStore, tmp_path: Path) -> None:
    package = deb(tmp_path / "a", {"boot/vmlinuz-9.9.9-test": b"MZ" + bytes(4096)})
    with pytest.raises(BpfDepotError, match=r"no compressed ELF found \(tried 0 offsets"):
        add_package(store, package)
    package = deb(tmp_path / "b", {"usr/share/doc/linux-image-9.9.9-test/README": b"hi\n"})
    with pytest.raises(BpfDepotError, match=r"holds 0 kernel images \(none\)"):
        add_package(store, package)
    not_a_deb = tmp_path / "linux-image-broken.deb"
    not_a_deb.write_bytes(b"!<arch>\nbroken")
    with pytest.raises(BpfDepotError, match="is it a Debian package"):
        add_package(store, not_a_deb)


# ---------------------------------------------------------------- the CLI

def bpfdepot(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BPFDEPOT_HOME": str(home)}
    env.pop("BPFDEPOT_STORE", None)
    return subprocess.run([sys.executable, "-m", "builder.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@needs_kernels
def test_cli_add_then_list(tmp_path: Path) -> None:
    for release in RELEASES:
        added = bpfdepot(tmp_path, "kernels", "add", "--btf", str(KERNELS / f"{release}.btf"),
                         "--config", str(KERNELS / f"{release}.config"), "--arch", "x86_64")
        assert added.returncode == 0, added.stderr
        assert added.stdout.splitlines()[1].startswith(release)

    listed = bpfdepot(tmp_path, "kernels", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["release", "arch", "btf", "digest", "from", "btf-on-node",
                                "features", "source"]
    assert [line.split()[:6] for line in lines[1:]] == [
        ["6.1.0-50-amd64", "x86_64", "ecf4e48fcbed", "config", "yes", "all"],
        ["6.12.100+deb12-amd64", "x86_64", "38187011249f", "config", "yes", "all"],
        ["6.18.44-fc-v669", "x86_64", "309e2b4c8d95", "config", "yes", "all"],
    ]
    assert "all but kprobe " in lines[3]
    assert lines[1].endswith("btf file 6.1.0-50-amd64.btf, config 6.1.0-50-amd64.config")

    as_json = bpfdepot(tmp_path, "kernels", "list", "feature=kprobe", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert [e["release"] for e in json.loads(as_json.stdout)] == list(RELEASES[:2])
    assert [e.release for e in select(LocalStore(tmp_path), "6.1*,digest=309e")] == [RELEASES[2]]

    wrong = bpfdepot(tmp_path, "kernels", "list", "relase=6.*")
    assert wrong.returncode == 2
    assert wrong.stderr == ("bpfdepot: error: kernel selector 'relase=6.*': unknown term 'relase'\n"
                            "hint: did you mean 'release'? terms are release, arch, feature, digest, flavour, version\n")


def test_cli_empty_catalog_and_flag_errors(tmp_path: Path) -> None:
    empty = bpfdepot(tmp_path, "kernels", "list")
    assert empty.returncode == 0 and "the kernel catalog is empty" in empty.stderr
    mixed = bpfdepot(tmp_path, "kernels", "add", "--package", "x.deb", "--config", "c")
    assert mixed.returncode == 1
    assert "--config cannot be used with --package" in mixed.stderr
    neither = bpfdepot(tmp_path, "kernels", "add")
    assert neither.returncode == 2 and "one of the arguments --btf --package is required" in neither.stderr
