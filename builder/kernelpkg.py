"""A Debian kernel package (linux-image-*.deb) read for the catalog: release, arch, config,
the boot image, and the BTF inside it.

A kernel package carries no BTF file: its BTF is the ``.BTF`` section of the vmlinux ELF
compressed inside ``boot/vmlinuz-<release>`` (a bzImage: boot code, then the compressed
payload, found by its compression magic). That is how ../shared/kernels/ was made.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import os
import shutil
import subprocess
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from loader.errors import BpfDepotError
from loader.kernel.btf import Btf, BtfFormatError
from loader.kernel.catalog import uname_arch

_ELF = b"\x7fELF"
# Compression magics the kernel's boot decompressors know (arch/x86/boot/compressed/Makefile).
_MAGICS = (("gzip", b"\x1f\x8b\x08"), ("xz", b"\xfd7zXZ\x00"), ("bzip2", b"BZh"),
           ("lzma", b"\x5d\x00\x00\x00"), ("zstd", b"\x28\xb5\x2f\xfd"), ("lz4", b"\x02\x21\x4c\x18"))
_PROBE_BYTES = 256 * 1024  # compressed bytes tried at a candidate offset before committing to it
_MAX_MEMBER = 256 << 20  # bytes of one boot/ file read into memory (Debian's vmlinuz: 8–14 MB)
_LZ4_MAX_BLOCK = (8 << 20) + (64 << 10)  # LZ4_compressBound(8 MiB), rounded up: a bigger one is no block


def check_btf(data: bytes, what: str) -> None:
    """Refuse ``data`` unless it parses as raw BTF, naming ``what`` it came from."""
    try:
        Btf.parse(data)
    except BtfFormatError as exc:
        raise BtfFormatError(f"{what} is not raw BTF: {exc.message.removeprefix('BTF: ')}",
                             hint="pass a raw BTF such as /sys/kernel/btf/vmlinux or "
                                  "../shared/kernels/6.1.0-50-amd64.btf") from None


def _run(argv: list[str], what: str, **kwargs: object) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise BpfDepotError(f"{what} needs the {argv[0]} command", hint="apt-get install dpkg")
    proc = subprocess.run(argv, capture_output=True, **kwargs)
    if proc.returncode != 0:
        raise BpfDepotError(f"{what} failed: {' '.join(argv)}",
                            detail=proc.stderr.decode(errors="replace"),
                            hint="is it a Debian package (.deb)?")
    return proc


def _package_files(deb: Path) -> dict[str, bytes]:
    """boot/vmlinuz-*, boot/vmlinux-* and boot/config-* of a .deb, by their path.

    dpkg-deb writes the data archive in directory order and Debian's kernel packages start
    with ./boot/: once an image is in hand and the archive has moved past boot/, the rest
    (the modules, 80–95% of the bytes) is not decompressed at all."""
    what = f"reading {deb}"
    if shutil.which("dpkg-deb") is None:
        raise BpfDepotError(f"{what} needs the dpkg-deb command", hint="apt-get install dpkg")
    wanted: dict[str, bytes] = {}
    past_boot = False
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if not name.startswith("boot/") and name not in ("", ".", "boot"):
                        if any(n.startswith(("boot/vmlinuz-", "boot/vmlinux-")) for n in wanted):
                            past_boot = True
                            break
                        continue
                    if member.isfile() and name.startswith(("boot/vmlinuz-", "boot/vmlinux-",
                                                            "boot/config-")):
                        if member.size > _MAX_MEMBER:
                            raise BpfDepotError(
                                f"{what}: {name} is {member.size / 1e6:.0f} MB, more than any "
                                f"kernel image ({_MAX_MEMBER >> 20} MiB)", hint="is it a kernel package?")
                        f = tar.extractfile(member)
                        assert f is not None
                        wanted[name] = f.read()
            if past_boot:
                proc.kill()  # the modules are not needed
            else:
                proc.stdout.read()  # the archive's end padding, so dpkg-deb never blocks on a full pipe
        except tarfile.TarError as exc:
            proc.kill()
            raise BpfDepotError(f"{what}: bad data archive ({exc})",
                                hint="is it a Debian package (.deb)?") from None
        except BpfDepotError:
            proc.kill()
            raise
        err = b"" if past_boot or proc.stderr is None else proc.stderr.read()
    if proc.returncode != 0 and not past_boot:
        raise BpfDepotError(f"{what} failed: dpkg-deb --fsys-tarfile {deb}",
                            detail=err.decode(errors="replace"), hint="is it a Debian package (.deb)?")
    return wanted


def _decompress(kind: str, data: bytes, limit: int | None) -> bytes:
    """Decompress one stream at the start of ``data``, ignoring what follows it.

    With ``limit``, only that many input bytes are fed (a cheap test of a candidate offset);
    raises on anything that is not such a stream. Unknown tool → LookupError."""
    chunk = data if limit is None else data[:limit]
    match kind:
        case "gzip":
            return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(chunk)
        case "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(chunk)
        case "lzma":
            # the 4-byte dictionary size of a false match can be up to 4 GiB: cap what it may use
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE, memlimit=1 << 29).decompress(chunk)
        case "bzip2":
            return bz2.BZ2Decompressor().decompress(chunk)
        case "zstd":
            try:
                import zstandard  # type: ignore[import-not-found]
            except ImportError:
                pass
            else:
                return zstandard.ZstdDecompressor().decompressobj().decompress(chunk)
            return _decompress_tool("zstd", chunk)
        case "lz4":
            return _decompress_tool("lz4", chunk)
    raise AssertionError(kind)  # pragma: no cover


def _decompress_tool(tool: str, chunk: bytes) -> bytes:
    if shutil.which(tool) is None:
        raise LookupError(tool)
    # The payload is followed by other bytes (its size, a signature), which the tools report
    # as an error after writing the stream: keep the output, judge it by its ELF header.
    proc = subprocess.run([tool, "-d", "-c", "-q"], input=chunk, capture_output=True)
    return proc.stdout


def vmlinux_from_image(image: bytes, what: str) -> bytes:
    """The vmlinux ELF inside a compressed kernel image (or the image itself if it is one)."""
    if image.startswith(_ELF):
        return image
    candidates = sorted((off, kind) for kind, magic in _MAGICS
                        for off in _find_all(image, magic))
    missing: set[str] = set()
    for off, kind in candidates:
        try:
            limit = _PROBE_BYTES
            if kind == "lz4":
                # the kernel's lz4 is the legacy frame: 8 MiB blocks, each decoded only whole,
                # so the probe takes the first block (its compressed size follows the magic)
                block = int.from_bytes(image[off + 4:off + 8], "little")
                if block > _LZ4_MAX_BLOCK:
                    continue
                limit = max(limit, 8 + block)
            head = _decompress(kind, image[off:], limit)
            if not head.startswith(_ELF):
                continue
            elf = _decompress(kind, image[off:], None)
        except LookupError as exc:
            missing.add(str(exc.args[0]))
            continue
        except Exception:  # noqa: BLE001 - any decoder's complaint means "no stream starts here"
            continue
        if elf.startswith(_ELF):
            return elf
    if missing:
        tools = " and ".join(sorted(missing))
        raise BpfDepotError(f"{what} may be {tools}-compressed, but {tools} is not installed",
                            hint=f"apt-get install {' '.join(sorted(missing))}"
                                 + (" (or pip install zstandard)" if "zstd" in missing else ""))
    raise BpfDepotError(
        f"{what}: no compressed ELF found (tried {len(candidates)} offsets with gzip, xz, bzip2, "
        "lzma, zstd and lz4 magics)",
        hint="only kernel images whose payload is a vmlinux ELF (x86 bzImage) are understood; "
             "pass the kernel's raw BTF with --btf instead")


def _find_all(data: bytes, magic: bytes) -> list[int]:
    found, at = [], data.find(magic)
    while at >= 0:
        found.append(at)
        at = data.find(magic, at + 1)
    return found


def btf_of_vmlinux(elf: bytes, what: str, config: str | None) -> bytes:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        section = ELFFile(io.BytesIO(elf)).get_section_by_name(".BTF")
        data = section.data() if section is not None else None
    except (ELFError, ValueError, OSError) as exc:
        raise BpfDepotError(f"{what}: the decompressed vmlinux is not a readable ELF ({exc})") from None
    if data is None:
        why = (" (its config has no CONFIG_DEBUG_INFO_BTF=y)"
               if config is not None and "CONFIG_DEBUG_INFO_BTF=y" not in config else "")
        raise BpfDepotError(f"{what} has no .BTF section: the kernel was built without BTF{why}",
                            hint="CO-RE needs CONFIG_DEBUG_INFO_BTF=y; use a kernel package built "
                                 "with it, or give a BTF made with pahole via --btf")
    check_btf(data, f".BTF section of {what}")
    return data


@dataclass(frozen=True, slots=True, kw_only=True)
class PackageKernel:
    """A kernel read out of its package, not stored yet (reading is the slow, parallel part)."""

    release: str
    arch: str            # as `uname -m` spells it
    btf: bytes
    config: str | None
    image: bytes         # boot/vmlinuz-<release>, as packaged
    package: str         # the .deb's file name, for the entry's source

    @property
    def btf_digest(self) -> str:
        return hashlib.sha256(self.btf).hexdigest()


def read_package(deb: Path) -> PackageKernel:
    """BTF from the vmlinuz of a linux-image-*.deb, config from boot/config-<release>, arch
    from the package's Architecture field."""
    if not deb.is_file():
        raise BpfDepotError(f"kernel package {deb} does not exist",
                            hint="apt-get download linux-image-<release> fetches one")
    arch = _run(["dpkg-deb", "--field", str(deb), "Architecture"], f"reading {deb}").stdout.decode().strip()
    files = _package_files(deb)
    images = sorted(n for n in files if n.startswith(("boot/vmlinuz-", "boot/vmlinux-")))
    if len(images) != 1:
        raise BpfDepotError(f"{deb} holds {len(images)} kernel images ({', '.join(images) or 'none'})",
                            hint="pass a linux-image-<release> package, which holds one boot/vmlinuz-<release>")
    image = images[0]
    release = image.split("-", 1)[1]
    raw_config = files.get(f"boot/config-{release}")
    config = raw_config.decode("utf-8", "replace") if raw_config is not None else None
    what = f"{image} in {deb.name}"
    btf = btf_of_vmlinux(vmlinux_from_image(files[image], what), what, config)
    return PackageKernel(release=release, arch=uname_arch(arch or os.uname().machine), btf=btf,
                         config=config, image=files[image], package=deb.name)
