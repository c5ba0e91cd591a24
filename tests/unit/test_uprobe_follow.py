"""``follow: true`` for uprobes: the manifest option, the maps parsing, and the watcher's scans
over a fake /proc tree (each pid a folder with stat, maps and a root link)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loader.attach.uprobe_follow import Watcher, follow, mapped_paths, matches
from loader.errors import ManifestError
from loader.model.manifest import parse_manifest

HEAD = """\
kind: ebpfprogram
name: demo
spec:
  programs:
    - name: demo
      path: file://./demo.bpf.c
      type: ebpf_object
"""


def parse(tmp_path: Path, attach: str):
    (tmp_path / "demo.bpf.c").write_text("")
    (tmp_path / "manifest.yaml").write_text(HEAD + f"      attach: {attach}\n")
    return parse_manifest(tmp_path / "manifest.yaml").kernel_programs[0]


def test_follow_is_an_option_of_uprobe_and_uretprobe(tmp_path: Path) -> None:
    p = parse(tmp_path, "{w: {uprobe: {binary: libssl.so.3, function: SSL_write, follow: true}},"
                        " r: {uretprobe: {binary: libssl.so.3, function: SSL_read, follow: no}}}")
    assert p.attach == (
        ("w", "uprobe", {"binary": "libssl.so.3", "function": "SSL_write", "offset": 0,
                         "pid": -1, "follow": True}),
        ("r", "uretprobe", {"binary": "libssl.so.3", "function": "SSL_read", "offset": 0,
                            "pid": -1}))


@pytest.mark.parametrize("options, text", [
    ("{binary: libssl.so.3, function: f, follow: 1}",
     "'follow' in spec.programs[0].attach.c.uprobe must be true or false, got 1"),
    ("{binary: /usr/lib/libssl.so.3, function: f, follow: true}",
     "follow in spec.programs[0].attach.c.uprobe needs a library name (no '/'), a function and "
     "no pid"),
    ("{binary: libssl.so.3, offset: 0x10, follow: true}", "needs a library name"),
    ("{binary: libssl.so.3, function: f, pid: 7, follow: true}", "needs a library name"),
])
def test_follow_errors(tmp_path: Path, options: str, text: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse(tmp_path, f"{{c: {{uprobe: {options}}}}}")
    assert text in str(caught.value)


def test_library_files_in_maps() -> None:
    maps = ("7f00-7f10 r--p 00000000 fe:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3\n"
            "7f10-7f20 r-xp 00001000 fe:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3\n"
            "7f20-7f30 r-xp 00000000 fe:01 456 /opt/app/lib/libssl.so.3.0.2\n"
            "7f30-7f40 r-xp 00000000 fe:01 457 /opt/app/lib/libssl.so.30\n"
            "7f40-7f50 r-xp 00000000 fe:01 458 /tmp/old/libssl.so.3 (deleted)\n"
            "7f50-7f60 r-xp 00000000 fe:01 459 /usr/lib/x86_64-linux-gnu/libcrypto.so.3\n"
            "7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n"
            "7fff-8000 rw-p 00000000 00:00 0 \n")
    assert list(mapped_paths(maps, {"libssl.so.3"})) == [
        ("libssl.so.3", "/usr/lib/x86_64-linux-gnu/libssl.so.3"),
        ("libssl.so.3", "/opt/app/lib/libssl.so.3.0.2")]
    assert matches("libssl.so.3", "/a/libssl.so.3")
    assert not matches("libssl.so.3", "/a/xlibssl.so.3")


class FakeProc:
    """A /proc tree: pids with statm and maps; every root links to one fake filesystem."""

    def __init__(self, base: Path) -> None:
        self.proc = base / "proc"
        self.fs = base / "fs"
        self.proc.mkdir()
        self.fs.mkdir()

    def library(self, path: str) -> Path:
        f = self.fs / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"\x7fELF")
        return f

    def process(self, pid: int, paths: list[str], vsize: int = 4096) -> None:
        d = self.proc / str(pid)
        d.mkdir(exist_ok=True)
        (d / "statm").write_text(f"{vsize} 100 50 10 0 200 0\n")
        (d / "maps").write_text("".join(f"7f00-7f10 r-xp 00000000 fe:01 1 {p}\n" for p in paths))
        if not (d / "root").exists():
            (d / "root").symlink_to(self.fs)

    def reused(self, pid: int, paths: list[str]) -> None:
        """The pid of an exited process taken by a new one: a new /proc/PID inode (made while
        the old one exists, so the number differs), the same statm."""
        new = self.proc / f"{pid}.new"
        new.mkdir()
        old = self.proc / str(pid)
        for name in ("statm", "maps", "root"):
            (old / name).rename(new / name)
        old.rmdir()
        new.rename(old)
        (old / "maps").write_text("".join(f"7f00-7f10 r-xp 00000000 fe:01 1 {p}\n" for p in paths))


class FakeLink:
    def __init__(self, path: str, destroyed: list[str]) -> None:
        self.path, self.destroyed = path, destroyed

    def destroy(self) -> None:
        self.destroyed.append(self.path)


def test_the_watcher_probes_each_file_once_and_reads_maps_only_of_new_or_changed_pids(
        tmp_path: Path) -> None:
    fake = FakeProc(tmp_path)
    system = fake.library("/usr/lib/libssl.so.3")
    fake.library("/opt/app/libssl.so.3")
    (fake.fs / "opt/app/hardlink").mkdir()
    os.link(fake.fs / "opt/app/libssl.so.3", fake.fs / "opt/app/hardlink/libssl.so.3")
    fake.process(10, ["/usr/lib/libssl.so.3", "/usr/lib/libc.so.6"])
    fake.process(11, ["/opt/app/libssl.so.3"])
    said: list[str] = []
    destroyed: list[str] = []
    attached: list[str] = []
    watcher = Watcher(proc=str(fake.proc), say=said.append, interval=3600)

    def attach(path: str) -> FakeLink:
        attached.append(path)
        return FakeLink(path, destroyed)

    st = system.stat()
    first = FakeLink("system", destroyed)
    link = follow("libssl.so.3", "uprobe demo:on_write", attach, ((st.st_dev, st.st_ino), first),
                  watcher=watcher)
    # at start: every pid read; the ld.so.cache file is not probed again, the copy once
    copy = str(fake.proc / "11" / "root") + "/opt/app/libssl.so.3"
    assert attached == [copy]
    assert said == ["uprobe demo:on_write attached to /opt/app/libssl.so.3 (pid 11)"]
    assert watcher.maps_read == 2 and link.attached == 2

    watcher.scan()  # nothing changed: no maps read
    assert watcher.maps_read == 2
    fake.process(12, ["/opt/app/hardlink/libssl.so.3"])  # a new pid, the same inode
    fake.process(10, ["/usr/lib/libssl.so.3"], vsize=8192)  # an mmap in a known pid
    watcher.scan()
    assert watcher.maps_read == 4 and len(attached) == 1

    fake.library("/srv/late/libssl.so.3")
    fake.reused(11, ["/srv/late/libssl.so.3"])  # same vsize, but a new process
    watcher.scan()
    assert attached[1:] == [str(fake.proc / "11" / "root") + "/srv/late/libssl.so.3"]
    assert said[-1] == "uprobe demo:on_write attached to /srv/late/libssl.so.3 (pid 11)"

    link.destroy()
    link.destroy()  # idempotent
    assert sorted(destroyed) == sorted(["system", copy, attached[1]])
    assert watcher._thread is None


def test_a_copy_that_cannot_be_probed_is_said_once_and_not_retried(tmp_path: Path) -> None:
    fake = FakeProc(tmp_path)
    fake.library("/opt/old/libssl.so.3")
    fake.process(20, ["/opt/old/libssl.so.3"])
    said: list[str] = []
    tries: list[str] = []
    watcher = Watcher(proc=str(fake.proc), say=said.append, interval=3600)

    def attach(path: str) -> FakeLink:
        tries.append(path)
        raise RuntimeError("function SSL_write_ex is not in it")

    link = follow("libssl.so.3", "uprobe demo:w", attach, None, watcher=watcher)
    fake.process(21, ["/opt/old/libssl.so.3"])
    watcher.scan()
    assert len(tries) == 1
    assert said == ["uprobe demo:w not attached to /opt/old/libssl.so.3 (pid 20): function "
                    "SSL_write_ex is not in it"]
    link.destroy()


def test_two_programs_on_one_library_share_the_scans(tmp_path: Path) -> None:
    fake = FakeProc(tmp_path)
    fake.library("/opt/a/libssl.so.3")
    fake.process(30, ["/opt/a/libssl.so.3"])
    watcher = Watcher(proc=str(fake.proc), say=lambda _: None, interval=3600)
    got: list[tuple[str, str]] = []
    links = [follow("libssl.so.3", label, lambda p, label=label: got.append((label, p)) or
                    FakeLink(p, []), None, watcher=watcher) for label in ("w", "r")]
    assert [label for label, _ in got] == ["w", "r"]
    fake.library("/opt/b/libssl.so.3")
    fake.process(31, ["/opt/b/libssl.so.3"])
    reads = watcher.maps_read
    watcher.scan()
    assert watcher.maps_read == reads + 1  # one read of the new pid serves both programs
    assert [label for label, _ in got[2:]] == ["w", "r"]
    for link in links:
        link.destroy()
    assert watcher._thread is None
