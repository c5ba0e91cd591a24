"""``bpfdepot kernels …``: fill the kernel catalog (loader/kernel/catalog.py) and show it.

    bpfdepot kernels add --btf FILE [--config FILE] [--release R] [--arch A] [--no-node-btf]
    bpfdepot kernels add --package linux-image-….deb [--no-node-btf]
    bpfdepot kernels register            this node: release, arch, BTF, probed features
    bpfdepot kernels list [SELECTOR] [--json]

A kernel package carries no BTF file: its BTF is the ``.BTF`` section of the vmlinux ELF
compressed inside ``boot/vmlinuz-<release>`` (a bzImage: boot code, then the compressed
payload, found by its compression magic). That is how ../shared/kernels/ was made.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import lzma
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

from loader.kernel.btf import Btf, BtfFormatError
from loader.kernel.catalog import (KernelEntry, features_from_config, list_kernels, parse_selector,
                            put_kernel, select, uname_arch)
from loader.errors import BpfDepotError
from loader.kernel.probe import FEATURES, probe_features, running_kernel
from loader.model.settings import Settings
from loader.artifacts.store import ArtifactStore

_ELF = b"\x7fELF"
# Compression magics the kernel's boot decompressors know (arch/x86/boot/compressed/Makefile).
_MAGICS = (("gzip", b"\x1f\x8b\x08"), ("xz", b"\xfd7zXZ\x00"), ("bzip2", b"BZh"),
           ("lzma", b"\x5d\x00\x00\x00"), ("zstd", b"\x28\xb5\x2f\xfd"), ("lz4", b"\x02\x21\x4c\x18"))
_PROBE_BYTES = 256 * 1024  # compressed bytes tried at a candidate offset before committing to it


# ---------------------------------------------------------------- adding kernels

def _read_btf(data: bytes, what: str) -> None:
    try:
        Btf.parse(data)
    except BtfFormatError as exc:
        raise BtfFormatError(f"{what} is not raw BTF: {exc.message.removeprefix('BTF: ')}",
                             hint="pass a raw BTF such as /sys/kernel/btf/vmlinux or "
                                  "../shared/kernels/6.1.0-50-amd64.btf") from None


def _read_config(path: Path) -> str:
    if not path.is_file():
        raise BpfDepotError(f"kernel config {path} does not exist",
                            hint="pass the kernel's build config, e.g. /boot/config-$(uname -r)")
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8", "replace")
    if "CONFIG_" not in text:
        raise BpfDepotError(f"{path} holds no CONFIG_ lines: not a kernel config",
                            hint="pass /boot/config-<release> or /proc/config.gz of that kernel")
    return text


def _entry(store: ArtifactStore, *, btf: bytes, config: str | None, release: str, arch: str,
           btf_on_node: bool, source: str, image: bytes | None = None) -> KernelEntry:
    """Store the BTF, config and boot image blobs, then the entry pointing at them."""
    btf_blob = store.put_blob(btf)
    image_blob = store.put_blob(image) if image is not None else None
    config_blob = store.put_blob(config.encode()) if config is not None else None
    entry = KernelEntry(
        release=release, arch=arch, btf_digest=btf_blob.removeprefix("sha256:"),
        config_blob=config_blob,
        # without a config nothing is known: no feature is claimed either way (an empty map),
        # so `feature=` selectors skip the kernel until a config or a node's probe says more
        features=features_from_config(config, arch) if config is not None else {},
        features_from="config", btf_on_node=btf_on_node, source=source, image=image_blob)
    return put_kernel(store, entry)


def add_btf(store: ArtifactStore, btf: Path, *, config: Path | None, release: str | None,
            arch: str, btf_on_node: bool = True) -> KernelEntry:
    """A kernel given by its raw BTF (and config). The release defaults to the file stem
    (``6.1.0-50-amd64.btf`` → ``6.1.0-50-amd64``), since nodes match on `uname -r`, which the
    config's "Linux/x86 6.1.176" line does not give."""
    if not btf.is_file():
        raise BpfDepotError(f"kernel BTF {btf} does not exist",
                            hint="pass a raw BTF such as ../shared/kernels/6.1.0-50-amd64.btf")
    data = btf.read_bytes()
    _read_btf(data, str(btf))
    text = _read_config(config) if config is not None else None
    source = f"btf file {btf.name}" + (f", config {config.name}" if config is not None else "")
    return _entry(store, btf=data, config=text, release=release or btf.name.removesuffix(".btf"),
                  arch=uname_arch(arch), btf_on_node=btf_on_node, source=source)


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
    """boot/vmlinuz-*, boot/vmlinux-* and boot/config-* of a .deb, by their path."""
    what = f"reading {deb}"
    if shutil.which("dpkg-deb") is None:
        raise BpfDepotError(f"{what} needs the dpkg-deb command", hint="apt-get install dpkg")
    wanted: dict[str, bytes] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if member.isfile() and name.startswith(("boot/vmlinuz-", "boot/vmlinux-",
                                                            "boot/config-")):
                        f = tar.extractfile(member)
                        assert f is not None
                        wanted[name] = f.read()
            proc.stdout.read()  # the archive's end padding, so dpkg-deb never blocks on a full pipe
        except tarfile.TarError as exc:
            proc.kill()
            raise BpfDepotError(f"{what}: bad data archive ({exc})",
                                hint="is it a Debian package (.deb)?") from None
        err = proc.stderr.read() if proc.stderr else b""
    if proc.returncode != 0:
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
            head = _decompress(kind, image[off:], _PROBE_BYTES)
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
    _read_btf(data, f".BTF section of {what}")
    return data


def add_package(store: ArtifactStore, deb: Path, *, btf_on_node: bool = True) -> KernelEntry:
    """A kernel given by its Debian package (linux-image-*.deb): BTF from the vmlinuz, config
    from boot/config-<release>, arch from the package's Architecture field."""
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
    return _entry(store, btf=btf, config=config, release=release, arch=uname_arch(arch or os.uname().machine),
                  btf_on_node=btf_on_node, source=f"package {deb.name}", image=files[image])


def register_node(store: ArtifactStore, settings: Settings, *,
                  proc_config: Path = Path("/proc/config.gz"), boot: Path = Path("/boot")) -> KernelEntry:
    """This node as a catalog entry, with the features probed here (root the first time)."""
    kernel = running_kernel(settings.kernel_btf)
    probed = probe_features(kernel, settings.cache)
    btf = settings.kernel_btf.read_bytes()
    config = None
    if proc_config.is_file():
        config = gzip.decompress(proc_config.read_bytes()).decode("utf-8", "replace")
    elif (boot / f"config-{kernel.release}").is_file():
        config = (boot / f"config-{kernel.release}").read_text(errors="replace")
    btf_blob = store.put_blob(btf)
    if btf_blob != "sha256:" + kernel.btf_digest:
        raise BpfDepotError(f"{settings.kernel_btf} changed while it was read", hint="run it again")
    entry = KernelEntry(
        release=kernel.release, arch=kernel.arch, btf_digest=kernel.btf_digest,
        config_blob=store.put_blob(config.encode()) if config is not None else None,
        features={name: probed[name].ok for name in FEATURES if name in probed},
        features_from="probed", btf_on_node=True,
        source=f"registered by node {socket.gethostname()}")
    return put_kernel(store, entry)


# ---------------------------------------------------------------- the commands

def _features_text(entry: KernelEntry) -> str:
    if not entry.features:
        return "unknown (no config)"
    yes = [name for name in FEATURES if entry.features.get(name)]
    no = [name for name in FEATURES if name not in yes]
    if not no:
        return "all"
    # the usual kernel lacks a few features: name those, which is shorter than the yes-list
    return f"all but {','.join(no)}" if len(yes) > len(no) else ",".join(yes) or "none"


def format_table(entries: list[KernelEntry]) -> str:
    header = ("release", "arch", "btf digest", "from", "btf-on-node", "features", "source")
    rows = [header] + [(e.release, e.arch, e.btf_digest[:12], e.features_from,
                        "yes" if e.btf_on_node else "no", _features_text(e), e.source)
                       for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] + "\n"
                   for row in rows)


def cmd_kernels_add(args: argparse.Namespace, settings: Settings) -> int:
    store = args.store_factory(settings)
    if args.package:
        given = [flag for flag, value in (("--config", args.config), ("--release", args.release),
                                          ("--arch", args.arch)) if value is not None]
        if given:
            raise BpfDepotError(f"{', '.join(given)} cannot be used with --package",
                                hint="a package names its own release, arch and config")
        entry = add_package(store, Path(args.package), btf_on_node=not args.no_node_btf)
    else:
        entry = add_btf(store, Path(args.btf), config=Path(args.config) if args.config else None,
                        release=args.release, arch=args.arch or os.uname().machine,
                        btf_on_node=not args.no_node_btf)
    print(format_table([entry]), end="")
    return 0


def cmd_kernels_register(args: argparse.Namespace, settings: Settings) -> int:
    entry = register_node(args.store_factory(settings), settings)
    print(format_table([entry]), end="")
    return 0


def cmd_kernels_list(args: argparse.Namespace, settings: Settings) -> int:
    store = args.store_factory(settings)
    selector = parse_selector(args.selector)
    if not selector.terms and not list_kernels(store):
        print("the kernel catalog is empty; add kernels with `bpfdepot kernels add --btf FILE "
              "--config FILE`, `kernels add --package DEB` or `kernels register`", file=sys.stderr)
        entries: list[KernelEntry] = []
    else:
        entries = select(store, selector)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=1, sort_keys=True))
    else:
        print(format_table(entries), end="")
    return 0


def register_commands(sub: argparse._SubParsersAction,
                      store_factory: Callable[[Settings], ArtifactStore]) -> None:
    """Add ``kernels add|register|list`` to the ``bpfdepot`` parser."""
    kernels = sub.add_parser("kernels", help="the catalog of target kernels: add, register, list")
    ksub = kernels.add_subparsers(dest="kernels_command", required=True)

    add = ksub.add_parser("add", help="add a kernel from its raw BTF (+ config) or its Debian package")
    src = add.add_mutually_exclusive_group(required=True)
    src.add_argument("--btf", metavar="FILE", help="the kernel's raw BTF (as /sys/kernel/btf/vmlinux)")
    src.add_argument("--package", metavar="DEB", help="a linux-image-*.deb: BTF and config taken from it")
    add.add_argument("--config", metavar="FILE", help="the kernel's build config (features are derived from it)")
    add.add_argument("--release", help="its `uname -r` (default: the BTF file name without .btf)")
    add.add_argument("--arch", help="its `uname -m` or Debian arch (default: this machine's)")
    add.add_argument("--no-node-btf", action="store_true",
                     help="its nodes have no /sys/kernel/btf/vmlinux: artifacts carry a minimal BTF")
    add.set_defaults(func=cmd_kernels_add, store_factory=store_factory)

    reg = ksub.add_parser("register", help="add this node's kernel with its probed features (root)")
    reg.set_defaults(func=cmd_kernels_register, store_factory=store_factory)

    lst = ksub.add_parser("list", help="the kernels in the catalog")
    lst.add_argument("selector", nargs="?", default="all",
                     help="all (default), a release glob such as '6.1.*', or terms "
                          "release=GLOB,arch=NAME,feature=NAME,digest=PREFIX")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_kernels_list, store_factory=store_factory)

