"""Load tests in QEMU: the 6.1 and 6.12 reference kernels, booted from their Debian packages."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from builder.vmtest import VmReport, VmTestError, can_vm_test, load_test, vm_image
from builder.vmtest.image import image_record, image_ref, object_file
from builder.vmtest.run import boot, parse_console, qemu_argv
from loader.artifacts.store import LocalStore, digest_of
from loader.kernel.catalog import KernelEntry

BOTH = ("6.1", "6.12")


@pytest.mark.parametrize("version", BOTH)
def test_tracepoint_program_passes_attached(reports: dict[str, VmReport], version: str) -> None:
    v = reports[version].verdicts["getpid"]
    assert (v.ok, v.stage, v.error, v.log_tail) == (True, "", "", "")
    assert (v.attached, v.skipped) == (("count_getpid",), ())
    assert reports[version].release == {"6.1": "6.1.0-50-amd64", "6.12": "6.12.100+deb12-amd64"}[version]


@pytest.mark.parametrize("version", BOTH)
def test_unbounded_access_is_refused_with_the_verifiers_words(reports: dict[str, VmReport],
                                                              version: str) -> None:
    v = reports[version].verdicts["unbounded"]
    assert (v.ok, v.stage, v.attached) == (False, "load", ())
    assert v.error == "load err=-13 (Permission denied): R0 unbounded memory access, make sure to " \
                      "bounds check any such access"
    lines = v.log_tail.splitlines()
    assert "R0 unbounded memory access, make sure to bounds check any such access" in lines
    assert any(line.startswith("processed ") and " insns " in line for line in lines)
    assert lines[-1] == "libbpf: failed to load object 'unbounded'"  # the caller's name, not the VM's file


@pytest.mark.parametrize("version", BOTH)
def test_the_end_of_a_long_verifier_log_is_kept(reports: dict[str, VmReport], version: str) -> None:
    # ~100 KiB of log: the verdict is in its last lines, which must survive the trip
    v = reports[version].verdicts["biglog"]
    assert (v.ok, v.stage) == (False, "load")
    assert v.error == "load err=-13 (Permission denied): R0 unbounded memory access, make sure to " \
                      "bounds check any such access"
    assert len(v.log_tail.splitlines()) == 20


def test_iter_num_kfuncs_pass_on_6_12(reports: dict[str, VmReport]) -> None:
    v = reports["6.12"].verdicts["iter_num"]
    assert (v.ok, v.attached, v.skipped) == (True, ("sum_getppid",), ())


def test_iter_num_kfuncs_are_refused_on_6_1_by_libbpf(reports: dict[str, VmReport]) -> None:
    v = reports["6.1"].verdicts["iter_num"]
    assert (v.ok, v.stage) == (False, "load")
    # libbpf resolves externs before any program reaches the verifier, and names the first missing
    assert v.error.startswith("extern (func ksym) 'bpf_iter_num_")
    assert v.error.endswith("': not found in kernel or module BTFs")
    assert f"libbpf: {v.error}" in v.log_tail.splitlines()


@pytest.mark.parametrize("version", BOTH)
def test_several_objects_in_one_boot(reports: dict[str, VmReport], objects: dict[str, bytes],
                                     version: str) -> None:
    report = reports[version]
    assert list(report.verdicts) == [*objects, "garbage"]  # every object, in the given order
    assert [v.name for v in report.verdicts.values()] == list(report.verdicts)
    mixed = report.verdicts["mixed"]
    # the raw tracepoint attaches; the socket filter has no socket in the VM: loaded only
    assert (mixed.ok, mixed.attached, mixed.skipped) == (True, ("on_switch",), ("keep_all",))
    assert "reboot: Power down" in report.console_tail
    assert report.seconds > 0


@pytest.mark.parametrize("version", BOTH)
def test_garbage_object_fails_at_open(reports: dict[str, VmReport], version: str) -> None:
    v = reports[version].verdicts["garbage"]
    assert (v.ok, v.stage, v.attached, v.skipped) == (False, "open", (), ())
    assert v.error == "open err=-4001 (BPF object format invalid): elf: 'garbage' is not a proper ELF object"


def _blobs(store: LocalStore) -> set[Path]:
    return set((store.root / "blobs").rglob("*"))


def test_vm_image_is_built_once_per_kernel_and_kept_in_the_store(
        reports: dict[str, VmReport], vm_store: LocalStore, kernels: dict[str, KernelEntry],
        objects: dict[str, bytes], vm_cache: Path, tmp_path: Path) -> None:
    entry = kernels["6.1"]
    ref = image_ref(entry)
    assert vm_store.list_refs("vmimages") == sorted(image_ref(e) for e in kernels.values())
    record_digest = vm_store.get_ref(ref)
    record = image_record(vm_store, entry, vm_cache)
    assert record.kernel == entry.image and record.release == "6.1.0-50-amd64"
    # both kernels share one initramfs: it holds no kernel-specific file
    assert image_record(vm_store, kernels["6.12"], vm_cache).initramfs == record.initramfs
    vmlinuz, base = vm_image(vm_store, entry, vm_cache)
    stamps = (vmlinuz.stat().st_mtime_ns, base.stat().st_mtime_ns)
    loaders = sorted((vm_cache / "vmtest").iterdir())
    blobs = _blobs(vm_store)

    again = load_test(vm_store, entry, [("getpid", objects["getpid"])], cache_dir=vm_cache)
    assert again.verdicts["getpid"].ok
    assert vm_store.get_ref(ref) == record_digest
    assert _blobs(vm_store) == blobs  # nothing was stored again
    assert (vmlinuz.stat().st_mtime_ns, base.stat().st_mtime_ns) == stamps
    assert sorted((vm_cache / "vmtest").iterdir()) == loaders

    # another machine (a fresh cache) with the same store builds nothing: no loader compiled
    fresh = tmp_path / "fresh-cache"
    vmlinuz2, base2 = vm_image(vm_store, entry, fresh)
    assert not (fresh / "vmtest").exists()
    assert (vmlinuz2.read_bytes(), base2.read_bytes()) == (vmlinuz.read_bytes(), base.read_bytes())
    assert _blobs(vm_store) == blobs and vm_store.get_ref(ref) == record_digest
    assert not list(vm_cache.glob("vmrun-*"))  # each run's initramfs with its objects is gone


def test_kernel_added_from_btf_cannot_be_booted(kernels: dict[str, KernelEntry], vm_store: LocalStore,
                                                tmp_path: Path) -> None:
    from_btf = dataclasses.replace(kernels["6.1"], image=None, source="btf file 6.1.0-50-amd64.btf")
    assert can_vm_test(from_btf) == "no boot image: added from BTF, not from its package"
    with pytest.raises(VmTestError) as exc:
        load_test(vm_store, from_btf, [("x", b"")], cache_dir=tmp_path)
    assert exc.value.message == ("cannot load-test on kernel 6.1.0-50-amd64/x86_64: no boot image: "
                                 "added from BTF, not from its package")
    assert exc.value.hint.startswith("bpfdepot kernels add --package linux-image-6.1.0-50-amd64.deb")
    with pytest.raises(VmTestError, match="6.1.0-50-amd64/x86_64 has no boot image"):
        vm_image(vm_store, from_btf, tmp_path)


def test_other_arch_cannot_be_booted(kernels: dict[str, KernelEntry]) -> None:
    arm = dataclasses.replace(kernels["6.1"], arch="aarch64")
    assert can_vm_test(arm) == f"aarch64 is not this machine's arch ({os.uname().machine})"
    assert can_vm_test(kernels["6.1"]) is None


def test_duplicate_names_are_refused(kernels: dict[str, KernelEntry], vm_store: LocalStore,
                                     tmp_path: Path) -> None:
    with pytest.raises(VmTestError, match="objects named twice for one load test: a"):
        load_test(vm_store, kernels["6.1"], [("a", b""), ("b", b""), ("a", b"")], cache_dir=tmp_path)


def test_a_hung_vm_is_killed_at_the_timeout(kernels: dict[str, KernelEntry], vm_store: LocalStore,
                                            vm_cache: Path) -> None:
    vmlinuz, base = vm_image(vm_store, kernels["6.1"], vm_cache)
    # -S: QEMU starts with its CPU stopped, a VM that never gets anywhere
    argv = [*qemu_argv("x86_64", vmlinuz, base), "-S"]
    with pytest.raises(VmTestError) as exc:
        boot(argv, timeout_s=1, what="a stopped VM")
    assert exc.value.message == "a stopped VM gave no verdicts within 1 s; the VM was killed"


def test_a_vm_that_panics_gives_its_console(reports: dict[str, VmReport], kernels: dict[str, KernelEntry],
                                            vm_store: LocalStore, vm_cache: Path, tmp_path: Path) -> None:
    vmlinuz, _ = vm_image(vm_store, kernels["6.1"], vm_cache)
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"this is no initramfs\n" * 64)  # no /init: the kernel panics, QEMU exits 0
    console, _ = boot(qemu_argv("x86_64", vmlinuz, junk), timeout_s=60, what="a panicking VM")
    with pytest.raises(VmTestError) as exc:
        parse_console(console, {"000.o": "getpid"}, "a panicking VM")
    assert exc.value.message == ("a panicking VM: the VM never ran the loader "
                                 "(no BPFDEPOT-BEGIN on its console)")
    assert "Kernel panic" in exc.value.detail


def test_an_object_without_a_verdict_is_a_failure(reports: dict[str, VmReport]) -> None:
    # a real boot's console, cut after its next-to-last verdict: as if the loader died there
    report = reports["6.1"]
    names = list(report.verdicts)  # the VM's files are 000.o, 001.o, … in this order
    last, lost = object_file(len(names) - 2), object_file(len(names) - 1)
    files = {last: names[-2], lost: names[-1]}
    lines = report.console_tail.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith(f"BPFDEPOT-VERDICT {last} "))
    cut = "\n".join([f"BPFDEPOT-BEGIN {len(names)}", *lines[:end + 1]])
    verdicts = parse_console(cut, files, "a cut console")
    assert verdicts[names[-2]] == report.verdicts[names[-2]]
    gone = verdicts[names[-1]]
    assert (gone.ok, gone.stage, gone.attached) == (False, "load", ())
    assert gone.error == "no verdict: the loader died or was cut off before it (see the console tail)"
    # the same console, finished, with the verdict line lost: never a pass either
    done = parse_console(cut + "\nBPFDEPOT-END\n", files, "a console")
    assert done[names[-1]].error == "no verdict: the loader finished without it"


def test_an_image_from_another_loader_recipe_is_rebuilt(kernels: dict[str, KernelEntry],
                                                        vm_store: LocalStore, vm_cache: Path,
                                                        tmp_path: Path) -> None:
    # a store shared with a worker of another bpfdepot version: its image has an older loader
    store = LocalStore(tmp_path / "store")
    entry = kernels["6.12"]
    store.put_blob(vm_store.read_blob(entry.image))
    current = image_record(vm_store, entry, vm_cache)
    old = dataclasses.replace(current, recipe="sha256:" + "0" * 64, loader="sha256:" + "1" * 64)
    store.put_ref(image_ref(entry), store.put_blob(old.to_json()))
    assert image_record(store, entry, vm_cache) == current
    assert store.get_ref(image_ref(entry)) == digest_of(current.to_json())
