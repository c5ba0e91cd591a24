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


def test_container_ids_and_pods_are_checked() -> None:
    full = "ab" * 32
    request = filter_request(containers=[f"containerd://{full}", "0123456789ab"],
                             pods=["shop/api-0"], labels_root="/srv/node")
    assert request.containers == (full, "0123456789ab") and request.pods == ("shop/api-0",)
    assert request.files_root == Path("/srv/node") and request.mode == FILTER_CGROUPS
    assert filter_request(pods=["a/b"]).files_root == Path("/")  # no --labels: the node's /
    with pytest.raises(ManifestError, match=r"--container: 'abc' is not a container id") as err:
        filter_request(containers=["abc"])  # shorter than 12
    assert "first 12 or more digits" in err.value.hint
    for bad in ("0123456789AB", "0123456789xyz", "a" * 65):
        with pytest.raises(ManifestError, match="is not a container id"):
            filter_request(containers=[bad])
    for bad in ("shop", "shop/api/0", "Shop/api-0", "shop/-api", "/api-0"):
        with pytest.raises(ManifestError, match=rf"--pod: '{bad}' is not a pod as "
                                                r"namespace/name"):
            filter_request(pods=[bad])


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
    assert parse_filter_doc({"pods": ["ns/p"], "containers": ["a" * 12]}, "f") == \
        FilterRequest(pods=("ns/p",), containers=("a" * 12,))
    with pytest.raises(ManifestError, match="f: 'ns' is not a pod as namespace/name"):
        parse_filter_doc({"pods": ["ns"]}, "f")
    with pytest.raises(ManifestError, match="f: unknown filter key 'pod'") as err:
        parse_filter_doc({"pod": ["ns/p"]}, "f")
    assert err.value.hint == "did you mean 'pods'?"
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


# --- containers and pods (loader/labels/pods.py), on a kubepods tree of plain directories ----

CART, LATE = "a1" * 32, "a1" * 6 + "f0" * 26   # LATE shares CART's first 12 digits
SHOP_UID = "7d3f1c2a-1b2c-4d5e-8f90-0123456789ab"
POD = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" \
    + SHOP_UID.replace("-", "_") + ".slice"


def _pod_monitor(tmp_path: Path, request: FilterRequest):
    """A monitor over ``tmp_path/cg`` whose finder reads ``tmp_path/root`` (kubelet's
    var/log/pods); the test rescans the index itself (no inotify thread: deterministic)."""
    from loader.labels import LabelResolver, LabelSettings
    from loader.labels.pods import PodFinder

    (tmp_path / "cg").mkdir()
    (tmp_path / "root" / "var/log/pods" / f"shop_cart-0_{SHOP_UID}" / "cart").mkdir(parents=True)
    resolver = LabelResolver(LabelSettings(root=tmp_path / "root", cgroup2=tmp_path / "cg",
                                           track_processes=False, min_rescan=3600.0))
    said: list[str] = []
    cg, pids = FakeMap(), FakeMap()
    monitor = Monitor(request, (cg, pids), root=tmp_path / "cg", say=said.append,
                      pods=PodFinder(resolver))
    return monitor, resolver, cg, said


def _mk(tmp_path: Path, rel: str) -> int:
    (tmp_path / "cg" / rel).mkdir(parents=True)
    return (tmp_path / "cg" / rel).stat().st_ino


def test_a_container_by_prefix_is_its_scope_and_waits_until_it_exists(tmp_path: Path) -> None:
    monitor, resolver, cg, said = _pod_monitor(
        tmp_path, FilterRequest(containers=(CART[:12],), pods=("shop/cart-0",)))
    monitor.check()  # neither exists yet: not an error
    monitor.refresh()
    assert cg.data == {}
    assert said == [(f"bpfdepot: filter: label 1 = container {CART[:12]}: no container "
                     f"{CART[:12]} on this node yet; waiting"),
                    ("bpfdepot: filter: label 2 = pod shop/cart-0: no pod shop/cart-0 on this "
                     "node yet; waiting")]
    pod = _mk(tmp_path, POD)
    scope = _mk(tmp_path, f"{POD}/cri-containerd-{CART}.scope")
    _mk(tmp_path, f"{POD}/cri-containerd-{CART}.scope/inner")  # below it: the ancestor walk
    _mk(tmp_path, "system.slice/other.service")
    resolver.index.rescan()
    monitor.refresh()
    assert cg.data == {scope: 1, pod: 2}
    assert said[2:] == [f"bpfdepot: filter: label 1 = container {CART[:12]}: cgroup id {scope}",
                        f"bpfdepot: filter: label 2 = pod shop/cart-0: cgroup id {pod}"]
    assert monitor.pinned == {monitor.targets()[0]: CART}
    # another container with the same 12 digits: the prefix stays the container it found
    _mk(tmp_path, f"{POD}/cri-containerd-{LATE}.scope")
    resolver.index.rescan()
    monitor.refresh()
    assert cg.data == {scope: 1, pod: 2} and len(said) == 4


def test_an_ambiguous_container_prefix_is_an_error_before_load(tmp_path: Path) -> None:
    monitor, resolver, _, _ = _pod_monitor(tmp_path, FilterRequest(containers=(CART[:12],)))
    _mk(tmp_path, f"{POD}/cri-containerd-{CART}.scope")
    _mk(tmp_path, f"{POD}/cri-containerd-{LATE}.scope")
    resolver.index.rescan()
    with pytest.raises(ManifestError, match=rf"--container {CART[:12]} matches 2 containers "
                                            rf"\({CART[:16]}…, {LATE[:16]}…\)") as err:
        monitor.check()
    assert "crictl ps --no-trunc" in err.value.hint
    # the whole id is not ambiguous
    (tmp_path / "b").mkdir()
    monitor, resolver, cg, _ = _pod_monitor(tmp_path / "b", FilterRequest(containers=(CART,)))
    scope = _mk(tmp_path / "b", f"{POD}/cri-containerd-{CART}.scope")
    _mk(tmp_path / "b", f"{POD}/cri-containerd-{LATE}.scope")
    resolver.index.rescan()
    monitor.check()
    monitor.refresh()
    assert cg.data == {scope: 1}


def test_a_prefix_that_becomes_ambiguous_while_waiting_is_said_once(tmp_path: Path) -> None:
    monitor, resolver, cg, said = _pod_monitor(tmp_path, FilterRequest(containers=(CART[:12],)))
    monitor.refresh()
    _mk(tmp_path, f"{POD}/cri-containerd-{CART}.scope")
    _mk(tmp_path, f"{POD}/cri-containerd-{LATE}.scope")
    resolver.index.rescan()
    monitor.refresh()
    monitor.refresh()
    assert cg.data == {}
    assert said[1:] == [(f"bpfdepot: filter: label 1 = container {CART[:12]}: {CART[:12]} "
                         f"matches 2 containers ({CART[:16]}…, {LATE[:16]}…): none monitored; "
                         "give more digits")]


def test_the_filter_file_and_the_manifest_add_containers_and_pods(tmp_path: Path) -> None:
    from loader.monitor import with_manifest

    rules = tmp_path / "filter.yaml"
    rules.write_text("pods: [shop/cart-0]\n")
    monitor, resolver, cg, _ = _pod_monitor(tmp_path, FilterRequest(file=rules))
    pod = _mk(tmp_path, POD)
    resolver.index.rescan()
    monitor.check()
    monitor.refresh()
    assert cg.data == {pod: 1}
    request = with_manifest(FilterRequest(pods=("a/b",)), {"containers": (CART,)}, "m.yaml")
    assert request.pods == ("a/b",) and request.containers == (CART,)
    with pytest.raises(ManifestError, match="m.yaml: 'nope' is not a container id"):
        with_manifest(FilterRequest(), {"containers": ("nope",)}, "m.yaml")


def test_a_label_names_the_cgroups_it_stands_for(tmp_path: Path) -> None:
    monitor, _, _, _ = _pod_monitor(tmp_path, FilterRequest(pods=("shop/cart-0",),
                                                            pids=(os.getpid(),)))
    pod = _mk(tmp_path, POD)
    monitor.pods.resolver.index.rescan()
    monitor.refresh()
    assert monitor.cgroup_ids(2) == (pod,)  # pids come first in the targets
    assert monitor.cgroup_ids(1) == () and monitor.cgroup_ids(9) == ()
