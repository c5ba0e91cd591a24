"""Kubelet log dirs and containerd bundles (tiers 3-4), read from the fixture tree ``labels_tree``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from loader.labels.sources import (
    BUNDLES,
    ContainerdBundles,
    KubeletLogs,
    list_dir,
    read_bounded,
)

TREE = Path(__file__).parent / "labels_tree"
CART, PROXY, SANDBOX, INVOICE = "a1" * 32, "b2" * 32, "5a" * 32, "c3" * 32
SHOP_UID = "7d3f1c2a-1b2c-4d5e-8f90-0123456789ab"
BILLING_UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(TREE, tmp_path / "root")
    return tmp_path / "root"


def test_bundle_annotations(root: Path) -> None:
    assert ContainerdBundles(root).lookup(CART) == {
        "container": "cart", "pod": "cart-7c9f8-x2x4q", "namespace": "shop",
        "pod_uid": SHOP_UID, "image": "registry.local/shop/cart:1.4.2",
        "container_type": "container"}


def test_bundle_of_the_sandbox_has_no_container_name(root: Path) -> None:
    assert ContainerdBundles(root).lookup(SANDBOX) == {
        "pod": "cart-7c9f8-x2x4q", "namespace": "shop", "pod_uid": SHOP_UID,
        "container_type": "sandbox"}


def test_bundle_in_another_containerd_namespace(root: Path) -> None:
    d = root / BUNDLES / "moby" / INVOICE
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"annotations": {
        "io.kubernetes.cri.container-name": "invoice", "io.kubernetes.cri.image-name": 7}}))
    # a non-string annotation is ignored, not stringified
    assert ContainerdBundles(root).lookup(INVOICE) == {"container": "invoice"}


def test_unknown_container(root: Path, tmp_path: Path) -> None:
    assert ContainerdBundles(root).lookup(INVOICE) == {}
    assert ContainerdBundles(tmp_path / "no-such-root").lookup(CART) == {}


def test_symlinked_config_is_refused(root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "outside.json"
    secret.write_text(json.dumps({"annotations": {"io.kubernetes.cri.container-name": "x"}}))
    d = root / BUNDLES / "k8s.io" / INVOICE
    d.mkdir()
    (d / "config.json").symlink_to(secret)
    bundles = ContainerdBundles(root)
    assert bundles.lookup(INVOICE) == {}
    assert bundles.refused == 1


def test_symlinked_directory_on_the_way_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside" / INVOICE
    outside.mkdir(parents=True)
    (outside / "config.json").write_text('{"annotations": {}}')
    (root / BUNDLES / "evil").symlink_to(tmp_path / "outside")
    assert ContainerdBundles(root).lookup(INVOICE) == {}
    assert list_dir(root, f"{BUNDLES}/evil") == []


def test_oversized_and_broken_config_are_refused(root: Path) -> None:
    d = root / BUNDLES / "k8s.io" / INVOICE
    d.mkdir()
    (d / "config.json").write_text('{"annotations": {"io.kubernetes.cri.container-name": "big"}, '
                                   '"pad": "' + "x" * 2048 + '"}')
    small = ContainerdBundles(root, max_bytes=1024)
    assert small.lookup(INVOICE) == {}
    assert small.refused == 1
    assert ContainerdBundles(root).lookup(INVOICE) == {"container": "big"}
    (d / "config.json").write_text('{"annotations": ["not", "a", "map"]}')
    (root / BUNDLES / "k8s.io" / CART / "config.json").write_text("{not json")
    broken = ContainerdBundles(root)
    assert broken.lookup(INVOICE) == {} and broken.lookup(CART) == {}
    assert broken.refused == 2


def test_read_bounded(root: Path) -> None:
    assert read_bounded(root, "var/log/pods/nothing/0.log", 10) is None
    with pytest.raises(ValueError, match="not a regular file"):
        read_bounded(root, "var/log/pods", 10)
    assert read_bounded(root, "../etc/passwd", 10) is None


def test_pod_log_dirs(root: Path) -> None:
    logs = KubeletLogs(root)
    # two containers: the pod is known, the container is not (the bundle or link names it)
    assert logs.by_pod(SHOP_UID) == {"namespace": "shop", "pod": "cart-7c9f8-x2x4q"}
    assert logs.by_pod(BILLING_UID) == {"namespace": "billing", "pod": "invoice-0",
                                        "container": "invoice"}
    assert logs.by_container(PROXY) == {"namespace": "shop", "pod": "cart-7c9f8-x2x4q",
                                        "container": "istio-proxy"}
    assert logs.by_container(CART) == {}


def test_pod_log_dir_appearing_later_is_found_after_min_rescan(root: Path) -> None:
    logs = KubeletLogs(root, min_rescan=0.0)
    uid = "11111111-2222-3333-4444-555555555555"
    assert logs.by_pod(uid) == {}
    os.makedirs(root / f"var/log/pods/web_front-1_{uid}/nginx")
    assert logs.by_pod(uid) == {"namespace": "web", "pod": "front-1", "container": "nginx"}


def test_malformed_log_names_are_ignored(root: Path) -> None:
    (root / "var/log/pods/Bad_Name_uid").mkdir()
    (root / "var/log/containers/no-id.log").write_text("")
    logs = KubeletLogs(root)
    assert logs.by_pod("uid") == {}
    assert logs.by_container("no-id") == {}
