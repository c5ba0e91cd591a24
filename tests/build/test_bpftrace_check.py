"""`bpfdepot build` of bpftrace scripts against the reference kernels: the policy, the probes
and the struct fields are checked per target, and the refused kernels are named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loader.artifacts.store import open_store
from loader.model.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT.parent / "shared" / "kernels"
K61, K612, K618 = (KERNELS / f"{name}.btf" for name in
                   ("6.1.0-50-amd64", "6.12.100+deb12-amd64", "6.18.44-fc-v669"))

if not shutil.which("bpftrace"):
    pytest.skip("bpftrace is not installed (apt-get install -y bpftrace)", allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("bpftrace 0.17 only starts as root, even for --emit-elf", allow_module_level=True)
if not all(k.is_file() for k in (K61, K612, K618)):
    pytest.skip(f"reference kernels missing in {KERNELS}", allow_module_level=True)

SENDMSG = "tracepoint:tcp:tcp_sendmsg_locked\n{\n  @goal = max(args->size_goal);\n}\n"
# cfs_rq.nr_running (6.1, 6.12) became nr_queued in 6.18 (CATALOG §0.2)
NR_QUEUED = ("tracepoint:syscalls:sys_enter_getppid\n{\n  $t = (struct task_struct *)curtask;\n"
             "  @q = max($t->se.cfs_rq->nr_queued);\n}\n")


def bundle(tmp_path: Path, script: str) -> Path:
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "x.bt").write_text(script)
    (folder / "manifest.yaml").write_text(
        "kind: ebpfprogram\nname: bt\nspec:\n  programs:\n"
        "    - {name: x, path: file://./x.bt, type: bpftrace_object}\n")
    return folder


def build(tmp_path: Path, folder: Path, *kernels: Path) -> subprocess.CompletedProcess[str]:
    args = [a for k in kernels for a in ("--kernel-btf", str(k))]
    return subprocess.run([sys.executable, "-m", "builder.cli", "build", str(folder), *args],
                          cwd=ROOT, env=dict(os.environ, BPFDEPOT_HOME=str(tmp_path / "home")),
                          capture_output=True, text=True, timeout=300)


def test_a_tracepoint_only_618_has_builds_for_618_and_is_refused_for_61_and_612(
        tmp_path: Path) -> None:
    folder = bundle(tmp_path, SENDMSG)
    done = build(tmp_path, folder, K61, K612, K618)
    assert done.returncode == 8, done.stderr
    script = folder / "x.bt"
    assert done.stderr.splitlines()[0] == "bpfdepot: error: " + (
        f"{script}:1: tracepoint tcp:tcp_sendmsg_locked (tracepoint:tcp:tcp_sendmsg_locked) is "
        f"not in 6.1.0-50-amd64/x86_64; {script}:1: tracepoint tcp:tcp_sendmsg_locked "
        "(tracepoint:tcp:tcp_sendmsg_locked) is not in 6.12.100+deb12-amd64/x86_64")
    built = done.stdout.splitlines()
    assert len(built) == 1 and built[0].split()[1] == "6.18.44-fc-v669/x86_64"
    # the one it passed for is stored with its meta: a second build finds it
    again = build(tmp_path, folder, K618)
    assert again.returncode == 0 and "cached" in again.stdout
    store = open_store(Settings.from_env({"BPFDEPOT_HOME": str(tmp_path / "home")}))
    meta = json.loads(store.read_blob(again.stdout.split()[-1]))
    assert store.read_blob(meta["digest"]) == SENDMSG.encode()  # the checked script itself
    assert (meta["kind"], meta["extra"]["verdict"]) == ("bpftrace_object", "ok")
    assert meta["toolchain"]["bpftrace"].startswith("v0.")
    assert meta["programs"] == [{"name": "tracepoint:tcp:tcp_sendmsg_locked", "line": 1}]


def test_a_struct_field_missing_on_61_is_refused_naming_the_field(tmp_path: Path) -> None:
    done = build(tmp_path, bundle(tmp_path, NR_QUEUED), K61, K618)
    assert done.returncode == 8, done.stderr
    first = done.stderr.splitlines()[0].removeprefix("bpfdepot: error: ")
    assert first == (f"{tmp_path / 'bundle' / 'x.bt'}:4: Struct/union of type 'struct cfs_rq' "
                     "does not contain a field named 'nr_queued' in 6.1.0-50-amd64/x86_64 "
                     "(field 'nr_queued')")
    assert [line.split()[1] for line in done.stdout.splitlines()] == ["6.18.44-fc-v669/x86_64"]


def test_system_is_refused_at_build_with_its_line(tmp_path: Path) -> None:
    script = 'BEGIN\n{\n  // system() here is a comment\n  system("rm -rf /tmp/x");\n}\n'
    done = build(tmp_path, bundle(tmp_path, script), K618)
    assert done.returncode == 8
    assert done.stderr.splitlines()[0] == "bpfdepot: error: " + (
        f"{tmp_path / 'bundle' / 'x.bt'}:4: system() is not allowed in a bpftrace program "
        "bpfdepot runs: it acts on every node as root")
    assert done.stdout == ""


def test_the_catalog_example_passes_for_every_reference_kernel(tmp_path: Path) -> None:
    done = build(tmp_path, ROOT / "bpf" / "getppid_bt", K61, K612, K618)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3
