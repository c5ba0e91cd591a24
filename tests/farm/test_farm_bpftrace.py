"""bpftrace programs in the farm: `bpfdepot submit` checks a .bt for every kernel of the catalog
(policy, tracepoints, struct fields against each kernel's BTF) on real workers, stores the
checked script per kernel, and `bpfdepot lock` pins it like an object."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from loader.artifacts.store import open_store
from loader.model.settings import Settings
from tests.farm.conftest import cli, copy_bundle

if not shutil.which("bpftrace"):
    pytest.skip("bpftrace is not installed (apt-get install -y bpftrace)", allow_module_level=True)

# cfs_rq.nr_running (6.1, 6.12) became nr_queued in 6.18 (CATALOG §0.2); as in
# tests/build/test_bpftrace_check.py
NR_QUEUED = ("tracepoint:syscalls:sys_enter_getppid\n{\n  $t = (struct task_struct *)curtask;\n"
             "  @q = max($t->se.cfs_rq->nr_queued);\n}\n")


def _rows(stdout: str) -> dict[str, list[str]]:
    """The result lines of `submit --wait`, by kernel release."""
    return {line.split()[1]: line.split() for line in stdout.splitlines() if line.strip()}


def _script_bundle(tmp_path: Path, name: str, script: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "x.bt").write_text(script)
    (folder / "manifest.yaml").write_text(
        f"kind: ebpfprogram\nname: {name}\nspec:\n  programs:\n"
        "    - {name: x, path: file://./x.bt, type: bpftrace_object}\n")
    return folder


def test_submit_checks_a_bt_for_every_kernel_then_lock_pins_it(farm, tmp_path: Path) -> None:
    env, releases = farm["env"], farm["releases"]
    bundle = copy_bundle("getppid_bt", tmp_path)
    script = bundle / "getppid.bt"
    script.write_text(f"// {tmp_path.name}\n" + script.read_text())  # a key never seen
    first = cli(env, "submit", str(bundle), "--kernels", "all", "--wait")
    assert first.returncode == 0, first.stderr
    rows = _rows(first.stdout)
    assert sorted(rows) == sorted(releases)
    assert {r[0] for r in rows.values()} == {"getppid"}
    assert {r[5] for r in rows.values()} == {"built"}
    # the artifact is the checked script itself, its meta the per-kernel verdict
    store = open_store(Settings.from_env(env))
    for release, row in rows.items():
        assert store.read_blob(row[2]) == script.read_bytes()
        meta = json.loads(store.read_blob(row[-1]))
        assert (meta["kind"], meta["digest"], meta["target"]["release"]) == (
            "bpftrace_object", row[2], release)
        assert meta["extra"]["verdict"] == "ok"
        assert meta["toolchain"]["bpftrace"].startswith("v0.")
        assert meta["programs"] == [{"name": "tracepoint:syscalls:sys_enter_getppid", "line": 4}]
    again = cli(env, "submit", str(bundle), "--kernels", "all", "--wait")
    assert again.returncode == 0, again.stderr
    assert {r[5] for r in _rows(again.stdout).values()} == {"cached"}

    locked = cli(env, "lock", str(bundle), "--kernels", "all")
    assert locked.returncode == 0, locked.stderr
    pins = json.loads((bundle / "bpfdepot.lock").read_text())["pins"]
    assert sorted((p["program"], p["release"], p["artifact"], p["meta"]) for p in pins) == sorted(
        ("getppid", release, row[2], row[-1]) for release, row in rows.items())
    run = cli(env, "run", str(bundle), "--locked", "--duration", "0.5")
    assert run.returncode == 0, run.stderr
    assert "1 program(s) attached" in run.stderr and "checking" not in run.stderr


def test_a_field_only_618_has_is_built_for_618_and_fails_for_61_and_612(farm,
                                                                       tmp_path: Path) -> None:
    env, releases = farm["env"], farm["releases"]
    bundle = _script_bundle(tmp_path, "nr_queued", f"// {tmp_path.name}\n" + NR_QUEUED)
    done = cli(env, "submit", str(bundle), "--kernels", "all", "--wait")
    assert done.returncode == 8, done.stderr
    rows = _rows(done.stdout)
    assert sorted(rows) == sorted(releases)
    old = {r for r in releases if r.startswith(("6.1.", "6.12."))}
    assert len(old) == 2
    assert {r for r, row in rows.items() if row[2] == "FAILED"} == old
    assert {rows[r][5] for r in set(releases) - old} == {"built"}, done.stdout
    script = bundle.resolve() / "x.bt"
    for release in old:
        # line 5: the comment above the script moved it down by one
        assert (f"  {script}:5: Struct/union of type 'struct cfs_rq' does not contain a field "
                f"named 'nr_queued' in {release}/x86_64 (field 'nr_queued')") in done.stderr
    assert "cache/bundles" not in done.stderr and str(farm["home"]) not in done.stderr
    # no lock while a kernel has no check: nothing is written
    unlocked = cli(env, "lock", str(bundle), "--kernels", "all")
    assert unlocked.returncode == 3
    assert "cannot lock 'nr_queued': not built for 2 target(s)" in unlocked.stderr
    assert not (bundle / "bpfdepot.lock").exists()


def test_a_script_calling_system_is_refused_by_the_farm_with_its_line(farm,
                                                                      tmp_path: Path) -> None:
    script = f'// {tmp_path.name}\nBEGIN\n{{\n  system("id");\n}}\n'
    bundle = _script_bundle(tmp_path, "calls_system", script)
    done = cli(farm["env"], "submit", str(bundle), "--kernels", f"release={os.uname().release}",
               "--wait")
    assert done.returncode == 8, done.stderr
    assert re.fullmatch(rf"x\s+{re.escape(os.uname().release)}\s+FAILED\n", done.stdout)
    assert (f"  {bundle.resolve() / 'x.bt'}:4: system() is not allowed in a bpftrace program "
            "bpfdepot runs: it acts on every node as root") in done.stderr
