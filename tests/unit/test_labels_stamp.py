"""Stamper: labels spliced into encoded JSON lines, by cgroup id, filter label id or pid."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from loader.labels import LabelResolver, LabelSettings
from loader.labels.stamp import Stamper

TREE = Path(__file__).parent / "labels_tree"
CART = "a1" * 32
SHOP_UID = "7d3f1c2a-1b2c-4d5e-8f90-0123456789ab"
SCOPE = ("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
         + SHOP_UID.replace("-", "_") + f".slice/cri-containerd-{CART}.scope")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[LabelResolver, int, int]:
    shutil.copytree(TREE, tmp_path / "root")
    for rel in ("system.slice/shop-api.service/worker", SCOPE):
        os.makedirs(tmp_path / "cg" / rel)
    (tmp_path / "proc/77").mkdir(parents=True)
    (tmp_path / "proc/77/cgroup").write_text("0::/system.slice/shop-api.service/worker\n")
    r = LabelResolver(LabelSettings(root=tmp_path / "root", cgroup2=tmp_path / "cg",
                                    proc=tmp_path / "proc"))
    unit = os.stat(tmp_path / "cg/system.slice/shop-api.service/worker").st_ino
    scope = os.stat(tmp_path / "cg" / SCOPE).st_ino
    return r, unit, scope


def test_stamp_by_cgroup_id_pid_and_label(setup: tuple[LabelResolver, int, int]) -> None:
    r, unit, scope = setup
    s = Stamper(r, label_paths={1: "/system.slice/shop-api.service"}.get)
    batch = (f'{{"comm":"cart","cgroup_id":{scope},"ret":0}}\n'
             f'{{"key":{{"pid":9,"cgroup":{unit}}},"value":3}}\n'
             '{"pid":77,"ppid":1}\n'
             '{"label":1,"pid":999999}\n'
             '{"pid":999999,"ret":-2}\n'
             '{"cgroup_id":12345}\n'
             '{"cgroup_id":1,"labels":{"mine":"x"}}\n').encode()
    out = [json.loads(x) for x in s.stamp(batch).splitlines()]
    unit_labels = {"unit": "shop-api.service", "slice": "system.slice"}
    assert out[0] == {"comm": "cart", "cgroup_id": scope, "ret": 0, "labels": {
        "container_id": CART, "runtime": "containerd", "pod_uid": SHOP_UID, "container": "cart",
        "pod": "cart-7c9f8-x2x4q", "namespace": "shop", "image": "registry.local/shop/cart:1.4.2",
        "container_type": "container"}}
    assert out[1]["labels"] == unit_labels      # cgroup in a map key, before the pid
    assert out[2]["labels"] == unit_labels      # by pid through /proc; "ppid" is not a pid
    assert out[3]["labels"] == unit_labels      # filter label id 1 → the unit's cgroup
    assert "labels" not in out[4] and "labels" not in out[5]  # gone process, unknown cgroup
    assert out[6]["labels"] == {"mine": "x"}    # never overwritten
    assert (s.labelled, s.unlabelled) == (4, 3)


def test_fragment_follows_the_resolver(setup: tuple[LabelResolver, int, int]) -> None:
    r, unit, _scope = setup
    s = Stamper(r, by_pid=False)
    line = f'{{"cgroup_id":{unit}}}\n'.encode()
    assert s.stamp(line) == s.stamp(line)
    r.forget([unit])
    assert b'"unit":"shop-api.service"' in s.stamp(line)
    assert s.stamp(b"") == b""
    assert s.stamp(b"\n" + line) == b"\n" + s.stamp(line)  # lines stay aligned with keys
    assert s.stamp(b'{"pid":77}\n') == b'{"pid":77}\n'  # by_pid off
