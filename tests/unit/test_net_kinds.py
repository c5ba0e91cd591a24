"""cgroup, socket_filter and iter attach kinds and the iterator output kind: manifest options
(errors name the line and the fix), cgroup2 discovery, and iterator text → records."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.attach.cgroup import cgroup2_mounts, check_cgroup_dir
from loader.errors import LoadError, ManifestError
from loader.model.manifest import parse_manifest
from loader.outputs.iterator import records

HYBRID = """sysfs /sys sysfs rw,nosuid 0 0
tmpfs /sys/fs/cgroup tmpfs ro,nosuid 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nsdelegate 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0
"""


def _manifest(tmp_path: Path, attach: str = "", channels: str = "") -> Path:
    (tmp_path / "x.bpf.c").write_text("")
    path = tmp_path / "manifest.yaml"
    path.write_text("kind: ebpfprogram\nname: x\nspec:\n  programs:\n"
                    "    - name: x\n      path: file://./x.bpf.c\n      type: ebpf_object\n"
                    + (f"      attach:\n{attach}" if attach else "") + channels)
    return path


def _attach(tmp_path: Path, line: str) -> tuple:
    return parse_manifest(_manifest(tmp_path, f"        {line}\n")).programs[0].attach


def test_cgroup_options(tmp_path: Path) -> None:
    assert _attach(tmp_path, "egress: {cgroup: {}}") == (("egress", "cgroup", {}),)
    assert _attach(tmp_path, "egress: {cgroup: }") == (("egress", "cgroup", {}),)
    assert _attach(tmp_path, "egress: {cgroup: {path: /sys/fs/cgroup/unified/a}}") == \
        (("egress", "cgroup", {"path": "/sys/fs/cgroup/unified/a"}),)
    with pytest.raises(ManifestError) as caught:
        _attach(tmp_path, "egress: {cgroup: {path: a/b}}")
    assert "manifest.yaml:9: " in caught.value.message
    assert "path 'a/b' in spec.programs[0].attach.egress.cgroup is not absolute" in caught.value.message
    with pytest.raises(ManifestError) as caught:
        _attach(tmp_path, "egress: {cgroup: {pth: /x}}")
    assert "unknown key 'pth'" in caught.value.message and "path" in caught.value.hint


def test_socket_filter_options(tmp_path: Path) -> None:
    assert _attach(tmp_path, "f: {socket_filter: {interface: lo}}") == \
        (("f", "socket_filter", {"interface": "lo"}),)
    with pytest.raises(ManifestError) as caught:
        _attach(tmp_path, "f: {socket_filter: {}}")
    assert "'interface' is missing" in caught.value.message
    with pytest.raises(ManifestError) as caught:
        _attach(tmp_path, "f: {socket_filter: {interface: a-very-long-interface-name}}")
    assert "is not an interface name" in caught.value.message


def test_iter_options(tmp_path: Path) -> None:
    assert _attach(tmp_path, "d: {iter: {}}") == (("d", "iter", {}),)
    assert _attach(tmp_path, "d: {iter: {pid: 42}}") == (("d", "iter", {"pid": 42}),)
    assert _attach(tmp_path, "d: {iter: {map: counts}}") == (("d", "iter", {"map": "counts"}),)
    with pytest.raises(ManifestError) as caught:
        _attach(tmp_path, "d: {iter: {pid: 1, tid: 2}}")
    assert "takes one of map, pid, tid, not pid and tid" in caught.value.message
    with pytest.raises(ManifestError) as caught:
        _attach(tmp_path, "d: {iter: {pid: -3}}")
    assert "pid in spec.programs[0].attach.d.iter must be a positive number, got -3" \
        in caught.value.message


def _channel(tmp_path: Path, body: str):
    path = _manifest(tmp_path, channels=f"  channels:\n    dump_tcp: {body}\n")
    return parse_manifest(path).channels[0]


def test_iterator_channel_options(tmp_path: Path) -> None:
    ch = _channel(tmp_path, "{type: iterator}")
    assert (ch.type, dict(ch.options)) == ("iterator", {"interval": None, "format": "text"})
    for written, seconds in (("5", 5.0), ("2s", 2.0), ("500ms", 0.5), ("1m", 60.0), ("0.25", 0.25)):
        ch = _channel(tmp_path, f"{{type: iterator, interval: {written}, format: json}}")
        assert dict(ch.options) == {"interval": seconds, "format": "json"}
    with pytest.raises(ManifestError) as caught:
        _channel(tmp_path, "{type: iterator, interval: 1ms}")
    assert "interval in spec.channels.dump_tcp must be a duration of at least 10ms, got 1ms" \
        in caught.value.message
    with pytest.raises(ManifestError) as caught:
        _channel(tmp_path, "{type: iterator, format: xml}")
    assert "format" in caught.value.message and "json" in caught.value.hint + caught.value.message
    with pytest.raises(ManifestError) as caught:
        _channel(tmp_path, "{type: iterator, events: [{name: p}]}")
    assert "a iterator channel carries no events for processors" in caught.value.message


def test_iterator_text_becomes_records() -> None:
    data = b'first line\n\n  \n{"a": 1}\nno newline at the end'
    lines, count, bad = records(data, as_json=False)
    assert (count, bad) == (3, 0)
    assert lines == (b'{"line": "first line"}\n{"line": "{\\"a\\": 1}"}\n'
                     b'{"line": "no newline at the end"}\n')
    lines, count, bad = records(b'{"a": 1}\n[1, 2]\nnot json\n{"b": "\xff"}\n  {"c": 2}  \n',
                                as_json=True)
    assert (count, bad) == (2, 3)  # a list and bad UTF-8 are not records either: counted
    assert lines == b'{"a": 1}\n{"c": 2}\n'


def test_cgroup2_is_found_in_the_mounts() -> None:
    assert cgroup2_mounts(HYBRID) == [Path("/sys/fs/cgroup/unified")]
    assert cgroup2_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n") == [Path("/sys/fs/cgroup")]
    assert cgroup2_mounts("cgroup2 /a\\040b cgroup2 rw 0 0\n") == [Path("/a b")]
    assert cgroup2_mounts("proc /proc proc rw 0 0\n") == []


def test_a_cgroup_directory_must_be_under_a_cgroup2_mount(tmp_path: Path) -> None:
    mount = tmp_path / "unified"
    (mount / "app").mkdir(parents=True)
    assert check_cgroup_dir(mount / "app", [mount]) == (mount / "app").resolve()
    assert check_cgroup_dir(mount, [mount]) == mount.resolve()
    with pytest.raises(LoadError) as caught:
        check_cgroup_dir(tmp_path, [mount])
    assert caught.value.message == f"cgroup {tmp_path} is not a cgroup2 directory"
    assert caught.value.hint == f"cgroup programs attach to cgroup2 only; cgroup2 is mounted at {mount}"
    with pytest.raises(LoadError) as caught:
        check_cgroup_dir(mount / "nope", [mount])
    assert caught.value.message == f"cgroup {mount / 'nope'} does not exist or is not a directory"
    assert f"mkdir {mount / 'NAME'}" in caught.value.hint
