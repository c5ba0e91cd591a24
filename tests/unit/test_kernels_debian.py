"""`kernels add --package` at scale, the pure parts: Debian package names and globs, which index
names are kernel images, flavours, version ranges (also as selector terms), apt-cache stanzas,
and how a read package is recorded (added, already known, identical BTF) in a LocalStore."""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest

from builder.debian import (AptIndex, DebCache, IndexPackage, LocalDeb, check_glob, check_name,
                            choose, image_release, parse_show, resolve)
from builder.kernelbatch import add_packages, record
from builder.kernelpkg import PackageKernel
from loader.artifacts.store import LocalStore
from loader.errors import BpfDepotError
from loader.kernel.catalog import (KernelEntry, SelectorError, VersionBound, kernel_flavour,
                                   list_kernels, parse_selector, parse_version_bound,
                                   parse_version_range, release_version, select)

# Names as `apt-cache pkgnames linux-image-` lists them on bookworm (+ updates, security, backports).
INDEX = [
    "linux-image-6.1.0-47-amd64", "linux-image-6.1.0-47-amd64-unsigned",
    "linux-image-6.1.0-47-cloud-amd64", "linux-image-6.1.0-47-cloud-amd64-unsigned",
    "linux-image-6.1.0-47-rt-amd64", "linux-image-6.1.0-50-amd64", "linux-image-6.1.0-50-cloud-amd64",
    "linux-image-6.1.0-50-cloud-amd64-dbg", "linux-image-6.1.0-50-rt-amd64",
    "linux-image-6.12-amd64", "linux-image-6.12-amd64-signed-template", "linux-image-6.12-cloud-amd64",
    "linux-image-6.12.100+deb12-amd64", "linux-image-6.12.100+deb12-cloud-amd64",
    "linux-image-6.12.9+deb12-cloud-amd64", "linux-image-6.12.90+deb12.1-cloud-amd64",
    "linux-image-6.12.117+deb12-rt-amd64", "linux-image-amd64", "linux-image-amd64-dbg",
    "linux-image-cloud-amd64", "linux-image-6.1.0-50-arm64", "linux-image-6.1.0-50-cloud-arm64",
]


# ---------------------------------------------------------------- names and globs

@pytest.mark.parametrize("name", ["linux-image-6.1.0-50-cloud-amd64", "linux-image-6.12.100+deb12-amd64",
                                  "g++", "0ad", "libc6.1"])
def test_debian_names_pass(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", [
    "-oAPT::Get::Foo=1",            # an option smuggled as a name
    "linux-image-$(id)", "linux image", "Linux-Image-6.1", "x", "a/../../etc", "pkg=1.0",
    "linux-image-6.1;rm", "", "a" * 201, "linux-image-é",
])
def test_anything_else_is_refused_before_apt_sees_it(name: str) -> None:
    with pytest.raises(BpfDepotError) as caught:
        check_name(name)
    assert caught.value.message == f"'{name[:80]}' is not a Debian package name"
    assert "Debian policy 5.6.1" in caught.value.hint and "./NAME.deb" in caught.value.hint


def test_globs() -> None:
    assert check_glob("linux-image-6.1.*-cloud-amd64") == "linux-image-6.1.*-cloud-amd64"
    assert check_glob("linux-image-6.1.0-5[0-4]-amd64") == "linux-image-6.1.0-5[0-4]-amd64"
    for bad in ("-o*", "linux-image-*;id", "LINUX-*", "linux-image-*/x"):
        with pytest.raises(BpfDepotError, match="is not a package glob"):
            check_glob(bad)


# ---------------------------------------------------------------- which names are images

@pytest.mark.parametrize(("name", "release"), [
    ("linux-image-6.1.0-50-cloud-amd64", "6.1.0-50-cloud-amd64"),
    ("linux-image-6.1.0-50-amd64", "6.1.0-50-amd64"),
    ("linux-image-6.12.90+deb12.1-cloud-amd64", "6.12.90+deb12.1-cloud-amd64"),
    ("linux-image-6.1.0-50-cloud-amd64-unsigned", None),
    ("linux-image-6.1.0-50-cloud-amd64-dbg", None),
    ("linux-image-6.12-amd64", None),              # a meta package: two numbers
    ("linux-image-amd64", None),
    ("linux-image-6.12-amd64-signed-template", None),
    ("linux-image-6.1.0-50-arm64", None),          # another arch
])
def test_image_release(name: str, release: str | None) -> None:
    assert image_release(name, "amd64") == release


def test_an_unsigned_image_counts_when_asked() -> None:
    assert image_release("linux-image-6.1.0-47-cloud-amd64-unsigned", "amd64", unsigned=True) \
        == "6.1.0-47-cloud-amd64"
    assert image_release("linux-image-6.1.0-47-cloud-amd64-dbg", "amd64", unsigned=True) is None


def test_choose_everything_in_natural_order() -> None:
    assert choose(INDEX, arch="amd64") == [
        "linux-image-6.1.0-47-amd64", "linux-image-6.1.0-47-cloud-amd64", "linux-image-6.1.0-47-rt-amd64",
        "linux-image-6.1.0-50-amd64", "linux-image-6.1.0-50-cloud-amd64", "linux-image-6.1.0-50-rt-amd64",
        "linux-image-6.12.9+deb12-cloud-amd64", "linux-image-6.12.90+deb12.1-cloud-amd64",
        "linux-image-6.12.100+deb12-amd64", "linux-image-6.12.100+deb12-cloud-amd64",
        "linux-image-6.12.117+deb12-rt-amd64"]
    assert choose(INDEX, arch="arm64") == ["linux-image-6.1.0-50-arm64", "linux-image-6.1.0-50-cloud-arm64"]


def test_choose_by_flavour_version_and_limit() -> None:
    cloud = choose(INDEX, arch="amd64", flavours=["cloud"])
    assert cloud == ["linux-image-6.1.0-47-cloud-amd64", "linux-image-6.1.0-50-cloud-amd64",
                     "linux-image-6.12.9+deb12-cloud-amd64", "linux-image-6.12.90+deb12.1-cloud-amd64",
                     "linux-image-6.12.100+deb12-cloud-amd64"]
    assert choose(INDEX, arch="amd64", flavours=["generic", "rt"], versions=parse_version_range("<6.12")) == [
        "linux-image-6.1.0-47-amd64", "linux-image-6.1.0-47-rt-amd64",
        "linux-image-6.1.0-50-amd64", "linux-image-6.1.0-50-rt-amd64"]
    assert choose(INDEX, arch="amd64", flavours=["cloud"], versions=parse_version_range(">=6.1.0-48,<6.12.100")) \
        == ["linux-image-6.1.0-50-cloud-amd64", "linux-image-6.12.9+deb12-cloud-amd64",
            "linux-image-6.12.90+deb12.1-cloud-amd64"]
    assert choose(INDEX, arch="amd64", flavours=["cloud"], limit=2) == cloud[-2:]  # the newest two
    assert choose(INDEX, arch="amd64", flavours=["cloud"], limit=99) == cloud


# ---------------------------------------------------------------- flavours and version ranges

@pytest.mark.parametrize(("release", "flavour"), [
    ("6.1.0-50-cloud-amd64", "cloud"), ("6.12.117+deb12-rt-amd64", "rt"), ("6.1.0-50-amd64", "generic"),
    ("6.18.44-fc-v669", "generic"), ("6.1.0-50-cloud-arm64", "cloud"),
])
def test_flavour_from_release(release: str, flavour: str) -> None:
    assert kernel_flavour(release) == flavour


def test_release_versions() -> None:
    assert release_version("6.1.0-50-cloud-amd64") == (6, 1, 0, 50)
    assert release_version("6.12.100+deb12-amd64") == (6, 12, 100)
    assert release_version("6.18.44-fc-v669") == (6, 18, 44)
    assert release_version("custom") == ()


@pytest.mark.parametrize(("bound", "release", "holds"), [
    (">=6.1", "6.1.0-50-amd64", True), ("<6.13", "6.12.100+deb12-amd64", True),
    ("<6.12", "6.12.100+deb12-amd64", False), ("<=6.1", "6.1.0-57-amd64", True),
    ("<6.1", "6.1.0-57-amd64", False), (">6.1", "6.1.0-57-amd64", False), (">6.1", "6.12.1-x", True),
    ("=6.12", "6.12.117+deb12-rt-amd64", True), ("6.12", "6.1.0-50-amd64", False),
    ("==6.1.0-50", "6.1.0-50-cloud-amd64", True), ("!=6.1", "6.1.0-50-amd64", False),
    (">=6.1.0-50", "6.1.0-47-amd64", False), (">=6.1.0-50", "6.1.0-51-amd64", True),
    ("<6.9", "6.12.1", False),           # natural, not text, order
    (">=6.1", "custom-kernel", False),   # no numbers: in no range
])
def test_version_bounds(bound: str, release: str, holds: bool) -> None:
    assert parse_version_bound(bound).holds(release) is holds


def test_version_range_text_and_errors() -> None:
    assert parse_version_range(">=6.1, <6.13") == (VersionBound(">=", (6, 1)), VersionBound("<", (6, 13)))
    assert str(parse_version_bound(" >= 6.1.0-50 ")) == ">=6.1.0.50"
    with pytest.raises(SelectorError) as caught:
        parse_version_range(">=6.1,<six")
    assert caught.value.message == "version range '>=6.1,<six': '<six' is not a version bound"
    assert "e.g. >=6.1,<6.13" in caught.value.hint
    with pytest.raises(SelectorError, match="empty version range"):
        parse_version_range(" ")
    with pytest.raises(SelectorError, match="'~>6.1' is not a version bound"):
        parse_version_range("~>6.1")


def entry(release: str, digest: str) -> KernelEntry:
    return KernelEntry(release=release, arch="x86_64", btf_digest=digest * 32, config_blob=None,
                       features={}, features_from="config", btf_on_node=True, source="test")


CATALOG = [entry("6.1.0-50-amd64", "a1"), entry("6.1.0-50-cloud-amd64", "a2"),
           entry("6.12.100+deb12-rt-amd64", "a3"), entry("6.12.117+deb12-cloud-amd64", "a4"),
           entry("6.18.44-fc-v669", "a5")]


def test_selector_flavour_and_version_terms() -> None:
    def releases(text: str) -> list[str]:
        return [e.release for e in select(CATALOG, text)]

    assert releases("flavour=cloud") == ["6.1.0-50-cloud-amd64", "6.12.117+deb12-cloud-amd64"]
    assert releases("flavour=generic") == ["6.1.0-50-amd64", "6.18.44-fc-v669"]
    assert releases("version>=6.12") == ["6.12.100+deb12-rt-amd64", "6.12.117+deb12-cloud-amd64",
                                          "6.18.44-fc-v669"]
    assert releases("version>=6.1,version<6.13,flavour=cloud") == [
        "6.1.0-50-cloud-amd64", "6.12.117+deb12-cloud-amd64"]
    assert releases("version=6.12.117") == ["6.12.117+deb12-cloud-amd64"]
    assert parse_selector("version >= 6.1").terms == (("version", ">=6.1"),)


@pytest.mark.parametrize(("text", "message", "hint"), [
    ("flavour=clod", "kernel selector 'flavour=clod': unknown flavour 'clod'",
     "did you mean 'cloud'? flavours are generic, cloud, rt"),
    ("version>=six", "kernel selector 'version>=six': '>=six' is not a version bound", "e.g. >=6.1"),
    ("versions>=6.1", "kernel selector 'versions>=6.1': unknown term 'versions>'",
     "did you mean 'version'? terms are release, arch, feature, digest, flavour, version"),
])
def test_selector_term_errors(text: str, message: str, hint: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_selector(text)
    assert caught.value.message == message
    assert hint in caught.value.hint


# ---------------------------------------------------------------- apt-cache show

SHOW = """Package: linux-image-6.1.0-50-cloud-amd64
Source: linux-signed-amd64 (6.1.176+1)
Version: 6.1.176-1
Installed-Size: 56313
Maintainer: Debian Kernel Team <debian-kernel@lists.debian.org>
Architecture: amd64
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Description: Linux 6.1 for x86-64 cloud
 The Linux kernel 6.1 and modules for use on x86-64 cloud.
Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-50-cloud-amd64_6.1.176-1_amd64.deb
Size: 26484304
SHA256: efe19f605b6f54a8352e68d85a629abb2d30b72a085faef603a9152590baa791

Package: linux-image-cloud-amd64
Version: 1:6.1.192-3
Architecture: amd64
Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)
Size: 1496
SHA256: 0000000000000000000000000000000000000000000000000000000000000001

Package: linux-image-6.1.0-49-cloud-amd64
Version: 6.1.175-1
Architecture: amd64
Size: 26484304
SHA256: not-a-digest

Package: linux-image-6.1.0-48-cloud-amd64
Version: 6.1.174-1
Architecture: amd64
SHA256: efe19f605b6f54a8352e68d85a629abb2d30b72a085faef603a9152590baa791

"""


def test_parse_show_keeps_downloadable_candidates() -> None:
    found = parse_show(SHOW)
    assert [p.name for p in found] == ["linux-image-6.1.0-50-cloud-amd64", "linux-image-cloud-amd64"]
    first, meta = found
    assert (first.version, first.arch, first.size) == ("6.1.176-1", "amd64", 26484304)
    assert first.sha256 == "efe19f605b6f54a8352e68d85a629abb2d30b72a085faef603a9152590baa791"
    assert first.filename == "linux-image-6.1.0-50-cloud-amd64_6.1.176-1_amd64.deb"
    assert meta.depends == "linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)"
    assert meta.filename == "linux-image-cloud-amd64_1%3a6.1.192-3_amd64.deb"  # as apt names it


def test_cache_refuses_what_is_too_big_or_not_the_indexed_file(tmp_path: Path) -> None:
    cache = DebCache(tmp_path, max_bytes=10_000_000)
    with pytest.raises(BpfDepotError) as caught:
        cache.check_size(26_484_304, "linux-image-6.1.0-50-cloud-amd64 6.1.176-1")
    assert caught.value.message == ("linux-image-6.1.0-50-cloud-amd64 6.1.176-1 is 26.5 MB, "
                                    "over the 10 MB limit")
    assert "--max-size" in caught.value.hint
    data = b"!<arch>\nnot really a deb\n"
    package = IndexPackage(name="linux-image-9.9.9-test", version="9.9.9-1", arch="amd64",
                           size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert cache.cached(package) is None                     # absent
    (tmp_path / package.filename).write_bytes(data[:-1])
    assert cache.cached(package) is None                     # wrong size
    (tmp_path / package.filename).write_bytes(data[:-1] + b"?")
    assert cache.cached(package) is None                     # wrong SHA256
    (tmp_path / package.filename).write_bytes(data)
    assert cache.cached(package) is None                     # right bytes, but dpkg-deb cannot read it


# ---------------------------------------------------------------- recording read packages

def tiny_btf(name: bytes) -> bytes:
    """Raw BTF with one int type named ``name`` (layout: Documentation/bpf/btf.rst)."""
    strings = b"\0" + name + b"\0"
    types = struct.pack("<4I", 1, 1 << 24, 4, 32)
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings)) \
        + types + strings


def kernel(release: str, btf: bytes, package: str = "") -> PackageKernel:
    return PackageKernel(release=release, arch="x86_64", btf=btf, image=b"MZ" + release.encode(),
                         config="CONFIG_BPF_SYSCALL=y\n", package=package or f"linux-image-{release}.deb")


def test_record_adds_knows_and_deduplicates(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    one, two = tiny_btf(b"int"), tiny_btf(b"long")
    outcome, first = record(store, kernel("6.1.0-50-cloud-amd64", one))
    assert outcome == "added" and first.btf_digest == hashlib.sha256(one).hexdigest()
    assert store.read_blob(first.image or "") == b"MZ6.1.0-50-cloud-amd64"
    # the same kernel again, from its -unsigned package: already known, the first entry stays
    outcome, again = record(store, kernel("6.1.0-50-cloud-amd64", one, "unsigned.deb"))
    assert outcome == "known" and again == first
    # another release with byte-identical BTF: skipped, its release noted on the kept entry
    outcome, kept = record(store, kernel("6.1.0-51-cloud-amd64", one))
    assert outcome == "duplicate" and kept.release == "6.1.0-50-cloud-amd64"
    assert kept.source == "package linux-image-6.1.0-50-cloud-amd64.deb; same BTF: 6.1.0-51-cloud-amd64"
    assert record(store, kernel("6.1.0-51-cloud-amd64", one)) == ("duplicate", kept)  # noted once
    outcome, other = record(store, kernel("6.1.0-52-cloud-amd64", two))
    assert outcome == "added"
    assert list_kernels(store) == [kept, other]


def test_failures_are_reported_and_the_rest_kept(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    progress = io.StringIO()
    report = add_packages(store, [LocalDeb(tmp_path / "gone.deb")], DebCache(tmp_path / "debs"),
                          progress=progress)
    assert report.failed == [("gone.deb", f"kernel package {tmp_path / 'gone.deb'} does not exist "
                                          "(hint: give a .deb file, a package name or a glob)")]
    assert progress.getvalue() == (f"[1/1] gone.deb  FAILED: kernel package {tmp_path / 'gone.deb'} "
                                   "does not exist (hint: give a .deb file, a package name or a glob)\n")
    assert report.summary() == ("kernels add: 0 added, 0 already known, 0 identical BTF skipped, "
                                "1 failed (0 downloaded, 0 from the cache)")
    assert list_kernels(store) == []


# ---------------------------------------------------------------- resolving --package values

class StubIndex(AptIndex):
    """The index as apt-cache would answer, from INDEX and a Depends map (no apt run)."""

    def __init__(self) -> None:
        self.arch = "amd64"
        self.asked: list[list[str]] = []
        self.depends = {"linux-image-cloud-amd64": "linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)",
                        "linux-image-amd64": "linux-image-gone-amd64 (= 1)"}

    def names(self) -> list[str]:
        return sorted(INDEX)

    def show(self, names: Sequence[str]) -> dict[str, IndexPackage]:
        self.asked.append(list(names))
        return {n: IndexPackage(name=n, version="1.0-1", arch="amd64", size=1, sha256="0" * 64,
                                depends=self.depends.get(n, "kmod"))
                for n in names if n in INDEX and not n.endswith("-rt-amd64")}  # rt: virtual here


def test_resolve_files_names_metas_and_globs() -> None:
    index = StubIndex()
    found = resolve(["./mine.deb", "linux-image-cloud-amd64", "linux-image-6.1.0-47-cloud-amd64-unsigned",
                     "linux-image-6.1.0-*-cloud-amd64", "linux-image-6.1.0-50-cloud-amd64"],
                    from_index=False, index=index)
    assert [s.path.name if isinstance(s, LocalDeb) else s.name for s in found] == [
        "mine.deb", "linux-image-6.1.0-50-cloud-amd64", "linux-image-6.1.0-47-cloud-amd64-unsigned",
        "linux-image-6.1.0-47-cloud-amd64"]  # each once, in the order first named
    assert index.asked[0] == ["linux-image-cloud-amd64", "linux-image-6.1.0-47-cloud-amd64-unsigned",
                              "linux-image-6.1.0-50-cloud-amd64"]  # the plain names in one call


def test_resolve_the_index_with_filters() -> None:
    found = resolve([], from_index=True, index=StubIndex(), flavours=["generic", "rt"],
                    versions=parse_version_range(">=6.1.0-50"), limit=2)
    assert [s.name for s in found] == ["linux-image-6.1.0-50-amd64", "linux-image-6.12.100+deb12-amd64"]


@pytest.mark.parametrize(("values", "kwargs", "message"), [
    (["linux-image-amd64"], {}, "package linux-image-gone-amd64 is not in the apt index "
                                "(needed by linux-image-amd64)"),
    (["linux-image-6.1.0-50-cloud-amd64-dbg"], {}, "package linux-image-6.1.0-50-cloud-amd64-dbg "
                                                   "is not a versioned kernel image for amd64"),
    (["linux-image-6.1.0-4*-rt-amd64"], {}, "no kernel image in the apt index matches "
                                            "'linux-image-6.1.0-4*-rt-amd64'"),
    (["linux-image-6.1*"], {"flavours": ["cloud"], "versions": parse_version_range(">=7")},
     "no kernel image in the apt index matches 'linux-image-6.1*' (flavour cloud; version >=7)"),
    (["linux-image-6.1.0-50-amd64"], {"limit": 3}, "--flavour, --versions and --limit narrow globs "
                                                   "and --from-index, and none was given"),
    (["linux-image-$(reboot)"], {}, "'linux-image-$(reboot)' is not a Debian package name"),
])
def test_resolve_errors(values: list[str], kwargs: dict, message: str) -> None:
    with pytest.raises(BpfDepotError) as caught:
        resolve(values, from_index=False, index=StubIndex(), **kwargs)
    assert caught.value.message == message
