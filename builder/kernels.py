"""``bpfdepot kernels …``: fill the kernel catalog (loader/kernel/catalog.py) and show it.

    bpfdepot kernels add --btf FILE [--config FILE] [--release R] [--arch A] [--no-node-btf]
    bpfdepot kernels add --package DEB|NAME|'GLOB' … [--from-index] [--flavour cloud,rt]
                         [--versions '>=6.1,<6.13'] [--limit N] [--dry-run] [--no-node-btf]
    bpfdepot kernels register            this node: release, arch, BTF, probed features
    bpfdepot kernels list [SELECTOR] [--json]

Packages are read by builder/kernelpkg.py, many at once by builder/kernelbatch.py, and found
and downloaded by builder/debian.py.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder.debian import DEFAULT_MAX_BYTES
# read_package and the image helpers lived here; kept importable from here too
from builder.kernelpkg import (PackageKernel, btf_of_vmlinux, check_btf,  # noqa: F401
                               read_package, vmlinux_from_image)
from loader.kernel.catalog import (FLAVOURS, KernelEntry, features_from_config, list_kernels,
                                   parse_selector, put_kernel, select, uname_arch)
from loader.errors import BpfDepotError
from loader.kernel.probe import FEATURES, probe_features, running_kernel
from loader.model.settings import Settings
from loader.artifacts.store import ArtifactStore


# ---------------------------------------------------------------- adding kernels

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


@dataclass(frozen=True, slots=True)
class KernelBlobs:
    """The blob digests of a kernel's BTF, config and boot image, once stored."""

    btf: str
    config: str | None
    image: str | None


def put_blobs(store: ArtifactStore, *, btf: bytes, config: str | None,
              image: bytes | None) -> KernelBlobs:
    """Store a kernel's blobs (content-addressed: safe from several threads at once)."""
    return KernelBlobs(btf=store.put_blob(btf),
                       config=store.put_blob(config.encode()) if config is not None else None,
                       image=store.put_blob(image) if image is not None else None)


def _entry(store: ArtifactStore, *, btf: bytes, config: str | None, release: str, arch: str,
           btf_on_node: bool, source: str, image: bytes | None = None,
           blobs: KernelBlobs | None = None) -> KernelEntry:
    """Store the BTF, config and boot image blobs (unless ``blobs`` says they are stored),
    then the entry pointing at them."""
    blobs = blobs or put_blobs(store, btf=btf, config=config, image=image)
    entry = KernelEntry(
        release=release, arch=arch, btf_digest=blobs.btf.removeprefix("sha256:"),
        config_blob=blobs.config,
        # without a config nothing is known: no feature is claimed either way (an empty map),
        # so `feature=` selectors skip the kernel until a config or a node's probe says more
        features=features_from_config(config, arch) if config is not None else {},
        features_from="config", btf_on_node=btf_on_node, source=source, image=blobs.image)
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
    check_btf(data, str(btf))
    text = _read_config(config) if config is not None else None
    source = f"btf file {btf.name}" + (f", config {config.name}" if config is not None else "")
    return _entry(store, btf=data, config=text, release=release or btf.name.removesuffix(".btf"),
                  arch=uname_arch(arch), btf_on_node=btf_on_node, source=source)


def store_package(store: ArtifactStore, kernel: PackageKernel, *, btf_on_node: bool = True,
                  blobs: KernelBlobs | None = None) -> KernelEntry:
    """The catalog entry of a read package; ``blobs`` when its blobs are already stored."""
    return _entry(store, btf=kernel.btf, config=kernel.config, release=kernel.release,
                  arch=kernel.arch, btf_on_node=btf_on_node, source=f"package {kernel.package}",
                  image=kernel.image, blobs=blobs)


def add_package(store: ArtifactStore, deb: Path, *, btf_on_node: bool = True) -> KernelEntry:
    """A kernel given by its Debian package (linux-image-*.deb)."""
    return store_package(store, read_package(deb), btf_on_node=btf_on_node)


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
    if not (args.btf or args.package or args.from_index):
        args.parser.error("one of the arguments --btf --package is required (or --from-index)")
    store = args.store_factory(settings)
    if args.package or args.from_index:
        given = [flag for flag, value in (("--config", args.config), ("--release", args.release),
                                          ("--arch", args.arch), ("--btf", args.btf)) if value is not None]
        if given:
            raise BpfDepotError(f"{', '.join(given)} cannot be used with --package",
                                hint="a package names its own release, arch and config")
        from builder.kernelbatch import cmd_add_packages  # it imports this module
        return cmd_add_packages(args, settings, store)
    narrowing = [flag for flag, value in (("--flavour", args.flavour), ("--versions", args.versions),
                                          ("--limit", args.limit)) if value is not None]
    if narrowing or args.dry_run:
        raise BpfDepotError(f"{', '.join(narrowing) or '--dry-run'} only applies to --package and --from-index",
                            hint="they narrow the kernel packages taken from the apt index")
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

    add = ksub.add_parser(
        "add", help="add kernels from a raw BTF (+ config) or from Debian kernel packages",
        description="Add a kernel from its raw BTF (--btf), or many from Debian linux-image "
                    "packages: local .deb files, package names, globs over the apt index, or the "
                    "whole index (--from-index). Packages are downloaded once into a cache "
                    "(<BPFDEPOT_HOME>/cache/debs) with apt-get download, checked against the "
                    "index's SHA256, and read in parallel; kernels whose BTF is already in the "
                    "catalog are reported and skipped. Exit 1 if any package failed (the others "
                    "are kept).")
    src = add.add_mutually_exclusive_group()
    src.add_argument("--btf", metavar="FILE", help="the kernel's raw BTF (as /sys/kernel/btf/vmlinux)")
    src.add_argument("--package", metavar="PKG", nargs="+",
                     help="linux-image packages: ./FILE.deb (a value with '/' or ending in .deb), "
                          "a name from the apt index (linux-image-6.1.0-50-cloud-amd64; a meta "
                          "package such as linux-image-cloud-amd64 means the image it depends on), "
                          "or a quoted glob ('linux-image-6.1.*-cloud-amd64')")
    add.add_argument("--from-index", action="store_true",
                     help="every versioned linux-image the configured apt sources offer for this "
                          "machine's arch (no -dbg, -unsigned or meta packages)")
    add.add_argument("--flavour", metavar="LIST",
                     help=f"globs and --from-index: only these flavours, comma-separated "
                          f"({', '.join(FLAVOURS)}; generic is linux-image-<abi>-<arch>)")
    add.add_argument("--versions", metavar="RANGE",
                     help="globs and --from-index: a release range such as '>=6.1,<6.13' or "
                          "'>=6.1.0-50' (numbers compared in natural order; '<=6.1' includes 6.1.x)")
    add.add_argument("--limit", metavar="N", type=int,
                     help="globs and --from-index: only the newest N images (each)")
    add.add_argument("--dry-run", "--list-only", action="store_true", dest="dry_run",
                     help="print the packages that would be added, and what is cached; change nothing")
    add.add_argument("--deb-cache", metavar="DIR",
                     help="where downloaded .debs are kept and reused (default <BPFDEPOT_HOME>/cache/debs)")
    add.add_argument("--max-size", metavar="MB", type=int, default=DEFAULT_MAX_BYTES // 1_000_000,
                     help="refuse packages bigger than this (default %(default)s MB)")
    add.add_argument("--jobs", metavar="N", type=int,
                     help="packages read (decompressed) at once (default: the CPU count, at most 4)")
    add.add_argument("--config", metavar="FILE", help="with --btf: the kernel's build config (features are derived from it)")
    add.add_argument("--release", help="with --btf: its `uname -r` (default: the BTF file name without .btf)")
    add.add_argument("--arch", help="with --btf: its `uname -m` or Debian arch (default: this machine's)")
    add.add_argument("--no-node-btf", action="store_true",
                     help="its nodes have no /sys/kernel/btf/vmlinux: artifacts carry a minimal BTF")
    add.set_defaults(func=cmd_kernels_add, store_factory=store_factory, parser=add)

    reg = ksub.add_parser("register", help="add this node's kernel with its probed features (root)")
    reg.set_defaults(func=cmd_kernels_register, store_factory=store_factory)

    lst = ksub.add_parser("list", help="the kernels in the catalog")
    lst.add_argument("selector", nargs="?", default="all",
                     help="all (default), a release glob such as '6.1.*', or terms "
                          "release=GLOB,arch=NAME,feature=NAME,digest=PREFIX,flavour=cloud|rt|generic,"
                          "version>=6.1,version<6.13")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_kernels_list, store_factory=store_factory)

