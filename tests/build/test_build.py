"""Compile catalog programs for every reference kernel; failures keep clang's words."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder.compile import Target, build_program, form_features
from builder.toolchain import find_toolchain
from loader.artifacts.meta import read_meta
from loader.kernel.catalog import features_from_config
from loader.kernel.elf import read_object
from loader.errors import BuildError
from loader.kernel.probe import KernelIdentity, file_digest
from loader.model.manifest import load_bundle
from loader.artifacts.store import LocalStore

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT.parent / "shared" / "kernels"
BUNDLES = Path(__file__).resolve().parent / "bundles"
CATALOG = ROOT / "bpf"


def reference_kernels() -> list[Path]:
    return sorted(KERNELS.glob("*.btf")) if KERNELS.is_dir() else []


def catalog_bundles() -> list[Path]:
    """Every bundle under bpf/ (a folder with a manifest.yaml), and every other manifest beside
    one (bpf/l7/tls.yaml, bpf/tcp_connlat/processor.yaml...): discovered, not listed."""
    folders = sorted(p.parent for p in CATALOG.glob("*/manifest.yaml"))
    others = sorted(p for folder in folders for p in folder.glob("*.yaml")
                    if p.name != "manifest.yaml" and p.read_text().startswith("kind: ebpfprogram"))
    return folders + others


def _target(btf: Path) -> Target:
    config = btf.with_suffix(".config")
    features = (form_features(features_from_config(config.read_text(), "x86_64"), probed=False)
                if config.exists() else frozenset())
    return Target(identity=KernelIdentity(release=btf.name.removesuffix(".btf"), arch="x86_64",
                                          btf_digest=file_digest(btf)), btf=btf, features=features)


def _build(home: Path, bundle: Path, btf: Path, program: str | None = None):
    manifest = load_bundle(bundle)
    spec = manifest.program(program) if program else manifest.kernel_programs[0]
    return build_program(LocalStore(home), manifest, spec, _target(btf),
                         find_toolchain(home / "cache"), home / "cache")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.mark.parametrize("bundle", catalog_bundles(),
                         ids=lambda p: p.name if p.is_dir() else f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("btf", reference_kernels() or [None], ids=lambda p: p.name if p else "none")
def test_every_catalog_program_builds_for_each_reference_kernel(home: Path, bundle: Path,
                                                                btf: Path | None) -> None:
    """Each kernel program of each bundle under bpf/, for each kernel in ../shared/kernels."""
    if btf is None:
        pytest.skip(f"no reference kernels at {KERNELS} (a checkout without ../shared)")
    manifest = load_bundle(bundle)
    for program in manifest.kernel_programs:
        if not program.is_source:
            continue
        built = _build(home, bundle, btf, program.name)
        meta = built.meta
        assert meta.target.release == btf.name.removesuffix(".btf")
        assert meta.license and meta.programs, meta
        data = LocalStore(home).read_blob(meta.digest)
        assert read_object(data, "built").license == meta.license
        again = _build(home, bundle, btf, program.name)
        assert again.cached and again.meta_digest == built.meta_digest


@pytest.mark.parametrize("btf", reference_kernels() or [None], ids=lambda p: p.name if p else "none")
def test_tcp_connlat_layout_on_each_reference_kernel(home: Path, btf: Path | None) -> None:
    if btf is None:
        pytest.skip(f"no reference kernels at {KERNELS} (a checkout without ../shared)")
    meta = _build(home, CATALOG / "tcp_connlat", btf).meta
    assert meta.required_features == ("ringbuf", "tracepoint")
    assert meta.programs[0]["section"] == "tp/sock/inet_sock_set_state"
    events = meta.channels["tcp_connlat_events"]
    assert (events["event"], events["event_size"]) == ("connlat_event", 72)
    assert [f["name"] for f in events["layout"]] == [
        "delta_ns", "pid", "family", "sport", "dport", "label", "comm", "saddr", "daddr"]
    assert meta.license == "Dual BSD/GPL"


def test_identical_inputs_give_identical_bytes(tmp_path: Path) -> None:
    """Two stores, two copies of the bundle in different folders: the same object."""
    btf = Path("/sys/kernel/btf/vmlinux")
    if not btf.exists():
        pytest.skip("this kernel exposes no BTF")
    digests = []
    for n in range(2):
        copy = tmp_path / f"copy-{n}" / ("deeper/" * n) / "tcp_connlat"
        shutil.copytree(ROOT / "bpf" / "tcp_connlat", copy)
        digests.append(_build(tmp_path / f"home-{n}", copy, btf).meta.digest)
    assert digests[0] == digests[1]


def test_syntax_error_keeps_file_and_line(home: Path) -> None:
    with pytest.raises(BuildError) as caught:
        _build(home, BUNDLES / "syntax_error", Path("/sys/kernel/btf/vmlinux"))
    err = caught.value
    assert err.message.startswith("clang failed on program 'syntax_error'")
    assert f"{BUNDLES / 'syntax_error' / 'broken.bpf.c'}:8:10: error: expected ';'" in err.detail
    # no scratch folder (…/tmp/build-XXXX), sandbox path (/work) or mapped prefix leaks through
    assert "/build-" not in err.detail and "/bpfdepot/" not in err.detail
    assert not re.search(r"(^|\s)(src|include)/|/work/(src|include|vmlinux)/", err.detail)


def test_channel_missing_or_of_the_wrong_type(home: Path) -> None:
    with pytest.raises(BuildError) as caught:
        _build(home, BUNDLES / "missing_channel", Path("/sys/kernel/btf/vmlinux"))
    detail = caught.value.detail
    assert "channel 'events' is not a map in the object (maps: counts)" in detail
    assert "channel 'counts' is a hash map, but the manifest says ring_buffer (a ringbuf map)" in detail
    assert not (home / "refs" / "index" / "missing_channel").exists()  # nothing published


def test_include_outside_the_bundle_is_refused(tmp_path: Path) -> None:
    """A header that exists where the user is, by absolute path: the sandbox shows clang only the
    bundle, so it cannot read it, and the message says so (not that clang read it)."""
    (tmp_path / "outside.h").write_text("#define FROM_OUTSIDE 1\n")
    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "bpf" / "tcp_connlat", bundle)
    source = bundle / "tcp_connlat.bpf.c"
    source.write_text(f'#include "{tmp_path / "outside.h"}"\n' + source.read_text())
    with pytest.raises(BuildError) as caught:
        _build(tmp_path / "home", bundle, Path("/sys/kernel/btf/vmlinux"))
    assert caught.value.message == (
        f"program 'tcp_connlat' includes {tmp_path / 'outside.h'}, outside its bundle: the build sees "
        "only the bundle, bpf/include and the toolchain's headers, so clang could not read it")
    assert not (tmp_path / "home" / "refs").exists()


def test_a_lost_or_damaged_object_is_built_again_by_the_next_build(tmp_path: Path) -> None:
    """What the store's hint promises: after a flipped byte or a deleted blob, `bpfdepot build`
    compiles again and writes the right bytes back (it used to print `cached` and leave it)."""
    btf = Path("/sys/kernel/btf/vmlinux")
    if not btf.exists():
        pytest.skip("this kernel exposes no BTF")
    env = dict(os.environ, BPFDEPOT_HOME=str(tmp_path / "home"))

    def build() -> str:
        done = subprocess.run([sys.executable, "-m", "builder.cli", "build", str(ROOT / "bpf" / "tcp_connlat")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert " built " in build()
    assert " cached " in build()
    store = LocalStore(tmp_path / "home")
    [digest] = {read_meta(store, d).digest for d in store.read_refs("index").values()}
    path = store._blob(digest)
    good = path.read_bytes()
    path.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    assert " built " in build()
    assert path.read_bytes() == good
    path.unlink()
    assert " built " in build()
    assert path.read_bytes() == good


def test_an_object_over_the_size_limit_is_not_stored(tmp_path: Path) -> None:
    """A 16 MiB .data array used to be built and stored (once per kernel); now it is refused."""
    bundle = tmp_path / "ballast"
    shutil.copytree(ROOT / "bpf" / "tcp_connlat", bundle)
    source = bundle / "tcp_connlat.bpf.c"
    source.write_text(source.read_text() + "\nchar ballast[16 << 20] = {1};\n")
    with pytest.raises(BuildError) as caught:
        _build(tmp_path / "home", bundle, Path("/sys/kernel/btf/vmlinux"))
    message = caught.value.message
    assert message.startswith("the object built from 'tcp_connlat' for ")
    assert message.endswith(" bytes, over the limit of 8,388,608 (8 MiB)")
    assert int(message.split(" is ")[1].split(" bytes")[0].replace(",", "")) > 16 << 20
    assert not (tmp_path / "home" / "refs").exists()
    assert not (tmp_path / "home" / "blobs").exists()


def test_a_missing_system_header_is_named_as_such(tmp_path: Path) -> None:
    """<linux/types.h> includes <asm/types.h>, which -target bpf cannot find: a missing system
    header, not a file 'outside the bundle'."""
    bundle = tmp_path / "uapi"
    shutil.copytree(ROOT / "bpf" / "tcp_connlat", bundle)
    source = bundle / "tcp_connlat.bpf.c"
    source.write_text("#include <linux/types.h>\n" + source.read_text())
    with pytest.raises(BuildError) as caught:
        _build(tmp_path / "home", bundle, Path("/sys/kernel/btf/vmlinux"))
    assert caught.value.message == ("program 'tcp_connlat' needs the header 'asm/types.h' (included by "
                                    "/usr/include/linux/types.h), which is not installed for BPF builds")
    assert "vmlinux.h" in caught.value.hint and caught.value.exit_code == 8
