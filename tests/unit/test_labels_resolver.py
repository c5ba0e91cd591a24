"""LabelResolver, CgroupIndex and CgroupWatcher on plain directories standing in for cgroup2.

A directory's inode plays the cgroup id, as on cgroup2; inotify works the same on tmpfs/ext4,
so the watcher is exercised here without root. The real cgroup2 run is tests/kernel/test_labels.py.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from loader.labels import (
    CgroupIndex,
    CgroupWatcher,
    LabelResolver,
    LabelSettings,
    find_cgroup2_mount,
)

TREE = Path(__file__).parent / "labels_tree"
CART, PROXY, INVOICE = "a1" * 32, "b2" * 32, "c3" * 32
SHOP_UID = "7d3f1c2a-1b2c-4d5e-8f90-0123456789ab"
BILLING_UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
POD_SLICE = ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
             + SHOP_UID.replace("-", "_") + ".slice")
CART_LABELS = {"container_id": CART, "runtime": "containerd", "pod_uid": SHOP_UID,
               "container": "cart", "pod": "cart-7c9f8-x2x4q", "namespace": "shop",
               "image": "registry.local/shop/cart:1.4.2", "container_type": "container"}


@pytest.fixture
def node(tmp_path: Path) -> Path:
    shutil.copytree(TREE, tmp_path / "root")
    (tmp_path / "cg").mkdir()
    (tmp_path / "proc").mkdir()
    return tmp_path


def settings(node: Path, **kw: object) -> LabelSettings:
    # no exec/exit table here (that is BPF: tests/kernel/test_labels.py)
    kw.setdefault("track_processes", False)
    return LabelSettings(root=node / "root", cgroup2=node / "cg", proc=node / "proc", **kw)


def mkcg(node: Path, rel: str) -> int:
    os.makedirs(node / "cg" / rel.lstrip("/"), exist_ok=True)
    return os.stat(node / "cg" / rel.lstrip("/")).st_ino


def wait_for(cond: Callable[[], bool], timeout: float = 1.0) -> float:
    """Seconds until ``cond()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(0.005)
    return time.monotonic() - start


def test_every_tier(node: Path) -> None:
    r = LabelResolver(settings(node))
    unit = mkcg(node, "/system.slice/shop-api.service/worker")
    cart = mkcg(node, f"{POD_SLICE}/cri-containerd-{CART}.scope")
    proxy = mkcg(node, f"{POD_SLICE}/cri-containerd-{PROXY}.scope")
    invoice = mkcg(node, f"/kubepods/besteffort/pod{BILLING_UID}/{INVOICE}")
    assert r.labels_for_cgroup_id(unit) == {"unit": "shop-api.service", "slice": "system.slice"}
    assert r.labels_for_cgroup_id(cart) == CART_LABELS
    assert r.labels_for_cgroup_id(proxy) == {   # no bundle: the kubelet's log link names it
        "container_id": PROXY, "runtime": "containerd", "pod_uid": SHOP_UID,
        "container": "istio-proxy", "pod": "cart-7c9f8-x2x4q", "namespace": "shop"}
    assert r.labels_for_cgroup_id(invoice) == {  # cgroupfs driver, names by pod uid only
        "container_id": INVOICE, "pod_uid": BILLING_UID, "namespace": "billing",
        "pod": "invoice-0", "container": "invoice"}
    assert r.stats()["unresolved"] == 0


def test_cache_hits_and_unknown_ids(node: Path) -> None:
    r = LabelResolver(settings(node))
    cart = mkcg(node, f"{POD_SLICE}/cri-containerd-{CART}.scope")
    first = r.labels_for_cgroup_id(cart)
    assert r.labels_for_cgroup_id(cart) is first
    assert (r.hits, r.misses) == (1, 1)
    assert r.labels_for_cgroup_id(1) == {}
    assert r.unresolved == 1
    with pytest.raises(TypeError):
        first["pod"] = "changed"  # type: ignore[index]  # shared between lookups: read-only


def test_cache_is_bounded(node: Path) -> None:
    r = LabelResolver(settings(node, max_entries=16),
                      index=CgroupIndex(node / "cg", max_entries=1000))
    ids = [mkcg(node, f"/system.slice/s{i}.service") for i in range(40)]
    for cg in ids:
        r.labels_for_cgroup_id(cg)
    assert r.stats()["cached"] == 16 and r.evicted == 24
    assert r.labels_for_cgroup_id(ids[-1]) is r.labels_for_cgroup_id(ids[-1])  # recent: kept
    assert r.hits == 2


def test_index_is_bounded(node: Path) -> None:
    r = LabelResolver(settings(node, max_entries=10))
    ids = [mkcg(node, f"/system.slice/s{i}.service") for i in range(20)]
    r.index.rescan()
    # the root, system.slice and 8 services fit; the 12 others are counted, not kept
    assert len(r.index) == 10 and r.index.untracked == 12
    assert sum(r.index.path(cg) is not None for cg in ids) == 8


def test_container_without_names_is_asked_again(node: Path) -> None:
    r = LabelResolver(settings(node, retry_incomplete=0.0, min_rescan=0.0))
    cid = "d4" * 32
    cg = mkcg(node, f"{POD_SLICE}/cri-containerd-{cid}.scope")
    assert "container" not in r.labels_for_cgroup_id(cg)
    bundle = node / "root/run/containerd/io.containerd.runtime.v2.task/k8s.io" / cid
    bundle.mkdir()
    (bundle / "config.json").write_text(
        '{"annotations": {"io.kubernetes.cri.container-name": "late"}}')
    assert r.labels_for_cgroup_id(cg)["container"] == "late"


def test_pid_lookup_follows_moves(node: Path) -> None:
    r = LabelResolver(settings(node, min_rescan=3600.0))
    mkcg(node, "/system.slice/shop-api.service")
    mkcg(node, f"{POD_SLICE}/cri-containerd-{CART}.scope")
    (node / "proc/4242").mkdir()
    cgfile = node / "proc/4242/cgroup"
    cgfile.write_text("4:memory:/x\n0::/system.slice/shop-api.service\n")
    assert r.labels_for_pid(4242)["unit"] == "shop-api.service"
    cgfile.write_text(f"0::{POD_SLICE}/cri-containerd-{CART}.scope\n")
    assert r.labels_for_pid(4242) == CART_LABELS
    assert r.labels_for_pid(4243) == {}  # gone
    # a cgroup made after the last scan is known at once from the pid's path (no rescan)
    cgfile.write_text("0::/system.slice/fresh.service\n")
    mkcg(node, "/system.slice/fresh.service")
    assert r.labels_for_pid(4242)["unit"] == "fresh.service"
    cgfile.write_text("0::/system.slice/removed.service (deleted)\n")
    assert r.labels_for_pid(4242) == {}
    cgfile.write_text("0::/../../system.slice/shop-api.service\n")  # outside our namespace
    assert r.cgroup_of_pid(4242) is None and r.labels_for_pid(4242) == {}


def test_cgroups_matching_gives_the_topmost(node: Path) -> None:
    r = LabelResolver(settings(node))
    mkcg(node, "/system.slice/shop-api.service/worker")
    mkcg(node, "/system.slice/other.service")
    mkcg(node, f"{POD_SLICE}/cri-containerd-{CART}.scope")
    mkcg(node, f"{POD_SLICE}/cri-containerd-{PROXY}.scope")
    mkcg(node, f"/kubepods/besteffort/pod{BILLING_UID}/{INVOICE}")
    r.index.rescan()
    assert r.cgroups_matching({"unit": "shop-api.service"}) == ["/system.slice/shop-api.service"]
    assert r.cgroups_matching({"namespace": "shop", "pod": "cart-7c9f8-x2x4q"}) == [POD_SLICE]
    assert r.cgroups_matching({"container_id": CART[:12]}) == [
        f"{POD_SLICE}/cri-containerd-{CART}.scope"]
    assert r.cgroups_matching({"namespace": "shop", "container": "istio-proxy"}) == [
        f"{POD_SLICE}/cri-containerd-{PROXY}.scope"]
    assert r.cgroups_matching({"namespace": "billing", "pod": "invoice-0"}) == [
        f"/kubepods/besteffort/pod{BILLING_UID}"]
    assert r.cgroups_matching({"container_id": CART[:11]}) == []  # too short to be an id
    assert r.cgroups_matching({}) == []
    assert r.cgroups_matching({"unit": "nope.service"}) == []


def test_find_cgroup2_mount() -> None:
    mounts = ("tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
              "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
              "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    assert find_cgroup2_mount(mounts) == Path("/sys/fs/cgroup/unified")
    assert find_cgroup2_mount("proc /proc proc rw 0 0\n") is None


def test_watcher_follows_mkdir_and_rmdir(node: Path) -> None:
    r = LabelResolver(settings(node, min_rescan=3600.0))  # no on-demand rescans: inotify only
    mkcg(node, "/system.slice")
    with CgroupWatcher(r) as w:
        assert not w.degraded
        cg = mkcg(node, "/system.slice/shop-api.service")
        wait_for(lambda: r.index.path(cg) is not None)
        assert r.labels_for_cgroup_id(cg) == {"unit": "shop-api.service", "slice": "system.slice"}
        # a whole subtree at once (mkdir -p): children made before their watch are found
        deep = mkcg(node, f"{POD_SLICE}/cri-containerd-{CART}.scope")
        wait_for(lambda: r.index.path(deep) is not None)
        assert r.labels_for_cgroup_id(deep) == CART_LABELS
        os.rmdir(node / "cg/system.slice/shop-api.service")
        wait_for(lambda: r.index.path(cg) is None)
        shutil.rmtree(node / "cg/kubepods.slice")
        wait_for(lambda: r.index.path(deep) is None)
        assert r.stats()["cached"] == 0 and r.evicted == 2
        assert w.rescans == 1  # the initial scan only
    assert w.events > 0


def test_watcher_rename_and_periodic_rescan(node: Path) -> None:
    r = LabelResolver(settings(node, min_rescan=3600.0, rescan_interval=0.05))
    with CgroupWatcher(r) as w:
        cg = mkcg(node, "/a.service")
        wait_for(lambda: r.index.path(cg) == "/a.service")
        os.rename(node / "cg/a.service", node / "cg/b.service")
        wait_for(lambda: r.index.path(cg) == "/b.service")
        assert r.labels_for_cgroup_id(cg) == {"unit": "b.service"}
        wait_for(lambda: w.rescans >= 3)


def test_watcher_without_inotify_watches_falls_back(node: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from loader.labels import inotify

    def no_space(self: inotify.Inotify, path: str, mask: int = 0) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(inotify.Inotify, "add_dir", no_space)
    r = LabelResolver(settings(node, min_rescan=3600.0, rescan_interval=0.05))
    with CgroupWatcher(r) as w:
        assert "max_user_watches" in w.degraded
        cg = mkcg(node, "/late.service")
        wait_for(lambda: r.index.path(cg) is not None)
