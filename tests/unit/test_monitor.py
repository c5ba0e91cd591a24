"""The process filter's user-space half (loader/monitor.py): requests, filter files, and what
the monitor maps hold, on a directory tree standing in for the cgroup2 mount and maps faked as
dicts (the kernel half is tests/kernel/test_filter.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loader.errors import ManifestError
from loader.monitor import (FILTER_CGROUPS, FILTER_PIDS, FilterRequest, Monitor, filter_request,
                            parse_filter_doc, unit_dirs)


class FakeMap:
    def __init__(self) -> None:
        self.data: dict[int, int] = {}
        self.writes = 0
        self.closed = False

    def put(self, key: int, label: int) -> None:
        self.data[key] = label
        self.writes += 1

    def remove(self, key: int) -> None:
        self.data.pop(key, None)
        self.writes += 1

    def items(self) -> dict[int, int]:
        return dict(self.data)

    def close(self) -> None:
        self.closed = True


def _monitor(tmp_path: Path, request: FilterRequest) -> tuple[Monitor, FakeMap, FakeMap, list[str]]:
    said: list[str] = []
    cg, pids = FakeMap(), FakeMap()
    return Monitor(request, (cg, pids), root=tmp_path, say=said.append), cg, pids, said


def _dead_pid() -> int:
    pid = 4_000_000
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return pid


def test_mode_follows_what_is_asked() -> None:
    assert FilterRequest().mode == 0 and not FilterRequest().active
    assert FilterRequest(units=("a.service",)).mode == FILTER_CGROUPS
    assert FilterRequest(pids=(1,)).mode == FILTER_PIDS
    assert FilterRequest(cgroups=("x",), pids=(1,)).mode == FILTER_CGROUPS | FILTER_PIDS
    # a filter file may add either kind later
    assert FilterRequest(file=Path("f.yaml")).mode == FILTER_CGROUPS | FILTER_PIDS


def test_containers_and_pods_are_not_yet() -> None:
    with pytest.raises(ManifestError, match=r"--pod shop/api-0: filtering by pod is not "
                                            r"available yet") as err:
        filter_request(pods=["shop/api-0"])
    assert "--cgroup" in err.value.hint
    with pytest.raises(ManifestError, match="--container abc: filtering by container"):
        filter_request(containers=["abc"])


def test_bad_units_and_pids_are_refused() -> None:
    with pytest.raises(ManifestError, match="'shop-api' is not a systemd unit name"):
        filter_request(units=["shop-api"])
    with pytest.raises(ManifestError, match="'system.slice/x.service' is not a systemd unit"):
        filter_request(units=["system.slice/x.service"])
    with pytest.raises(ManifestError, match="'abc' is not a process id"):
        filter_request(pids=["abc"])
    assert filter_request(pids=["42"], units=["a.scope"]) == FilterRequest(pids=(42,),
                                                                          units=("a.scope",))


def test_filter_file_documents() -> None:
    assert parse_filter_doc({"units": ["a.service"], "pids": [3]}, "f") == \
        FilterRequest(units=("a.service",), pids=(3,))
    assert parse_filter_doc(None, "f") == FilterRequest()
    with pytest.raises(ManifestError, match="f: unknown filter key 'unit'") as err:
        parse_filter_doc({"unit": ["a.service"]}, "f")
    assert err.value.hint == "did you mean 'units'?"
    with pytest.raises(ManifestError, match="f: filtering by pods is not available yet"):
        parse_filter_doc({"pods": ["ns/p"]}, "f")
    with pytest.raises(ManifestError, match="f: 'pids' is a list"):
        parse_filter_doc({"pids": 3}, "f")
    with pytest.raises(ManifestError, match="f: a filter is a mapping"):
        parse_filter_doc(["a.service"], "f")


def test_unit_dirs_are_found_by_name_anywhere_below_the_root(tmp_path: Path) -> None:
    (tmp_path / "system.slice" / "shop.service" / "worker").mkdir(parents=True)
    (tmp_path / "user.slice" / "u.slice" / "shop.service").mkdir(parents=True)
    (tmp_path / "system.slice" / "other.service").mkdir()
    assert unit_dirs(tmp_path, "shop.service") == [
        tmp_path / "system.slice" / "shop.service", tmp_path / "user.slice" / "u.slice" / "shop.service"]
    assert unit_dirs(tmp_path, "none.service") == []


def test_refresh_fills_the_maps_with_labels_in_the_order_asked(tmp_path: Path) -> None:
    unit = tmp_path / "system.slice" / "shop.service"
    unit.mkdir(parents=True)
    (tmp_path / "pod").mkdir()
    request = FilterRequest(units=("shop.service",), cgroups=("pod",), pids=(os.getpid(),))
    monitor, cg, pids, said = _monitor(tmp_path, request)
    monitor.check()
    monitor.refresh()
    assert cg.data == {unit.stat().st_ino: 1, (tmp_path / "pod").stat().st_ino: 2}
    assert pids.data == {os.getpid(): 3}
    assert said == [f"bpfdepot: filter: label 1 = unit shop.service: cgroup id {unit.stat().st_ino}",
                    f"bpfdepot: filter: label 2 = cgroup pod: cgroup id "
                    f"{(tmp_path / 'pod').stat().st_ino}",
                    f"bpfdepot: filter: label 3 = pid {os.getpid()}: monitored"]
    writes = cg.writes + pids.writes
    monitor.refresh()  # nothing changed: no map writes, nothing said
    assert cg.writes + pids.writes == writes and len(said) == 3


def test_a_unit_started_later_and_restarted_is_followed(tmp_path: Path) -> None:
    monitor, cg, _, said = _monitor(tmp_path, FilterRequest(units=("late.service",)))
    monitor.check()  # a unit need not exist yet
    monitor.refresh()
    assert cg.data == {} and said[-1].endswith("no cgroup2 directory yet (looked for every second)")
    unit = tmp_path / "system.slice" / "late.service"
    unit.mkdir(parents=True)
    monitor.refresh()
    first = unit.stat().st_ino
    assert cg.data == {first: 1}
    unit.rmdir()
    (tmp_path / "system.slice" / "keep").mkdir()  # so the new directory gets another inode
    unit.mkdir()
    monitor.refresh()
    assert cg.data == {unit.stat().st_ino: 1}


def test_a_cgroup_or_pid_that_is_not_there_is_an_error_before_load(tmp_path: Path) -> None:
    monitor, *_ = _monitor(tmp_path, FilterRequest(cgroups=("nope",)))
    with pytest.raises(ManifestError, match="--cgroup nope: no such cgroup2 directory"):
        monitor.check()
    monitor, *_ = _monitor(tmp_path, FilterRequest(cgroups=("/tmp",)))
    if not Path("/tmp").resolve().is_relative_to(tmp_path):
        with pytest.raises(ManifestError, match="--cgroup /tmp: not under the cgroup2 mount"):
            monitor.check()
    dead = _dead_pid()
    monitor, *_ = _monitor(tmp_path, FilterRequest(pids=(dead,)))
    with pytest.raises(ManifestError, match=f"--pid {dead}: no such process"):
        monitor.check()


def test_an_exited_pid_leaves_the_map_for_good(tmp_path: Path) -> None:
    dead = _dead_pid()
    monitor, _, pids, said = _monitor(tmp_path, FilterRequest(pids=(os.getpid(), dead)))
    monitor.refresh()
    assert pids.data == {os.getpid(): 1}
    assert said[-1] == f"bpfdepot: filter: label 2 = pid {dead}: has exited"
    assert dead in monitor.gone


def test_the_filter_file_adds_targets_while_running(tmp_path: Path) -> None:
    rules = tmp_path / "filter.yaml"
    rules.write_text("pids: []\n")
    monitor, cg, pids, said = _monitor(tmp_path, FilterRequest(file=rules))
    monitor.check()
    monitor.refresh()
    assert pids.data == {}
    rules.write_text(f"pids: [{os.getpid()}]\ncgroups: [c]\n")
    (tmp_path / "c").mkdir()
    monitor.refresh()
    assert pids.data == {os.getpid(): 2} and cg.data == {(tmp_path / "c").stat().st_ino: 1}
    rules.write_text("pids: [oops]\n")  # a bad edit keeps the last good filter
    monitor.refresh()
    assert pids.data == {os.getpid(): 2}
    assert "not applied" in said[-1] and "'oops' is not a process id" in said[-1]
    rules.write_text("pids: []\n")
    monitor.refresh()
    assert pids.data == {} and cg.data == {}


def test_a_bad_filter_file_at_start_is_an_error(tmp_path: Path) -> None:
    rules = tmp_path / "filter.yaml"
    rules.write_text("units: [x]\n")
    monitor, *_ = _monitor(tmp_path, FilterRequest(file=rules))
    with pytest.raises(ManifestError, match=r"filter file .*'x' is not a systemd unit name"):
        monitor.check()


def test_close_stops_and_closes_the_maps(tmp_path: Path) -> None:
    monitor, cg, pids, _ = _monitor(tmp_path, FilterRequest(pids=(os.getpid(),)))
    monitor.start()
    monitor.close()
    assert cg.closed and pids.closed


def test_a_filter_file_problem_is_said_once(tmp_path: Path) -> None:
    rules = tmp_path / "filter.yaml"
    rules.write_text("pids: []\n")
    monitor, _, _, said = _monitor(tmp_path, FilterRequest(file=rules))
    monitor.refresh()
    rules.unlink()
    monitor.refresh()
    monitor.refresh()
    assert len([s for s in said if "not applied" in s]) == 1
