"""``bpfdepot run --container ID`` and ``--pod NS/NAME`` in the running kernel: a kubepods tree
of cgroup2 directories made here (``kubepods.slice/kubepods-burstable.slice/
kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope``), the kubelet's and containerd's
files for it under a temp root passed with ``--labels ROOT``, and worker processes moved into
the container, into the pod beside the container, and into another service, each making a
known number of opens (bpf/opensnoop). The counts are the channel's: what the filter drops never
reaches user space. Ids and names are made per test, so no other run's tree can match them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kernel.conftest import ROOT, Finished, Running, bpfdepot
from tests.kernel.monitor import received, said, workers

BUNDLE = "bpf/opensnoop"
CHANNEL = "opensnoop/opensnoop_events"


@dataclass
class Pod:
    """One pod of one container on the fake node: its cgroups and its files' root."""

    namespace: str
    name: str
    uid: str
    container: str      # the container's 64-hex id
    root: Path          # --labels ROOT: var/log/pods, run/containerd
    pod: Path           # the pod's cgroup2 directory
    scope: Path         # the container's cgroup2 directory (below the pod's)
    other: Path         # a service outside the pod
    base: Path          # everything above lives below this

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def add_container(self, cid: str) -> Path:
        """Another container of this pod: its bundle, then its scope (as containerd does)."""
        _bundle(self.root, self, cid)
        scope = self.pod / f"cri-containerd-{cid}.scope"
        scope.mkdir()
        return scope


def _bundle(root: Path, pod: Pod, cid: str, container: str = "cart") -> None:
    bundle = root / "run/containerd/io.containerd.runtime.v2.task/k8s.io" / cid
    bundle.mkdir(parents=True)
    prefix = "io.kubernetes.cri."
    (bundle / "config.json").write_text(json.dumps({"annotations": {
        prefix + "container-name": container, prefix + "sandbox-name": pod.name,
        prefix + "sandbox-namespace": pod.namespace, prefix + "sandbox-uid": pod.uid,
        prefix + "image-name": "registry.local/shop/cart:1.4.2",
        prefix + "container-type": "container"}}))


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    from loader.attach.cgroup import cgroup2_mounts

    mounts = cgroup2_mounts()
    if not mounts:
        pytest.skip("no cgroup2 mount on this host")
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    base = mounts[0] / f"bpfdepot-pods-{os.getpid()}-{secrets.token_hex(3)}"
    pod_dir = (base / "kubepods.slice" / "kubepods-burstable.slice"
               / f"kubepods-burstable-pod{uid.replace('-', '_')}.slice")
    made = Pod(namespace="shop", name=f"cart-{secrets.token_hex(4)}", uid=uid, container=cid,
               root=tmp_path / "root", pod=pod_dir, scope=pod_dir / f"cri-containerd-{cid}.scope",
               other=base / "system.slice" / "other.service", base=base)
    (made.root / "var/log/pods" / f"{made.namespace}_{made.name}_{uid}" / "cart").mkdir(
        parents=True)
    _bundle(made.root, made, cid)
    made.scope.mkdir(parents=True)
    made.other.mkdir(parents=True)
    try:
        yield made
    finally:
        for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda e: -len(e[0])):
            for pid in (Path(dirpath) / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):  # it may have exited meanwhile
                    (mounts[0] / "cgroup.procs").write_text(pid)
            os.rmdir(dirpath)


def _opens(done: Finished, target: Path) -> dict[int, list[int]]:
    """pid → the filter labels of its opens; every record must be an open of ``target``."""
    out: dict[int, list[int]] = {}
    for e in done.events:
        out.setdefault(e["pid"], []).append(e["label"])
    assert {e["filename"] for e in done.events} <= {str(target)}, done.events
    return out


def _opens_under(home: Path, tmp_path: Path, places: list[tuple[Path, int]], extra: list[str],
                 bundle: str = BUNDLE) -> tuple[Finished, Path, list]:
    """One worker per (cgroup, opens): moved there, then a run of ``bundle`` with ``extra``
    while each makes its opens of one target file; the finished run, the target, the workers."""
    target = tmp_path / "target"
    target.write_text("x")
    with workers(target, len(places)) as made:
        for w, (cgroup, _) in zip(made, places):
            w.move(cgroup)
        run = Running(home, bundle, tmp_path / "events.jsonl", extra=extra)
        try:
            for w, (_, n) in zip(made, places):
                w.do("open", n)
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    return done, target, made


def test_container_filter_passes_only_the_container(home: Path, tmp_path: Path,
                                                     pod: Pod) -> None:
    """By the first 12 digits of its id: the container's 5 opens pass; the pod's other process
    (in the pod cgroup, beside the container) and another service are dropped in the kernel."""
    done, target, (inside, _, _) = _opens_under(
        home, tmp_path, [(pod.scope, 5), (pod.pod, 7), (pod.other, 13)],
        ["--container", pod.container[:12], "--labels", str(pod.root)])
    assert (f"label 1 = container {pod.container[:12]}: cgroup id {pod.scope.stat().st_ino}"
            in done.stderr)
    assert _opens(done, target) == {inside.pid: [1] * 5}
    assert received(done, CHANNEL) == (5, 0)
    assert {(e["labels"]["container_id"], e["labels"]["pod"]) for e in done.events} == \
        {(pod.container, pod.name)}


def test_pod_filter_passes_every_process_of_the_pod(home: Path, tmp_path: Path, pod: Pod) -> None:
    """``--pod ns/name``: the pod's cgroup and everything below it (the container and the pod's
    own process), named by the kubelet's var/log/pods under the --labels root."""
    done, target, (inside, beside, _) = _opens_under(
        home, tmp_path, [(pod.scope, 5), (pod.pod, 7), (pod.other, 13)],
        ["--pod", pod.ref, "--labels", str(pod.root)])
    assert f"label 1 = pod {pod.ref}: cgroup id {pod.pod.stat().st_ino}" in done.stderr
    assert _opens(done, target) == {inside.pid: [1] * 5, beside.pid: [1] * 7}
    assert received(done, CHANNEL) == (12, 0)


def test_a_container_started_after_the_run_is_picked_up(home: Path, tmp_path: Path,
                                                        pod: Pod) -> None:
    """Asked for a container that does not exist yet, the run says it waits; its scope made
    while the run goes on is found by the next rescan, and from then on its opens pass."""
    target = tmp_path / "target"
    target.write_text("x")
    late = secrets.token_hex(32)
    with workers(target, 2) as (newcomer, other):
        other.move(pod.other)
        run = Running(home, BUNDLE, tmp_path / "events.jsonl",
                      extra=["--container", late, "--labels", str(pod.root)])
        try:
            assert f"label 1 = container {late}: no container {late} on this node yet; " \
                   "waiting" in run.stderr
            newcomer.do("open", 3)   # not in it yet: dropped
            scope = pod.add_container(late)
            said(run, f"label 1 = container {late}: cgroup id {scope.stat().st_ino}")
            newcomer.move(scope)
            newcomer.do("open", 4)
            other.do("open", 6)
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    assert _opens(done, target) == {newcomer.pid: [1] * 4}
    assert received(done, CHANNEL) == (4, 0)


def test_a_filter_file_takes_pods(home: Path, tmp_path: Path, pod: Pod) -> None:
    """``pods:`` in a filter file (read at start) filters as ``--pod`` does."""
    rules = tmp_path / "filter.yaml"
    rules.write_text(f"pods: [{pod.ref}]\n")
    done, target, (inside, _) = _opens_under(
        home, tmp_path, [(pod.scope, 2), (pod.other, 3)],
        ["--filter-file", str(rules), "--labels", str(pod.root)])
    assert _opens(done, target) == {inside.pid: [1] * 2}
    assert received(done, CHANNEL) == (2, 0)


def test_bad_containers_and_pods_are_refused_before_load(home: Path, pod: Pod) -> None:
    out = bpfdepot(home, "run", BUNDLE, "--duration", "1", "--container", "abc123")
    assert out.returncode == 2, out.stderr
    assert "--container: 'abc123' is not a container id" in out.stderr
    out = bpfdepot(home, "run", BUNDLE, "--duration", "1", "--pod", "shop")
    assert out.returncode == 2, out.stderr
    assert "--pod: 'shop' is not a pod as namespace/name" in out.stderr
    # two containers share the first 12 digits: a 12-digit prefix names neither
    twin = pod.container[:12] + secrets.token_hex(26)
    pod.add_container(twin)
    out = bpfdepot(home, "run", BUNDLE, "--duration", "1", "--container", pod.container[:12],
                   "--labels", str(pod.root))
    assert out.returncode == 2, out.stderr
    assert f"--container {pod.container[:12]} matches 2 containers" in out.stderr
    assert "attached" not in out.stderr
    out = bpfdepot(home, "run", BUNDLE, "--duration", "1", "--cgroup", "/tmp")
    assert out.returncode == 2, out.stderr
    assert "--cgroup /tmp: not under the cgroup2 mount" in out.stderr


def test_the_manifest_can_ask_for_a_container(home: Path, tmp_path: Path, pod: Pod) -> None:
    """``spec.filter: {containers: [ID]}`` in a bundle's manifest filters as --container does."""
    bundle = tmp_path / "opensnoop"
    shutil.copytree(ROOT / BUNDLE, bundle)
    manifest = bundle / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace(
        "spec:\n", f"spec:\n  filter:\n    containers: [{pod.container}]\n", 1))
    done, target, (inside, _) = _opens_under(
        home, tmp_path, [(pod.scope, 4), (pod.other, 6)], [], bundle=str(bundle))
    assert _opens(done, target) == {inside.pid: [1] * 4}
    assert received(done, CHANNEL) == (4, 0)
