"""builder/quick.py: a build's stamp answers only while everything it read is unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from builder import quick

ROW = ("prog", "6.18.44-x/x86_64", "sha256:" + "a" * 64, 9120, "built in 0.40 s", "sha256:" + "b" * 64)


@pytest.fixture
def setup(tmp_path: Path):
    env = {"BPFDEPOT_HOME": str(tmp_path / "home"), "PATH": "/usr/bin"}
    src = tmp_path / "bundle" / "prog.bpf.c"
    src.parent.mkdir()
    src.write_text("int x;\n")
    manifest = src.parent / "manifest.yaml"
    manifest.write_text("kind: ebpfprogram\n")
    argv = ["build", "bundle"]
    quick.record(argv, env, tmp_path, [src, manifest], [ROW])
    return argv, env, tmp_path, src, manifest


def test_an_unchanged_build_replays_its_lines_as_cache_hits(setup) -> None:
    argv, env, cwd, _, _ = setup
    out = quick.replay(argv, env, cwd)
    assert out == quick.artifact_line(*ROW[:4], "cached", ROW[5])
    assert "cached" in out and "built in" not in out


def test_a_touched_or_removed_input_takes_the_full_path(setup) -> None:
    argv, env, cwd, src, manifest = setup
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert quick.replay(argv, env, cwd) is None
    quick.record(argv, env, cwd, [src, manifest], [ROW])
    assert quick.replay(argv, env, cwd) is not None
    manifest.unlink()
    assert quick.replay(argv, env, cwd) is None


def test_the_same_size_rewritten_in_place_is_seen(setup) -> None:
    argv, env, cwd, src, _ = setup
    st = src.stat()
    src.write_text("int y;\n")  # same size
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old time stamp put back
    assert quick.replay(argv, env, cwd) is None  # ctime still moved


def test_other_arguments_environment_or_folder_have_their_own_stamp(setup, tmp_path: Path) -> None:
    argv, env, cwd, _, _ = setup
    assert quick.replay([*argv, "--arch", "aarch64"], env, cwd) is None
    assert quick.replay(argv, {**env, "BPFDEPOT_KERNEL_BTF": "/x.btf"}, cwd) is None
    assert quick.replay(argv, env, tmp_path / "bundle") is None
    assert quick.replay(argv, env, cwd) is not None


def test_remote_stores_and_debug_never_use_stamps(setup) -> None:
    argv, env, cwd, src, manifest = setup
    s3 = {**env, "BPFDEPOT_STORE": "s3://bucket/prefix"}
    assert quick.stamp_path(argv, s3, cwd) is None
    quick.record(argv, s3, cwd, [src, manifest], [ROW])
    assert quick.replay(argv, s3, cwd) is None
    assert quick.replay([*argv, "--debug"], env, cwd) is None


def test_a_damaged_or_foreign_stamp_is_ignored(setup) -> None:
    argv, env, cwd, _, _ = setup
    path = quick.stamp_path(argv, env, cwd)
    path.write_text("{not json")
    assert quick.replay(argv, env, cwd) is None
    path.write_text(json.dumps({"v": quick.VERSION + 1, "files": [], "rows": [list(ROW)]}))
    assert quick.replay(argv, env, cwd) is None


def test_nothing_is_vouched_for_when_an_input_is_already_gone(tmp_path: Path) -> None:
    env = {"BPFDEPOT_HOME": str(tmp_path / "home")}
    quick.record(["build", "b"], env, tmp_path, [tmp_path / "missing.c"], [ROW])
    assert quick.replay(["build", "b"], env, tmp_path) is None


def test_the_home_resolves_as_settings_do(tmp_path: Path) -> None:
    from loader.model.settings import Settings

    for env in ({}, {"BPFDEPOT_HOME": "rel/home"}, {"BPFDEPOT_HOME": str(tmp_path / "abs")}):
        old = Path.cwd()
        os.chdir(tmp_path)
        try:
            assert quick.home_of(env, tmp_path) == Settings.from_env(env).home
        finally:
            os.chdir(old)
