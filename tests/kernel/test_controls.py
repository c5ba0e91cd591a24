"""Program controls in the running kernel: forms: (one form of a hook loads, each event counted
once), string and array knobs, maps: sizing (and the error for an unsized map), cpu:."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.kernel.conftest import ROOT, Running, bpfdepot, cli_env
from tests.kernel.test_attach import CPU_SAMPLE, bundle, link_progs_named, manifest

SWITCH = ROOT / "bpf" / "switch_count"

# Blocks on stdin until the probes are attached, then sleeps 50 times: 50 voluntary switches
# away (prev_state TASK_INTERRUPTIBLE), then one more as it exits (TASK_DEAD). If it reaches
# read() before the test's byte is in the pipe, that block is one more interruptible switch:
# 50 or 51, never anything else.
SLEEPER_C = r"""
#include <time.h>
#include <unistd.h>
int main(void) {
	char c;
	struct timespec ts = {0, 1000000};  /* 1 ms */
	if (read(0, &c, 1) != 1) return 1;
	for (int i = 0; i < 50; i++) nanosleep(&ts, NULL);
	return 0;
}
"""
TASK_INTERRUPTIBLE = 1


@pytest.fixture(scope="module")
def sleeper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("gcc"):
        pytest.skip("needs gcc to build the test's own sleeper")
    d = tmp_path_factory.mktemp("sleeper")
    (d / "s.c").write_text(SLEEPER_C)
    exe = d / f"bdsw{random.randrange(10**6):06d}"   # its comm: unique, under 16 bytes
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(d / "s.c")], check=True)
    return exe


def switches(home: Path, bundle_dir: Path, out: Path, exe: Path) -> tuple[list[dict], str, int]:
    """Run the bundle filtered by the sleeper's comm (a string knob); its events and stderr."""
    run = Running(home, str(bundle_dir), out, extra=["--set", f"targ_comm={exe.name}"])
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE)
    proc.communicate(b"x", timeout=30)
    done = run.stop()
    assert done.rc == 0 and proc.returncode == 0, done.stderr
    return [e for e in done.events if e["pid"] == proc.pid], done.stderr, proc.pid


def test_forms_attach_one_form_so_each_switch_counts_once(home: Path, tmp_path: Path,
                                                         sleeper: Path) -> None:
    events, stderr, _ = switches(home, SWITCH, tmp_path / "forms.jsonl", sleeper)
    assert "switch_count: form 1 of 2 (on_switch_btf) fits this kernel" in stderr
    assert "1 program(s) attached" in stderr
    slept = [e for e in events if e["prev_state"] & TASK_INTERRUPTIBLE]  # | TASK_FREEZABLE (6.1+)
    assert len(slept) in (50, 51)                        # the sleeps, and maybe the read()
    assert {e["form"] for e in events} == {1}           # tp_btf won; raw_tp never loaded
    assert {e["comm"] for e in events} == {sleeper.name}
    assert link_progs_named("on_switch_btf") == 0


def test_without_forms_both_programs_fire_and_every_switch_counts_twice(
        home: Path, tmp_path: Path, sleeper: Path) -> None:
    """What forms: prevents: the same sleeper, both forms loaded, 100 events for 50 sleeps."""
    b = bundle(tmp_path / "b", SWITCH, manifest("switch_count", "", "switch_events", "switch_event"))
    events, stderr, _ = switches(home, b, tmp_path / "both.jsonl", sleeper)
    assert "2 program(s) attached" in stderr
    slept = [e for e in events if e["prev_state"] & TASK_INTERRUPTIBLE]  # | TASK_FREEZABLE (6.1+)
    n = sum(e["form"] == 1 for e in slept)
    assert n in (50, 51) and sorted(e["form"] for e in slept) == [1] * n + [2] * n


def test_string_knob_longer_than_its_array_is_refused(home: Path) -> None:
    done = bpfdepot(home, "run", str(SWITCH), "--set", "targ_comm=a-name-of-16-byte",
                    "--duration", "1")
    assert done.returncode == 5, done.stderr
    assert ("'a-name-of-16-byte' is 17 bytes: knob 'targ_comm' of 'switch_count' is char[16], "
            "which holds at most 15 bytes and a NUL") in done.stderr
    too_many = bpfdepot(home, "run", str(CPU_SAMPLE), "--set", "targ_pids=1,2,3,4,5,6,7,8,9",
                        "--duration", "1")
    assert too_many.returncode == 5, too_many.stderr
    assert "knob 'targ_pids' of 'cpu_sample' holds 8 values, 9 given" in too_many.stderr
    assert link_progs_named("on_switch_btf") == 0 and link_progs_named("do_sample") == 0


UNSIZED = "attach: {do_sample: {perf_event: {frequency: 99}}}"
SIZED = 'maps: {samples_by_pid: {max_entries: "ncpus * 1024"}}\n' + UNSIZED


def test_a_map_sized_from_user_space_needs_maps_in_the_manifest(home: Path, tmp_path: Path) -> None:
    sized = bundle(tmp_path / "sized", CPU_SAMPLE, manifest("cpu_sample", SIZED, "cpu_samples",
                                                             "cpu_sample_event"))
    assert bpfdepot(home, "build", str(sized)).returncode == 0
    unsized = bundle(tmp_path / "unsized", CPU_SAMPLE, manifest("cpu_sample", UNSIZED,
                                                                 "cpu_samples", "cpu_sample_event"))
    # the same sources are built already: the run's plan refuses it before anything loads
    done = bpfdepot(home, "run", str(unsized), "--duration", "1")
    assert done.returncode == 2, done.stderr
    assert ("map 'samples_by_pid' of 'cpu_sample' (hash) is declared with max_entries 0: it is "
            "sized from user space, and the manifest does not size it") in done.stderr
    assert 'maps: {samples_by_pid: {max_entries: "ncpus * 1024"}}' in done.stderr
    assert link_progs_named("do_sample") == 0
    # a fresh store: the build itself refuses it, naming the map and the key
    fresh = bpfdepot(tmp_path / "fresh", "build", str(unsized),
                     env=cli_env(tmp_path / "fresh"))
    assert fresh.returncode == 8, fresh.stderr
    assert "map 'samples_by_pid'" in fresh.stderr and "max_entries 0" in fresh.stderr


def test_map_sizes_are_set_before_load(home: Path, tmp_path: Path) -> None:
    b = bundle(tmp_path / "b", CPU_SAMPLE, manifest(
        "cpu_sample", 'maps: {samples_by_pid: {max_entries: "ncpus * 512 + 3"}}\n' + UNSIZED,
        "cpu_samples", "cpu_sample_event"))
    run = Running(home, str(b), tmp_path / "s.jsonl")
    try:
        import json
        out = subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True,
                             check=True)
        sizes = [m["max_entries"] for m in json.loads(out.stdout) if m.get("name") == "samples_by_pid"]
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    ncpus = int(Path("/sys/devices/system/cpu/possible").read_text().strip().split("-")[-1]) + 1
    assert ncpus * 512 + 3 in sizes


def test_cpu_v3_is_a_build_flag_and_part_of_the_key(home: Path, tmp_path: Path) -> None:
    from builder.compile import Target, plan_build
    from builder.toolchain import find_toolchain
    from loader.kernel.probe import running_kernel
    from loader.model.manifest import load_bundle

    keys = {}
    for cpu in ("", "v3"):
        b = bundle(tmp_path / (cpu or "default"), SWITCH, manifest(
            "switch_count", f"cpu: {cpu}\nforms: [[on_switch_btf], [on_switch_raw]]" if cpu else
            "forms: [[on_switch_btf], [on_switch_raw]]", "switch_events", "switch_event"))
        m = load_bundle(b)
        plan = plan_build(m, m.kernel_programs[0],
                          Target(identity=running_kernel(), btf=Path("/sys/kernel/btf/vmlinux")),
                          find_toolchain(home / "cache"))
        keys[cpu] = (plan.key, plan.source_digest, plan.flags)
        if cpu:
            done = bpfdepot(home, "run", str(b), "--duration", "0.5")
            assert done.returncode == 0, done.stderr
    assert "-mcpu=v3" in keys["v3"][2] and not any(f.startswith("-mcpu") for f in keys[""][2])
    assert keys["v3"][0] != keys[""][0] and keys["v3"][1] != keys[""][1]


def test_unknown_cpu_is_a_manifest_error(home: Path, tmp_path: Path) -> None:
    b = bundle(tmp_path / "b", SWITCH, manifest("switch_count", "cpu: v4", "switch_events",
                                                "switch_event"))
    done = bpfdepot(home, "run", str(b), "--duration", "1")
    assert done.returncode == 2, done.stderr
    assert "unknown cpu 'v4' in spec.programs[0]; expected one of: v2, v3" in done.stderr
