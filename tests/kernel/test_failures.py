"""Bad input in the kernel: clear errors, the right exit code, nothing left attached."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from builder.compile import Target, build_program
from builder.toolchain import find_toolchain
from loader.errors import LoadError
from loader.kernel.probe import running_kernel
from loader.libbpf.core import BpfObject
from loader.model.manifest import load_bundle
from loader.session import ensure_filesystems
from loader.artifacts.store import LocalStore
from tests.kernel.conftest import ROOT, bpfdepot, link_prog_ids, prog_names

BUNDLES = ROOT / "tests" / "kernel" / "bundles"


def _build(home: Path, bundle: str | Path) -> Path:
    manifest = load_bundle(BUNDLES / bundle)
    store = LocalStore(home)
    kernel = running_kernel()
    built = build_program(store, manifest, manifest.kernel_programs[0],
                          Target(identity=kernel, btf=Path("/sys/kernel/btf/vmlinux")),
                          find_toolchain(home / "cache"), home / "cache")
    return store.blob_path(built.meta.digest)


def _prog_ids(name: str) -> set[int]:
    import json
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True)
    return {p["id"] for p in json.loads(out.stdout) if p.get("name") == name}


def test_failed_attach_detaches_the_programs_before_it(home: Path) -> None:
    ensure_filesystems(need_tracefs=True)
    obj = BpfObject(_build(home, "rollback"), label="rollback")
    try:
        obj.load()
        first = _prog_ids("rbk_first")
        assert first, "rbk_first should be loaded"
        with pytest.raises(LoadError) as caught:
            obj.attach([("rbk_first", None), ("rbk_second", None)])
        assert "cannot attach program 'rbk_second' of 'rollback' (2 of 2)" in caught.value.message
        # still loaded (the object is open) but no longer attached: its link is gone
        assert not first & link_prog_ids()
    finally:
        obj.close()
    assert not {"rbk_first", "rbk_second"} & prog_names()


def test_run_of_a_bundle_that_cannot_attach_exits_5(home: Path) -> None:
    done = bpfdepot(home, "run", str(BUNDLES / "rollback"), "--duration", "1")
    assert done.returncode == 5, done.stderr
    assert "cannot attach program 'rbk_second'" in done.stderr
    assert "hint:" in done.stderr
    assert not {"rbk_first", "rbk_second"} & prog_names()


def test_verifier_rejection_shows_the_verifiers_reason(home: Path) -> None:
    done = bpfdepot(home, "run", str(BUNDLES / "verifier_reject"), "--duration", "1")
    assert done.returncode == 5, done.stderr
    assert "the kernel rejected program 'vrf_reject' of 'verifier_reject'" in done.stderr
    assert "invalid mem access 'map_value_or_null'" in done.stderr
    assert "Traceback" not in done.stderr
    assert "vrf_reject" not in prog_names()


def test_kprobe_program_is_refused_before_loading(home: Path) -> None:
    features = bpfdepot(home, "kernel", "--json")
    if '"kprobe": {\n   "ok": true' in features.stdout:
        pytest.skip("this kernel has kprobes")
    done = bpfdepot(home, "run", str(BUNDLES / "kprobe_only"), "--duration", "1")
    assert done.returncode == 4, done.stderr
    assert "'kprobe_only' needs kprobe (kpo_nanosleep)" in done.stderr
    assert "kpo_nanosleep" not in prog_names()


def test_artifact_for_another_arch_is_refused(home: Path) -> None:
    built = bpfdepot(home, "build", "bpf/tcp_connlat", "--kernel-btf", "/sys/kernel/btf/vmlinux",
                     "--arch", "aarch64")
    assert built.returncode == 0, built.stderr
    meta = built.stdout.split()[-1]
    done = bpfdepot(home, "run", meta, "--duration", "1")
    assert done.returncode == 4, done.stderr
    assert "is built for aarch64, this node is x86_64" in done.stderr


def test_without_privileges_nothing_loads(home: Path) -> None:
    done = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--",
                           sys.executable, "-m", "builder.cli", "run", "bpf/tcp_connlat", "--duration", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"BPFDEPOT_HOME": str(home), "PATH": "/usr/bin:/bin:/usr/sbin"})
    assert done.returncode == 6, done.stderr
    assert "needs root, or CAP_BPF and CAP_PERFMON" in done.stderr


def test_kernel_reports_what_design_md_lists(home: Path) -> None:
    done = bpfdepot(home, "kernel")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[4:]}
    assert rows["tracepoint"] == "yes"
    assert rows["ringbuf"] == "yes"
    if "-fc-" in running_kernel().release:  # the kernel these machines run (DESIGN.md)
        assert rows["kprobe"] == "no" and rows["fentry"] == "no"


def test_a_damaged_artifact_is_refused_then_healed_by_the_next_run(tmp_path: Path) -> None:
    """A flipped byte: `run --no-build` refuses it (exit 9, nothing loaded) with a hint that
    works — `run` (which may build) compiles it again, writes the right bytes back and loads."""
    home = tmp_path / "home"
    bundle = str(ROOT / "bpf" / "tcp_connlat")
    assert bpfdepot(home, "build", bundle).returncode == 0
    blob = _build(home, ROOT / "bpf" / "tcp_connlat")  # the object `build` stored
    good = blob.read_bytes()
    blob.write_bytes(good[:200] + bytes([good[200] ^ 0xFF]) + good[201:])
    refused = bpfdepot(home, "run", bundle, "--no-build", "--duration", "0.2")
    assert refused.returncode == 9, refused.stderr
    assert "is corrupt" in refused.stderr and "nothing was loaded" in refused.stderr
    assert "attached" not in refused.stderr
    healed = bpfdepot(home, "run", bundle, "--duration", "0.2")
    assert healed.returncode == 0, healed.stderr
    assert "program(s) attached" in healed.stderr
    assert blob.read_bytes() == good
