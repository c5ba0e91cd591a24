"""The worker image for real (opt-in: BPFDEPOT_TEST_CONTAINER=1): scripts/build-image builds it
with podman from a debootstrap base, a container of it joins a real Redis + radosgw farm on
127.0.0.1 (host networking), compiles a bundle submitted from the host with `bpfdepot submit
--wait`, and stops with a warm shutdown.

Run it alone, as root, while no other Ceph cluster runs (the monitor's ports are fixed):
    BPFDEPOT_TEST_CONTAINER=1 python3 -m pytest tests/container
The first run downloads a Debian base (~60 MB) and the image's packages (~500 MB): minutes;
later runs reuse the cached base and podman's layers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL = ("apt-get install -y --no-install-recommends podman runc debootstrap "
           "redis-server radosgw ceph-mon ceph-osd ceph-common")
if os.environ.get("BPFDEPOT_TEST_CONTAINER") != "1":
    pytest.skip("the worker-image test is opt-in: BPFDEPOT_TEST_CONTAINER=1 python3 -m pytest "
                f"tests/container (as root; it needs: {INSTALL})", allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("the worker-image test builds and runs containers as root", allow_module_level=True)
_missing = [t for t in ("podman", "redis-server", "radosgw") if not shutil.which(t)]
if _missing:
    pytest.skip(f"the worker-image test needs {', '.join(_missing)}: {INSTALL}",
                allow_module_level=True)

from builder.records import Records, connect
from loader.artifacts.meta import read_meta
from loader.artifacts.store import open_store
from loader.model.settings import Settings
from tests.farm.conftest import (
    KERNELS,
    _bucket,
    add_kernels,
    cli,
    copy_bundle,
    farm_env,
)
from tests.services import ROOT, Service, start_redis, start_rgw

IMAGE = "localhost/bpfdepot-worker:latest"
BUILD_IMAGE = ROOT / "scripts" / "build-image"
TARGET = "6.12.100+deb12-amd64"  # a reference kernel from ../shared/kernels, not this machine's
EM_BPF = 247  # ELF e_machine of a BPF object
if not (KERNELS / f"{TARGET}.btf").is_file():
    pytest.skip(f"the worker-image test builds for {TARGET}: {KERNELS} has no {TARGET}.btf",
                allow_module_level=True)


@pytest.fixture(scope="module")
def image() -> str:
    """The worker image from the current tree: scripts/build-image makes what is missing (the
    base, then the layers whose inputs changed), so an unchanged tree costs seconds."""
    done = subprocess.run([str(BUILD_IMAGE)], capture_output=True, text=True, timeout=3600,
                          check=False)
    assert done.returncode == 0, f"scripts/build-image failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return IMAGE


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Service]]:
    """Redis and radosgw for this module only, stopped before any other farm tests start theirs."""
    workdir = tmp_path_factory.mktemp("container-services")
    redis = start_redis(workdir / "redis")
    try:
        rgw = start_rgw(workdir / "ceph")
    except BaseException:
        redis.stop()
        raise
    saved = dict(os.environ)
    os.environ.update(rgw.env)  # the in-process store on the host finds credentials the boto3 way
    yield redis, rgw
    os.environ.clear()
    os.environ.update(saved)
    rgw.stop()
    redis.stop()


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def _run_flags() -> list[str]:
    """The runtime and rlimit flags this host needs (scripts/build-image explains them)."""
    done = subprocess.run([str(BUILD_IMAGE), "--run-flags"], capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.split()


def _container_env(env: dict[str, str]) -> list[str]:
    """-e flags for the farm settings the worker reads (the host's test settings, not its PATH)."""
    keys = ("BPFDEPOT_BROKER", "BPFDEPOT_STORE", "BPFDEPOT_S3_ENDPOINT", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "BPFDEPOT_VISIBILITY_TIMEOUT")
    return [f"-e={key}={env[key]}" for key in keys]


def _wait_for_worker(env: dict[str, str], name: str, timeout_s: float = 120) -> str:
    """The Celery name of the container's worker, once it answers a ping."""
    from celery import Celery

    app = Celery(broker=env["BPFDEPOT_BROKER"])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            state = _podman("container", "inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state != "running":
                pytest.fail(f"container {name} is {state}:\n{_podman('logs', name).stderr[-4000:]}")
            for reply in app.control.ping(timeout=1.0) or []:
                worker = next(iter(reply))
                if worker.endswith(f"@{name}"):
                    return worker
        pytest.fail(f"the worker in {name} did not answer within {timeout_s} s:\n"
                    f"{_podman('logs', name).stderr[-4000:]}")
    finally:
        app.close()


@pytest.fixture
def container(services: tuple[Service, Service], image: str,
              tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A worker container on the host's network; its hostname (= its name) names its worker."""
    redis, rgw = services
    env = farm_env(redis, rgw, tmp_path / "home")
    _bucket(env)
    name = f"bpfdepot-ctest-{uuid.uuid4().hex[:8]}"
    started = _podman("run", "--detach", f"--name={name}", f"--hostname={name}", "--network=host",
                      "--privileged", *_run_flags(), *_container_env(env), image,
                      "--concurrency", "2")
    assert started.returncode == 0, started.stderr
    try:
        yield name, env
    finally:
        _podman("rm", "--force", "--time=0", name)


def test_the_container_worker_builds_a_submitted_bundle(container: tuple[str, dict[str, str]],
                                                        tmp_path: Path) -> None:
    name, env = container
    assert TARGET in add_kernels(env)
    worker = _wait_for_worker(env, name)
    bundle = copy_bundle("opensnoop", tmp_path)
    source = bundle / "opensnoop.bpf.c"
    source.write_text(f"/* {name} */\n" + source.read_text())  # a build key no store has seen
    done = cli(env, "submit", str(bundle), "--kernels", f"release={TARGET}", "--wait", timeout=600)
    assert done.returncode == 0, f"{done.stderr}\n{_podman('logs', name).stderr[-4000:]}"
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()]
    assert [(r[0], r[1], r[5]) for r in rows] == [("opensnoop", TARGET, "built")], done.stdout
    digest, meta_digest = rows[0][2], rows[0][-1]
    # the record names the container's worker: the build ran there, not on the host
    build_id = re.search(r"^build (\S+):", done.stderr, re.MULTILINE).group(1)
    record = Records(connect(env["BPFDEPOT_BROKER"])).get(build_id)
    assert record is not None and [j.worker for j in record.jobs.values()] == [worker]
    # the object and its meta read back from radosgw, through a store opened afresh on the host
    store = open_store(Settings.from_env(env))
    elf = store.read_blob(digest)
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == EM_BPF
    # (the meta from the worker's verdict sheet: its address is what submit --wait printed)
    assert "#x86_64-" in meta_digest and read_meta(store, meta_digest).digest == digest
    # podman stop sends SIGTERM: tini → worker-loop → the worker's warm shutdown, exit status 0
    stopped = _podman("stop", "--time=60", name, timeout=90)
    assert stopped.returncode == 0, stopped.stderr
    state = _podman("container", "inspect", "--format", "{{.State.ExitCode}}", name)
    logs = _podman("logs", name)
    assert state.stdout.strip() == "0", logs.stderr[-4000:]
    assert "Warm shutdown" in logs.stdout + logs.stderr
