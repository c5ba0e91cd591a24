"""builder/bundle.py: deterministic packing, and unpacking of hostile archives (exact messages,
and nothing left behind after a refusal)."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from builder.bundle import (BundleError, BundleLimits, bundle_include_dir, pack_bundle,
                            unpack_bundle)
from loader.errors import ManifestError
from loader.model.manifest import load_bundle
from loader.artifacts.sources import source_closure

MANIFEST = """\
kind: ebpfprogram
name: demo
spec:
  programs:
    - name: demo
      path: file://./demo.bpf.c
      type: ebpf_object
    - name: prebuilt
      path: file://./objs/prebuilt.bpf.o
      type: ebpf_object
  properties:
    initfile: ./conf/demo.ini
  channels:
    demo_events:
      type: ring_buffer
"""
SOURCES = {
    "demo.bpf.c": '#include "vmlinux.h"\n#include "demo.h"\n#include "common.h"\n'
                  '#include "sub/helper.h"\nint x;\n',
    "demo.h": "struct demo_event { int pid; };\n",
    "sub/helper.h": '#include "../demo.h"\n',
    "unused.h": "not packed: nothing includes it\n",
    "conf/demo.ini": "[demo]\nrate = 1\n",
}


def make_bundle(base: Path) -> tuple[Path, Path]:
    """A bundle folder and a shared include folder holding common.h, under ``base``."""
    root, include = base / "bundle", base / "include"
    for name, text in {"manifest.yaml": MANIFEST, **SOURCES}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "objs").mkdir()
    (root / "objs" / "prebuilt.bpf.o").write_bytes(b"\x7fELF not really")
    include.mkdir()
    (include / "common.h").write_text("#define COMMON 1\n")
    return root, include


def pack(base: Path) -> bytes:
    root, include = make_bundle(base)
    return pack_bundle(load_bundle(root), [include])


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# -- packing ---------------------------------------------------------------------------------

def test_round_trip(tmp_path: Path) -> None:
    data = pack(tmp_path / "a")
    manifest_path = unpack_bundle(data, tmp_path / "out")
    assert manifest_path == tmp_path / "out" / "manifest.yaml"
    assert files_under(tmp_path / "out") == {
        ".bpfdepot/include/common.h": b"#define COMMON 1\n",
        "conf/demo.ini": SOURCES["conf/demo.ini"].encode(),
        "demo.bpf.c": SOURCES["demo.bpf.c"].encode(),
        "demo.h": SOURCES["demo.h"].encode(),
        "manifest.yaml": MANIFEST.encode(),
        "objs/prebuilt.bpf.o": b"\x7fELF not really",
        "sub/helper.h": SOURCES["sub/helper.h"].encode(),
    }
    manifest = load_bundle(manifest_path)  # every file:// path resolves in the unpacked copy
    root = manifest.root
    closure = source_closure(manifest.program("demo").local_path, root, [bundle_include_dir(root)])
    assert sorted(f.data for f in closure) == sorted(
        [SOURCES[n].encode() for n in ("demo.bpf.c", "demo.h", "sub/helper.h")]
        + [b"#define COMMON 1\n"])


def test_entries_carry_nothing_of_the_packing_machine(tmp_path: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(pack(tmp_path)), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert (m.type, m.mode) in ((tarfile.DIRTYPE, 0o755), (tarfile.REGTYPE, 0o644))
    assert {m.name for m in members if m.isdir()} == {".bpfdepot", ".bpfdepot/include", "conf",
                                                      "objs", "sub"}


def test_same_content_gives_the_same_bytes(tmp_path: Path) -> None:
    first = pack(tmp_path / "one")
    root = tmp_path / "one" / "bundle"
    assert pack_bundle(load_bundle(root), [tmp_path / "one" / "include"]) == first
    os.utime(root / "demo.bpf.c", (1, 1))
    (root / "demo.h").chmod(0o600)
    assert pack(tmp_path / "two" / "deeper") == first  # another folder, other times and modes
    assert gzip.decompress(first)  # and a plain gzip stream
    assert first[4:8] == b"\0\0\0\0"  # gzip header mtime


def test_a_file_that_clashes_with_a_shared_header(tmp_path: Path) -> None:
    root, include = make_bundle(tmp_path)
    (root / ".bpfdepot" / "include").mkdir(parents=True)
    (root / ".bpfdepot" / "include" / "common.h").write_text("#define COMMON 2\n")
    (root / "demo.bpf.c").write_text('#include "common.h"\n#include ".bpfdepot/include/common.h"\n')
    with pytest.raises(BundleError) as caught:
        pack_bundle(load_bundle(root), [include])
    assert "two different files would be packed as '.bpfdepot/include/common.h'" in caught.value.message


# -- unpacking hostile archives ---------------------------------------------------------------

def entry(name: str, data: bytes = b"x", *, kind: bytes = tarfile.REGTYPE, link: str = "",
          pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    if pax:
        info.pax_headers = pax
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def archive(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


GOOD = [entry("manifest.yaml", MANIFEST.encode()), entry("src/demo.bpf.c", b"int x;\n")]


def refused(data: bytes, tmp_path: Path, limits: BundleLimits = BundleLimits()) -> BundleError:
    """Unpack, expect a refusal, and check that nothing was left behind."""
    dest = tmp_path / "dest"
    with pytest.raises(BundleError) as caught:
        unpack_bundle(data, dest, limits)
    assert not dest.exists()
    assert isinstance(caught.value, ManifestError) and caught.value.exit_code == 2
    assert caught.value.hint
    return caught.value


@pytest.mark.parametrize("bad,message", [
    (entry("/etc/passwd"), "bundle entry '/etc/passwd' is an absolute path"),
    (entry("../x"), "bundle entry '../x' has a '..' component"),
    (entry("src/../../x"), "bundle entry 'src/../../x' has a '..' component"),
    (entry("src//x"), "bundle entry 'src//x' has an empty component ('//')"),
    (entry("src\\x"), "bundle entry 'src\\\\x' has a backslash in its name"),
    (entry("x", pax={"path": "src/a\0b"}),
     "bundle entry 'src/a\\x00b' has a NUL or control character in its name"),
    (entry("link", kind=tarfile.SYMTYPE, link="/etc/passwd"),
     "bundle entry 'link' is a symlink (to '/etc/passwd'): bundles hold regular files and "
     "folders only"),
    (entry("hard", kind=tarfile.LNKTYPE, link="manifest.yaml"),
     "bundle entry 'hard' is a hard link (to 'manifest.yaml'): bundles hold regular files and "
     "folders only"),
    (entry("null", kind=tarfile.CHRTYPE),
     "bundle entry 'null' is a character device: bundles hold regular files and folders only"),
    (entry("disk", kind=tarfile.BLKTYPE),
     "bundle entry 'disk' is a block device: bundles hold regular files and folders only"),
    (entry("pipe", kind=tarfile.FIFOTYPE),
     "bundle entry 'pipe' is a fifo: bundles hold regular files and folders only"),
    (entry("src/demo.bpf.c"), "bundle entry 'src/demo.bpf.c' appears twice in the archive"),
    (entry("./src/demo.bpf.c"), "bundle entry 'src/demo.bpf.c' appears twice in the archive"),
    (entry("src/demo.bpf.c/x"), "bundle entry 'src/demo.bpf.c/x' is inside 'src/demo.bpf.c', "
                                "which is a file"),
])
def test_refused_entries(tmp_path: Path, bad, message: str) -> None:
    data = archive(*GOOD, bad)  # the bad entry comes last: earlier files were written
    assert refused(data, tmp_path).message == message


def test_folders_and_files_of_one_name(tmp_path: Path) -> None:
    # A folder entry after the files in it is fine (tar -c writes it first, others may not).
    data = archive(*GOOD, entry("src", kind=tarfile.DIRTYPE))
    assert unpack_bundle(data, tmp_path / "ok").name == "manifest.yaml"
    data = archive(*GOOD, entry("src"))
    assert refused(data, tmp_path).message == "bundle entry 'src' is both a folder and a file"
    data = archive(*GOOD, entry("a"), entry("a", kind=tarfile.DIRTYPE))
    assert refused(data, tmp_path).message == "bundle entry 'a' appears twice in the archive"


def test_names_too_long_or_too_deep(tmp_path: Path) -> None:
    limits = BundleLimits(depth=3, name_len=20)
    assert refused(archive(*GOOD, entry("a/b/c/d")), tmp_path, limits).message == (
        "bundle entry 'a/b/c/d' is 4 folders deep, over the limit of 3")
    assert refused(archive(*GOOD, entry("n" * 21)), tmp_path, limits).message == (
        f"bundle entry '{'n' * 21}' has a name of 21 bytes, over the limit of 20")


def test_too_many_entries(tmp_path: Path) -> None:
    data = archive(*GOOD, *(entry(f"src/f{n}") for n in range(4)))
    assert refused(data, tmp_path, BundleLimits(entries=5)).message == (
        "the bundle has more than 5 entries (the limit; at entry 'src/f3')")
    assert unpack_bundle(data, tmp_path / "ok", BundleLimits(entries=6)).is_file()


def test_a_compression_bomb(tmp_path: Path) -> None:
    zeros = archive(*GOOD, entry("src/zeros.bin", bytes(10 << 20)))  # 10 MiB in ~10 KiB
    assert len(zeros) * 200 < 10 << 20
    # Caught while gunzipping: the stream is longer than any allowed content could make it.
    err = refused(zeros, tmp_path)
    assert err.message.startswith("the bundle's archive expands to over 200× its compressed size")
    # Just over the ratio, within what tar's own headers could add: caught while written.
    size = 4096
    while len(zeros := archive(*GOOD, entry("src/zeros.bin", bytes(size)))) * 200 >= size:
        size += 4096
    err = refused(zeros, tmp_path)
    assert err.message == ("the bundle expands to over 200× its compressed size of "
                           f"{len(zeros)} bytes (the limit; reached at entry 'src/zeros.bin')")


def test_a_file_over_the_limit_and_a_bundle_over_the_total(tmp_path: Path) -> None:
    big = os.urandom(3000)
    assert refused(archive(*GOOD, entry("src/big.bin", big)), tmp_path,
                   BundleLimits(file_bytes=1000)).message == (
        "bundle entry 'src/big.bin' is over 1000 bytes (the limit for one file)")
    data = archive(*GOOD, entry("src/a.bin", big), entry("src/b.bin", big))
    assert refused(data, tmp_path, BundleLimits(total_bytes=5000)).message == (
        "the bundle's files are over 5000 bytes in total (the limit; reached at entry 'src/b.bin')")


def test_sizes_in_headers_are_not_trusted(tmp_path: Path) -> None:
    # A sparse member: its header says 1 GiB, 10 bytes are stored; it would unpack to 1 GiB.
    sparse = entry("src/sparse", b"0123456789",
                   pax={"GNU.sparse.map": "0,10", "GNU.sparse.realsize": str(1 << 30)})
    assert refused(archive(*GOOD, sparse), tmp_path).message == (
        "bundle entry 'src/sparse' is a sparse file: bundles hold regular files and folders only")
    # A pax header that says 10 bytes before 3000 bytes of data: the rest is not a tar entry.
    lying = entry("src/lying", os.urandom(3000), pax={"size": "10"})
    err = refused(archive(*GOOD, lying), tmp_path)
    assert err.message.startswith("the bundle's tar archive is damaged after 3 entries (data that "
                                  "is no tar entry at byte ")


def test_archives_that_are_not_whole(tmp_path: Path) -> None:
    data = pack(tmp_path / "src")
    assert refused(data[: len(data) // 2], tmp_path).message == (
        f"the bundle's archive is truncated ({len(data) // 2} bytes, the gzip stream does not end)")
    assert refused(b"PK\x03\x04 a zip file", tmp_path).message.startswith(
        "the bundle is not a gzip-compressed tar archive (Not a gzipped file")
    corrupt = bytearray(data)
    corrupt[-8] ^= 0xFF  # the gzip trailer's CRC
    assert refused(bytes(corrupt), tmp_path).message.startswith(
        "the bundle is not a gzip-compressed tar archive (CRC check failed")
    assert refused(gzip.compress(b"hello " * 200), tmp_path).message.startswith(
        "the bundle's tar archive is damaged after 0 entries (")
    tar = gzip.decompress(archive(*GOOD))
    assert refused(gzip.compress(tar[:2048]), tmp_path).message == (
        "the bundle's tar archive is truncated after 2 entries (no end-of-archive blocks)")


def test_a_bundle_without_a_manifest(tmp_path: Path) -> None:
    assert refused(archive(entry("src/demo.bpf.c")), tmp_path).message == (
        "the bundle has no manifest at its root")


def test_destination_must_be_empty_and_stays_so(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(BundleError):
        unpack_bundle(archive(*GOOD, entry("../x")), dest)
    assert dest.is_dir() and not any(dest.iterdir())  # it existed: it stays, empty
    (dest / "old").write_text("")
    with pytest.raises(BundleError) as caught:
        unpack_bundle(archive(*GOOD), dest)
    assert caught.value.message == f"cannot unpack a bundle into {dest}: it is not an empty folder"
    assert sorted(p.name for p in dest.iterdir()) == ["old"]


def test_dot_entries_and_modes(tmp_path: Path) -> None:
    data = archive(entry(".", kind=tarfile.DIRTYPE), entry("./manifest.yaml", MANIFEST.encode()),
                   entry("./src/x.h", b"y"))
    dest = tmp_path / "dest"
    assert unpack_bundle(data, dest) == dest / "manifest.yaml"
    assert files_under(dest) == {"manifest.yaml": MANIFEST.encode(), "src/x.h": b"y"}
    assert (dest / "src" / "x.h").stat().st_mode & 0o777 == 0o644
    assert (dest / "src").stat().st_mode & 0o777 == 0o755
    shutil.rmtree(dest)
