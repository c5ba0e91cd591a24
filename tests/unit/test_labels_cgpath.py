"""Cgroup path → unit / container id / pod uid (tiers 1-2 of the label sources), as a table."""

from __future__ import annotations

import pytest

from loader.labels import parse_cgroup_path

CID = "a1" * 32
UID = "7d3f1c2a-1b2c-4d5e-8f90-0123456789ab"
UID_ = UID.replace("-", "_")

CASES = [
    # systemd units: the innermost service/scope wins, else the innermost slice
    ("/system.slice/shop-api.service", {"unit": "shop-api.service", "slice": "system.slice"}),
    ("/system.slice/shop-api.service/worker", {"unit": "shop-api.service", "slice": "system.slice"}),
    ("/bpfdepot-mon.slice/shop-api.service/worker.scope",
     {"unit": "worker.scope", "slice": "bpfdepot-mon.slice"}),
    ("/user.slice/user-1000.slice/session-4.scope",
     {"unit": "session-4.scope", "slice": "user-1000.slice"}),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service",
     {"unit": "foo.service", "slice": "app.slice", "uid": "1000"}),
    ("/user.slice/user-1000.slice/user@1000.service/init.scope",
     {"unit": "init.scope", "slice": "user-1000.slice", "uid": "1000"}),
    ("/user.slice/user-1000.slice", {"unit": "user-1000.slice"}),
    ("/", {}),
    ("", {}),
    ("/bpfdepot-test/plain/dir", {}),
    # systemd driver: containerd, docker, cri-o
    ((f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
      f"cri-containerd-{CID}.scope"), {"container_id": CID, "runtime": "containerd", "pod_uid": UID}),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope",
     {"container_id": CID, "runtime": "cri-o", "pod_uid": UID}),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",  # guaranteed QoS
     {"container_id": CID, "runtime": "containerd", "pod_uid": UID}),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
     {"pod_uid": UID}),
    (f"/system.slice/docker-{CID}.scope", {"container_id": CID, "runtime": "docker"}),
    # crio's monitor process is not the container
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope", {"pod_uid": UID}),
    # cgroupfs driver
    (f"/kubepods/burstable/pod{UID}/{CID}", {"container_id": CID, "pod_uid": UID}),
    (f"/kubepods/pod{UID}/{CID}", {"container_id": CID, "pod_uid": UID}),
    (f"/docker/{CID}", {"container_id": CID}),
    # nested (kind node in docker): the innermost id is the process's own container
    (f"/docker/{'ff' * 32}/kubepods/besteffort/pod{UID}/{CID}", {"container_id": CID, "pod_uid": UID}),
    # "pod<uid>" outside kubepods is just a name; a 63-char id is not an id
    (f"/system.slice/pod{UID}.service", {"unit": f"pod{UID}.service", "slice": "system.slice"}),
    (f"/docker/{CID[:63]}", {}),
]


@pytest.mark.parametrize(("path", "labels"), CASES, ids=[c[0][-60:] or "empty" for c in CASES])
def test_parse_cgroup_path(path: str, labels: dict[str, str]) -> None:
    assert parse_cgroup_path(path).labels() == labels


def test_trailing_newline_and_missing_slash() -> None:
    assert parse_cgroup_path("system.slice/cron.service\n").labels() == {
        "unit": "cron.service", "slice": "system.slice"}
