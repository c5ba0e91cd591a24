"""Business labels on the real cgroup2 tree: directories named like systemd and kubepods trees,
fixture kubelet/containerd files under a temp root, a real process moved between cgroups.

The cgroup id used is the directory inode: the last test checks it is the value
bpf_get_current_cgroup_id() returns, with a real program's events stamped by the Stamper.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loader.labels import (
    CgroupWatcher,
    LabelResolver,
    LabelSettings,
    Stamper,
    find_cgroup2_mount,
)
from tests.kernel.conftest import Running, held_prog_ids

TREE = Path(__file__).resolve().parents[1] / "unit" / "labels_tree"
CART = "a1" * 32
SHOP_UID = "7d3f1c2a-1b2c-4d5e-8f90-0123456789ab"
POD = ("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
       + SHOP_UID.replace("-", "_") + ".slice")
SCOPE = f"{POD}/cri-containerd-{CART}.scope"
UNIT = "system.slice/shop-api.service/worker"
OTHER = "system.slice/other.service"
CART_LABELS = {"container_id": CART, "runtime": "containerd", "pod_uid": SHOP_UID,
               "container": "cart", "pod": "cart-7c9f8-x2x4q", "namespace": "shop",
               "image": "registry.local/shop/cart:1.4.2", "container_type": "container"}


def wait_for(cond: Callable[[], bool], timeout: float = 1.0) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, "not seen within the time limit"
        time.sleep(0.005)
    return time.monotonic() - start


@pytest.fixture
def cg2(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(cgroup2 mount, a fresh base directory under it); every process put below the base goes
    back to the root and every directory is removed at the end."""
    mount = find_cgroup2_mount(Path("/proc/self/mounts").read_text())
    if mount is None:
        pytest.skip("no cgroup2 mount on this host")
    base = mount / f"bpfdepot-labels-{os.getpid()}"
    base.mkdir()
    try:
        yield mount, base
    finally:
        for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda e: -len(e[0])):
            for pid in (Path(dirpath) / "cgroup.procs").read_text().split():
                (mount / "cgroup.procs").write_text(pid)
            os.rmdir(dirpath)


@pytest.fixture
def resolver(tmp_path: Path, cg2: tuple[Path, Path]) -> LabelResolver:
    shutil.copytree(TREE, tmp_path / "root")
    # min_rescan of an hour: only inotify can make a new cgroup known during the test
    return LabelResolver(LabelSettings(root=tmp_path / "root", cgroup2=cg2[0], min_rescan=3600.0))


def mkcg(base: Path, rel: str) -> int:
    (base / rel).mkdir(parents=True)
    return os.stat(base / rel).st_ino


def test_cgroups_made_after_start_are_labelled_then_forgotten(
        resolver: LabelResolver, cg2: tuple[Path, Path]) -> None:
    _mount, base = cg2
    with CgroupWatcher(resolver) as watcher:
        assert not watcher.degraded
        unit, other, scope = mkcg(base, UNIT), mkcg(base, OTHER), mkcg(base, SCOPE)
        for cg in (unit, other, scope):
            wait_for(lambda cg=cg: resolver.index.path(cg) is not None)
        assert resolver.labels_for_cgroup_id(unit) == {"unit": "shop-api.service",
                                                       "slice": "system.slice"}
        assert resolver.labels_for_cgroup_id(other) == {"unit": "other.service",
                                                        "slice": "system.slice"}
        assert resolver.labels_for_cgroup_id(scope) == CART_LABELS
        (base / SCOPE).rmdir()
        wait_for(lambda: resolver.index.path(scope) is None)
        assert resolver.labels_for_cgroup_id(scope) == {}
        assert watcher.rescans == 1  # inotify did it all: only the initial scan ran


def test_process_moved_between_cgroups_gets_new_labels(
        resolver: LabelResolver, cg2: tuple[Path, Path]) -> None:
    _mount, base = cg2
    mkcg(base, UNIT)
    mkcg(base, SCOPE)
    child = subprocess.Popen(["sleep", "30"])
    try:
        with CgroupWatcher(resolver):
            assert resolver.labels_for_pid(child.pid) == {}  # still in the cgroup2 root
            (base / UNIT / "cgroup.procs").write_text(str(child.pid))
            assert resolver.labels_for_pid(child.pid) == {"unit": "shop-api.service",
                                                          "slice": "system.slice"}
            (base / SCOPE / "cgroup.procs").write_text(str(child.pid))
            assert resolver.labels_for_pid(child.pid) == CART_LABELS
            assert resolver.cgroup_of_pid(child.pid) == f"/{base.name}/{SCOPE}"
    finally:
        child.kill()
        child.wait()
    assert resolver.labels_for_pid(child.pid) == {}  # reaped: gone


CALLER = """
import os, sys
for line in sys.stdin:
    for _ in range(int(line)):
        os.getppid()
    print("ok", flush=True)
"""


def test_kernel_events_get_the_labels_of_the_cgroup_they_came_from(
        home: Path, tmp_path: Path, resolver: LabelResolver, cg2: tuple[Path, Path]) -> None:
    """A process makes 5 getppid() calls in a unit's worker cgroup, then 7 in a pod's container
    scope; every event carries the kernel's cgroup id, and stamping gives exactly 5 records with
    the unit's labels then 7 with the pod's: the index's ids are the kernel's ids."""
    _mount, base = cg2
    mkcg(base, UNIT)
    mkcg(base, SCOPE)
    caller = subprocess.Popen([sys.executable, "-c", CALLER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        out = tmp_path / "events.jsonl"
        run = Running(home, "tests/kernel/bundles/cgroup_events", out,
                      extra=["--set", f"target_tgid={caller.pid}"])
        with CgroupWatcher(resolver):
            for where, calls in ((UNIT, 5), (SCOPE, 7)):
                (base / where / "cgroup.procs").write_text(str(caller.pid))
                caller.stdin.write(f"{calls}\n")
                caller.stdin.flush()
                assert caller.stdout.readline() == "ok\n"
            done = run.stop()
            assert done.rc == 0, done.stderr
            stamper = Stamper(resolver, by_pid=False)
            lines = out.read_bytes()
            records = [json.loads(x) for x in stamper.stamp(lines).splitlines()]
    finally:
        caller.kill()
        caller.wait()
    assert [r["seq"] for r in records] == list(range(12))
    assert {r["pid"] for r in records} == {caller.pid}
    unit = {"unit": "shop-api.service", "slice": "system.slice"}
    assert [r["labels"] for r in records] == [unit] * 5 + [CART_LABELS] * 7
    assert records[0]["cgroup_id"] == os.stat(base / UNIT).st_ino
    assert (stamper.labelled, stamper.unlabelled) == (12, 0)


def test_run_with_labels_writes_them_into_every_record(home: Path, tmp_path: Path,
                                                        cg2: tuple[Path, Path]) -> None:
    """``bpfdepot run --labels ROOT`` stamps each record in the run itself: a process makes 5
    calls in a unit's worker cgroup and 7 in a pod's container scope (kubelet and containerd
    files under ROOT), moved between them mid-run; the output file holds the unit's labels on
    the first 5 records and the pod's on the next 7, and the run says how many it labelled."""
    _mount, base = cg2
    root = tmp_path / "root"
    shutil.copytree(TREE, root)
    mkcg(base, UNIT)
    mkcg(base, SCOPE)
    caller = subprocess.Popen([sys.executable, "-c", CALLER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        run = Running(home, "tests/kernel/bundles/cgroup_events", tmp_path / "events.jsonl",
                      extra=["--set", f"target_tgid={caller.pid}", "--labels", str(root)])
        for where, calls in ((UNIT, 5), (SCOPE, 7)):
            (base / where / "cgroup.procs").write_text(str(caller.pid))
            caller.stdin.write(f"{calls}\n")
            caller.stdin.flush()
            assert caller.stdout.readline() == "ok\n"
        done = run.stop()
    finally:
        caller.kill()
        caller.wait()
    assert done.rc == 0, done.stderr
    assert [r["seq"] for r in done.events] == list(range(12))
    unit = {"unit": "shop-api.service", "slice": "system.slice"}
    assert [r["labels"] for r in done.events] == [unit] * 5 + [CART_LABELS] * 7
    assert "labels: 12 record(s) labelled, 0 without a cgroup, unit or pod" in done.stderr


def _short_lived(cgroup: Path, marker: Path) -> int:
    """A shell that moves itself into ``cgroup`` and execs ``cat marker``: one open of the
    marker, then it exits; returns its pid once it has exited and been reaped."""
    script = f"echo $$ > {cgroup}/cgroup.procs && exec cat {marker}"
    proc = subprocess.Popen(["/bin/sh", "-c", script], stdout=subprocess.DEVNULL)
    assert proc.wait(timeout=10) == 0
    assert not Path(f"/proc/{proc.pid}").exists()
    return proc.pid


def test_a_process_that_exited_before_its_record_was_read_keeps_its_labels(
        home: Path, tmp_path: Path, cg2: tuple[Path, Path]) -> None:
    """A short-lived process in a unit's cgroup opens a file and exits; its record (opensnoop:
    a pid, no cgroup id) is stamped after the process was reaped, so /proc knows nothing: the
    exec/exit table the watcher keeps in the kernel still gives the unit, for 30 s. Without the
    table the same record gets no labels. Stopping the watcher detaches the table's programs."""
    mount, base = cg2
    mkcg(base, UNIT)
    marker = tmp_path / "marker"
    marker.write_text("x")
    settings = {"root": tmp_path, "cgroup2": mount, "min_rescan": 3600.0}
    tracked = LabelResolver(LabelSettings(**settings))
    untracked = LabelResolver(LabelSettings(**settings, track_processes=False))
    out = tmp_path / "events.jsonl"
    before = held_prog_ids(os.getpid())
    with CgroupWatcher(tracked) as watcher, CgroupWatcher(untracked):
        assert watcher.procs is not None and not watcher.degraded
        mine = held_prog_ids(os.getpid()) - before
        assert len(mine) == 2  # sched_process_exec and sched_process_exit
        run = Running(home, "bpf/opensnoop", out)
        try:
            pid = _short_lived(base / UNIT, marker)
        finally:
            done = run.stop()
        assert done.rc == 0, done.stderr
        lines = b"".join(line + b"\n" for line in out.read_bytes().splitlines()
                         if str(marker).encode() in line)
        stamped = [json.loads(x) for x in Stamper(tracked).stamp(lines).splitlines()]
        bare = [json.loads(x) for x in Stamper(untracked).stamp(lines).splitlines()]
    assert [(r["pid"], r["filename"]) for r in stamped] == [(pid, str(marker))]
    assert stamped[0]["labels"] == {"unit": "shop-api.service", "slice": "system.slice"}
    assert tracked.stats()["by_exit"] == 1
    assert "labels" not in bare[0]  # /proc alone: the process is gone
    assert not mine & held_prog_ids(os.getpid())


def test_run_with_labels_labels_a_short_lived_process(home: Path, tmp_path: Path,
                                                      cg2: tuple[Path, Path]) -> None:
    """The same through ``bpfdepot run --labels``: the run starts the exec/exit table itself,
    and the record of a process that exited right after its open carries its unit."""
    _mount, base = cg2
    root = tmp_path / "root"
    shutil.copytree(TREE, root)
    mkcg(base, UNIT)
    marker = tmp_path / "marker"
    marker.write_text("x")
    run = Running(home, "bpf/opensnoop", tmp_path / "events.jsonl", extra=["--labels", str(root)])
    try:
        pid = _short_lived(base / UNIT, marker)
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    assert "exec/exit tracking off" not in done.stderr
    mine = [e for e in done.events if e["filename"] == str(marker)]
    assert [(e["pid"], e["labels"]) for e in mine] == \
        [(pid, {"unit": "shop-api.service", "slice": "system.slice"})]
