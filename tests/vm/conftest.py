"""VM load tests: real Debian kernel packages booted in QEMU (TCG), real clang-built objects.

No root needed, except to refresh apt's lists the first time a package is unknown. The two
reference kernels are downloaded once per machine (tests/vm/debian.py); the tests skip only
when the Debian archive cannot be reached.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builder.kernels import add_package
from builder.vmtest import VmReport, load_test
from loader.artifacts.store import LocalStore
from loader.kernel.catalog import KernelEntry
from tests.vm.debian import ArchiveUnreachable, cache_root, fetch_package

HERE = Path(__file__).resolve().parent
KERNELS = {"6.1": "linux-image-6.1.0-50-amd64", "6.12": "linux-image-6.12.100+deb12-amd64"}
GARBAGE = b"\x7fELF" + b"not an object" * 8


@pytest.fixture(scope="session")
def vm_store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    return LocalStore(tmp_path_factory.mktemp("vm-store"))


@pytest.fixture(scope="session")
def vm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vm-cache")


@pytest.fixture(scope="session")
def kernels(vm_store: LocalStore) -> dict[str, KernelEntry]:
    """Both reference kernels, added from their packages (so each entry keeps its vmlinuz)."""
    entries = {}
    for version, package in KERNELS.items():
        try:
            deb = fetch_package(package, cache_root(os.environ))
        except ArchiveUnreachable as exc:
            pytest.skip(str(exc))
        entries[version] = add_package(vm_store, deb)
    return entries


@pytest.fixture(scope="session")
def objects(tmp_path_factory: pytest.TempPathFactory, kernels: dict[str, KernelEntry],
            vm_store: LocalStore) -> dict[str, bytes]:
    """tests/vm/bpf/<name>.bpf.c compiled the libbpf way, by name, against the header of the
    newest kernel (the BTF its package gave): CO-RE relocates them for the older one."""
    out = tmp_path_factory.mktemp("vm-objects")
    btf = vm_store.blob_path(kernels["6.12"].btf_blob)
    header = subprocess.run(["bpftool", "btf", "dump", "file", str(btf), "format", "c"],
                            capture_output=True, check=True).stdout
    (out / "vmlinux.h").write_bytes(header)
    built = {}
    for source in sorted((HERE / "bpf").glob("*.bpf.c")):
        name = source.name.removesuffix(".bpf.c")
        obj = out / f"{name}.o"
        subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86",
                        f"-I{out}", "-c", str(source), "-o", str(obj)], check=True)
        built[name] = obj.read_bytes()
    return built


@pytest.fixture(scope="session")
def reports(vm_store: LocalStore, kernels: dict[str, KernelEntry], objects: dict[str, bytes],
            vm_cache: Path) -> dict[str, VmReport]:
    """One boot per kernel with every test object and a garbage one."""
    batch = [(name, data) for name, data in objects.items()] + [("garbage", GARBAGE)]
    return {version: load_test(vm_store, entry, batch, cache_dir=vm_cache)
            for version, entry in kernels.items()}
