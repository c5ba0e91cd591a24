"""Load-testing BPF objects on a target kernel booted in a throwaway QEMU VM.

The kernel is the vmlinuz of its Debian package (kept as a blob: ``KernelEntry.image``, set by
``bpfdepot kernels add --package``); the VM's PID 1 opens, loads and attaches each object with
a static libbpf loader and powers off. The way libbpf's CI and vmtest do it, without modules,
disks or a network:

    report = load_test(store, entry, [("tcp_connlat", obj_bytes)], cache_dir=settings.cache)
    report.verdicts["tcp_connlat"].ok          # False → .stage, .error, .log_tail say why

    run.py     QEMU (TCG) with a timeout, the serial console parsed into verdicts
    image.py   the static loader, the base initramfs, the per-kernel image cached in the store
    loadtest.c the loader inside the VM

Errors: VmTestError (a BpfDepotError, exit 1) when there can be no verdicts — the kernel has no
image, QEMU is missing, the VM died or hung (its console's tail in ``detail``). A rejected
object is not an error: it is a verdict with ``ok=False``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from builder.vmtest.image import image_record, local_blob, object_file, objects_archive, vm_image
from builder.vmtest.run import (CONSOLE_TAIL_LINES, QEMU, QEMU_PACKAGE, ObjectVerdict, VmReport,
                                VmTestError, boot, parse_console, qemu_argv, tail)
from loader.artifacts.store import ArtifactStore
from loader.kernel.catalog import KernelEntry, uname_arch

__all__ = ["ObjectVerdict", "VmReport", "VmTestError", "can_vm_test", "load_test", "vm_image"]


def can_vm_test(entry: KernelEntry) -> str | None:
    """None when this machine can boot ``entry`` for a load test, else why not."""
    if entry.image is None:
        return "no boot image: added from BTF, not from its package"
    here = uname_arch(os.uname().machine)
    if entry.arch != here:
        return f"{entry.arch} is not this machine's arch ({here})"
    if entry.arch not in QEMU:
        return f"no QEMU set-up is known for {entry.arch}"
    if shutil.which(QEMU[entry.arch][0]) is None:
        return f"{QEMU[entry.arch][0]} is not installed (apt-get install {QEMU_PACKAGE[entry.arch]})"
    return None


def load_test(store: ArtifactStore, entry: KernelEntry, objects: list[tuple[str, bytes]], *,
              cache_dir: Path, timeout_s: float = 60) -> VmReport:
    """Boot ``entry`` once, load and attach every object in it, and return a verdict per name.

    The VM image comes from the store (built on first use, vm_image); the objects travel as a
    second cpio archive in a temp file removed afterwards."""
    names = [name for name, _ in objects]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise VmTestError(f"objects named twice for one load test: {', '.join(dupes)}",
                          hint="give each object a distinct name")
    why_not = can_vm_test(entry)
    if why_not is not None:
        hint = (f"bpfdepot kernels add --package linux-image-{entry.release}.deb keeps its image "
                f"(apt-get download linux-image-{entry.release} fetches the package)"
                if entry.image is None else "load-test it on a machine of its arch with QEMU")
        raise VmTestError(f"cannot load-test on kernel {entry}: {why_not}", hint=hint)
    record = image_record(store, entry, cache_dir)
    vmlinuz = local_blob(store, record.kernel, cache_dir)
    base = local_blob(store, record.initramfs, cache_dir)
    what = f"the VM of kernel {entry}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="vmrun-") as tmp:
        initrd = Path(tmp) / "initrd.img"
        with open(initrd, "wb") as f:
            f.write(base.read_bytes())
            f.write(objects_archive([data for _, data in objects]))
        console, seconds = boot(qemu_argv(entry.arch, vmlinuz, initrd), timeout_s=timeout_s, what=what)
    files = {object_file(i): name for i, name in enumerate(names)}
    verdicts = parse_console(console, files, what)
    return VmReport(release=entry.release, seconds=seconds, verdicts=verdicts,
                    console_tail=tail(console, CONSOLE_TAIL_LINES))
