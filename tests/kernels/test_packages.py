"""`bpfdepot kernels add --package` with ten real Debian kernel packages from the apt sources:
each entry checked against the package (BTF taken out independently with the command-line
decompressors and objcopy, boot image, config, features), the reference kernels' BTF digests
matched, a second run served from the cache, and the same kernel's -unsigned package known."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path


from loader.artifacts.store import LocalStore
from loader.kernel.catalog import features_from_config, kernel_flavour, list_kernels

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = {  # ../shared/kernels/README.md: the .BTF of these very packages
    "6.1.0-50-amd64": "ecf4e48fcbed6d520b857baf9fd06621b734094ce76fe41b0b0bc5e159ae6efd",
    "6.12.100+deb12-amd64": "38187011249fa67bb711840eadcfe67d6c2f5cc9d4fe6ed9142252b12ff2b589",
}
# All in Debian 12's default suites (bookworm, bookworm-security; no backports needed), and old
# ABIs (6.1.0-47–52, 6.12.100–107) so the glob's matches do not change as new kernels arrive.
PACKAGES = ["linux-image-6.1.0-4[789]-cloud-amd64", "linux-image-6.1.0-50-cloud-amd64",
            "linux-image-6.1.0-51-cloud-amd64", "linux-image-6.1.0-52-cloud-amd64",
            "linux-image-6.12.107+deb12-cloud-amd64", "linux-image-6.12.101+deb12-cloud-amd64",
            "linux-image-6.1.0-50-amd64", "linux-image-6.12.100+deb12-amd64",
            # the same kernel as linux-image-6.1.0-50-cloud-amd64, without the Secure Boot signature
            "linux-image-6.1.0-50-cloud-amd64-unsigned"]
RELEASES = ["6.1.0-47-cloud-amd64", "6.1.0-48-cloud-amd64", "6.1.0-49-cloud-amd64",
            "6.1.0-50-amd64", "6.1.0-50-cloud-amd64", "6.1.0-51-cloud-amd64", "6.1.0-52-cloud-amd64",
            "6.12.100+deb12-amd64", "6.12.101+deb12-cloud-amd64", "6.12.107+deb12-cloud-amd64"]
TOOLS = {b"\x02\x21\x4c\x18": "lz4", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ\x00": "xz"}
PROGRESS = re.compile(r"^\[(\d+)/11\] (\S+)  +[\d.]+ MB  btf ([0-9a-f]{12})…  (.*) \((downloaded|cached)\)$")


def bpfdepot(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BPFDEPOT_HOME": str(home)}
    env.pop("BPFDEPOT_STORE", None)
    return subprocess.run([sys.executable, "-m", "builder.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)


def package_file(deb: Path, member: str) -> bytes:
    """One file of a .deb, by dpkg-deb and tar (not the code under test's tarfile reader)."""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as data:
        out = subprocess.run(["tar", "-xO", f"./{member}"], stdin=data.stdout, check=True,
                             capture_output=True).stdout
    assert data.returncode == 0
    return out


def btf_by_hand(vmlinuz: bytes, tmp_path: Path) -> bytes:
    """The .BTF section the way a person would get it: the first offset where a decompressor
    yields an ELF (as scripts/extract-vmlinux does), then objcopy."""
    for magic, tool in TOOLS.items():
        at = vmlinuz.find(magic)
        while at >= 0:
            out = subprocess.run([tool, "-dc"], input=vmlinuz[at:], capture_output=True).stdout
            if out.startswith(b"\x7fELF"):
                (tmp_path / "vmlinux").write_bytes(out)
                subprocess.run(["objcopy", "-O", "binary", "--only-section=.BTF",
                                str(tmp_path / "vmlinux"), str(tmp_path / "btf")], check=True)
                return (tmp_path / "btf").read_bytes()
            at = vmlinuz.find(magic, at + 1)
    raise AssertionError("no compressed vmlinux found by hand")


def test_ten_packages_added_then_all_from_the_cache(tmp_path: Path, deb_cache: Path) -> None:
    home = tmp_path / "home"
    args = ("kernels", "add", "--package", *PACKAGES, "--deb-cache", str(deb_cache))

    first = bpfdepot(home, *args)
    assert first.returncode == 0, first.stderr
    lines = first.stderr.splitlines()
    progress = [PROGRESS.match(line) for line in lines[:-1]]
    assert all(progress), first.stderr
    assert sorted(int(m.group(1)) for m in progress) == list(range(1, 12))
    said = {m.group(2): [] for m in progress}
    for m in progress:
        said[m.group(2)].append(m.group(4))
    assert sorted(said) == sorted(RELEASES)
    # the signed and the unsigned package hold one BTF: whichever came second is already known
    assert sorted(said.pop("6.1.0-50-cloud-amd64")) == ["added", "already known"]
    assert all(outcomes == ["added"] for outcomes in said.values())
    assert re.fullmatch(r"kernels add: 10 added, 1 already known, 0 identical BTF skipped, 0 failed "
                        r"\(\d+ downloaded, \d+ from the cache\)", lines[-1])

    store = LocalStore(home)
    entries = list_kernels(store)
    assert [e.release for e in entries] == RELEASES
    for entry in entries:
        deb = deb_cache / entry.source.removeprefix("package ")
        # the first of the signed and unsigned 6.1.0-50-cloud packages to be read is kept
        assert re.fullmatch(rf"linux-image-{re.escape(entry.release)}(-unsigned)?_\S+_amd64\.deb",
                            deb.name), entry.source
        vmlinuz = package_file(deb, f"boot/vmlinuz-{entry.release}")
        config = package_file(deb, f"boot/config-{entry.release}").decode()
        btf = store.read_blob(entry.btf_blob)
        assert entry.arch == "x86_64" and entry.btf_on_node
        assert entry.btf_digest == hashlib.sha256(btf).hexdigest()
        assert btf == btf_by_hand(vmlinuz, tmp_path), entry.release
        assert store.read_blob(entry.image or "") == vmlinuz
        assert store.read_blob(entry.config_blob or "").decode() == config
        assert entry.features_from == "config"
        assert entry.features == features_from_config(config, "x86_64")
        # Debian builds every flavour with BPF events and kprobes (unlike this machine's 6.18)
        assert entry.features["tracepoint"] and entry.features["kprobe"] and entry.features["ringbuf"]
        assert entry.release not in REFERENCE or entry.btf_digest == REFERENCE[entry.release]
    assert len({e.btf_digest for e in entries}) == 10
    assert [e.release for e in entries if kernel_flavour(e.release) == "cloud"] == \
        [r for r in RELEASES if "cloud" in r]

    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_ctime_ns)
              for p in deb_cache.glob("*.deb")}
    refs = store.read_refs("kernels")
    again = bpfdepot(home, *args)
    assert again.returncode == 0, again.stderr
    lines = again.stderr.splitlines()
    assert all(m and m.group(4) == "already known" and m.group(5) == "cached"
               for m in map(PROGRESS.match, lines[:-1])), again.stderr
    assert lines[-1] == ("kernels add: 0 added, 11 already known, 0 identical BTF skipped, 0 failed "
                         "(0 downloaded, 11 from the cache)")
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_ctime_ns)
            for p in deb_cache.glob("*.deb")} == stamps  # not one .deb fetched or rewritten
    assert store.read_refs("kernels") == refs


def test_index_selection_dry_run(tmp_path: Path, deb_cache: Path) -> None:
    shown = bpfdepot(tmp_path, "kernels", "add", "--from-index", "--flavour", "cloud",
                     "--versions", ">=6.1,<6.13", "--deb-cache", str(deb_cache), "--dry-run")
    assert shown.returncode == 0, shown.stderr
    *lines, total = shown.stdout.splitlines()
    names = [line.split()[0] for line in lines]
    assert len(names) >= 20  # bookworm + updates + security: every 6.1 and 6.12 ABI in cloud
    assert all(re.fullmatch(r"linux-image-6\.(1\.0-\d+|12\.\d+\+deb12(\.\d+)?)-cloud-amd64", n)
               for n in names), names
    assert "linux-image-6.1.0-50-cloud-amd64" in names and "linux-image-6.12.101+deb12-cloud-amd64" in names
    # the glob and names of the other test are in the cache by now, or are about to be
    assert total == f"{len(names)} packages, {total.split()[2]} MB to download into {deb_cache}"
    newest = bpfdepot(tmp_path, "kernels", "add", "--from-index", "--flavour", "cloud,rt",
                      "--versions", "<6.12", "--limit", "2", "--dry-run")
    assert newest.returncode == 0, newest.stderr
    picked = [line.split()[0] for line in newest.stdout.splitlines()[:-1]]
    assert len(picked) == 2 and all(n.startswith("linux-image-6.1.0-") for n in picked)
    assert list_kernels(LocalStore(tmp_path)) == []  # a dry run adds nothing
