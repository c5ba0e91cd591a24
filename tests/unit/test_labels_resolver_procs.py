"""Processes remembered past their exit (loader/labels/procs.py ProcTracker) and the resolver's
fallback to them, with the kernel's exec/exit table faked as a dict and a fake clock (the real
table is tests/kernel/test_labels.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from loader.labels import LabelResolver, LabelSettings
from loader.labels.procs import ProcTracker

S = 1_000_000_000  # ns


class FakeTable:
    def __init__(self) -> None:
        self.rows: dict[int, tuple[int, int]] = {}
        self.closed = False

    def lookup(self, tgid: int) -> tuple[int, int] | None:
        return self.rows.get(tgid)

    def tgids(self) -> Iterator[int]:
        yield from list(self.rows)

    def remove(self, tgid: int) -> None:
        self.rows.pop(tgid, None)

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000 * S

    def __call__(self) -> int:
        return self.now


def test_an_exited_process_is_kept_for_the_grace_period_then_swept() -> None:
    table, clock = FakeTable(), Clock()
    tracker = ProcTracker(table, grace=30.0, clock=clock)
    table.rows = {10: (7, 0), 11: (8, clock.now - 29 * S), 12: (9, clock.now - 31 * S)}
    assert [tracker.cgroup_id(p) for p in (10, 11, 12, 13)] == [7, 8, None, None]
    assert (tracker.found, tracker.expired) == (2, 1)
    assert tracker.sweep() == 1 and set(table.rows) == {10, 11}
    clock.now += 2 * S
    assert tracker.cgroup_id(11) is None and tracker.sweep() == 1
    assert set(table.rows) == {10} and tracker.swept == 2  # the living are never swept
    tracker.close()
    assert table.closed


def test_the_resolver_falls_back_to_the_table_when_proc_has_no_entry(tmp_path: Path) -> None:
    (tmp_path / "proc" / "40").mkdir(parents=True)
    (tmp_path / "proc" / "40" / "cgroup").write_text("0::/system.slice/moved.service\n")
    (tmp_path / "cg" / "system.slice" / "a.service").mkdir(parents=True)
    (tmp_path / "cg" / "system.slice" / "moved.service").mkdir(parents=True)
    unit = os.stat(tmp_path / "cg" / "system.slice" / "a.service").st_ino
    r = LabelResolver(LabelSettings(root=tmp_path, cgroup2=tmp_path / "cg", proc=tmp_path / "proc",
                                    track_processes=False))
    table, clock = FakeTable(), Clock()
    assert r.cgroup_of_pid(41) is None  # no table: /proc only
    r.procs = ProcTracker(table, clock=clock)
    table.rows = {40: (unit, 0), 41: (unit, clock.now - S), 42: (unit, clock.now - 60 * S)}
    assert r.cgroup_of_pid(40) == "/system.slice/moved.service"  # alive: /proc says where now
    assert r.cgroup_of_pid(41) == "/system.slice/a.service"       # exited 1 s ago
    assert r.labels_for_pid(41) == {"unit": "a.service", "slice": "system.slice"}
    assert r.cgroup_of_pid(42) is None                            # exited a minute ago
    assert r.stats()["by_exit"] == 2


def test_a_pod_named_after_its_cgroup_was_first_seen_is_resolved_again(tmp_path: Path) -> None:
    """A pod cgroup seen before the kubelet made its log directory is not cached for good:
    a --pod filter matches by those names."""
    uid = "7d3f1c2a-1b2c-4d5e-8f90-0123456789ab"
    pod = ("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
           + uid.replace("-", "_") + ".slice")
    (tmp_path / "cg" / pod).mkdir(parents=True)
    r = LabelResolver(LabelSettings(root=tmp_path / "root", cgroup2=tmp_path / "cg",
                                    track_processes=False, min_rescan=0.0, retry_incomplete=0.0))
    cg = os.stat(tmp_path / "cg" / pod).st_ino
    assert r.labels_for_cgroup_id(cg) == {"pod_uid": uid}
    (tmp_path / "root" / "var/log/pods" / f"shop_cart-0_{uid}" / "cart").mkdir(parents=True)
    assert r.labels_for_cgroup_id(cg) == {"pod_uid": uid, "namespace": "shop", "pod": "cart-0",
                                          "container": "cart"}
