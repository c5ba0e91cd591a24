"""The worker image: how long it takes to build, and what the container costs a farm build.

- Image build: ``scripts/build-image`` again (the debootstrap base and the package layers
  cached; the source layers again when the tree changed since the previous build, as it does
  while people work in it) against ``podman build --no-cache`` of the same Containerfile on the
  same local base (every layer made again: apt-get of clang/llvm/Go, pip of the farm extras).
  Both use the same runtime flags; the cold build downloads its packages, so it depends on the
  network and runs ``--cold-reps`` times only (default 1).
- Farm build: the same fresh bundles (the eight in BUNDLES × the kernels in ../shared/kernels and
  this machine's: 32 jobs, one compile per variant) built by one worker of
  concurrency 2, either a ``bpfdepot worker`` on the host or the image's container on the host
  network (podman run, the way tests/container runs it). Wall time from the first ``submit()``
  to the last result. Each repetition starts the worker, builds an uncounted warm-up round
  (vmlinux.h headers, clients), then the timed round, and stops it; host and container alternate.

Needs root, podman (scripts/build-image installs it), redis-server and Ceph (tests/services.py),
and no other Ceph cluster running (fixed ports):
    python bench/bench_image.py [--reps 3] [--cold-reps 1] [--no-image | --no-farm]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import harness
from harness import ROOT, Row, median, paired, timed

BUILD_IMAGE = ROOT / "scripts" / "build-image"
BASE, IMAGE = "localhost/debian:bookworm", "localhost/bpfdepot-worker:latest"
BUNDLES = ("opensnoop", "tcp_connlat", "execsnoop", "runqlat", "syscount", "filelat", "oomkill",
           "tcp_retrans")
WAIT_S = 600  # a round longer than this is broken, not slow


def s(seconds: float) -> str:
    return f"{seconds:.1f} s"


def run_flags() -> list[str]:
    """The runtime and rlimit flags podman needs on this host (see scripts/build-image)."""
    return harness.run([str(BUILD_IMAGE), "--run-flags"]).stdout.split()


def measure_image(args: argparse.Namespace) -> list[Row]:
    harness.run([str(BUILD_IMAGE)], timeout=3600)  # uncounted: brings the cache up to this tree
    cached = [timed([str(BUILD_IMAGE)], timeout=3600)[0] for _ in range(args.reps)]
    cold = []
    for _ in range(args.cold_reps):
        tag = f"localhost/bpfdepot-worker:bench-cold-{uuid.uuid4().hex[:8]}"
        secret = ["--secret", "id=build-ca,src=/etc/ssl/certs/ca-certificates.crt"] \
            if Path("/etc/ssl/certs/ca-certificates.crt").exists() else []
        cold.append(timed(["podman", "build", "--no-cache", *run_flags(), "--network=host", *secret,
                           "--build-arg", f"BASE={BASE}", "-t", tag, "-f", str(ROOT / "Containerfile"),
                           str(ROOT)], timeout=3600)[0])
        harness.run(["podman", "image", "rm", tag])
    return [Row(metric="worker image rebuilt (scripts/build-image: base, packages cached)",
                value=s(median(cached)), baseline=f"{s(median(cold))} podman build --no-cache",
                ratio=median(cached) / median(cold), goal="—")]


class Farm:
    """Redis, radosgw with a bucket and the kernel catalog; workers come and go per round."""

    def __init__(self, tmp: Path) -> None:
        from tests.farm.conftest import _bucket, add_kernels, farm_env
        from tests.services import start_redis, start_rgw

        self.tmp = tmp
        self.redis = start_redis(tmp / "redis")
        try:
            self.rgw = start_rgw(tmp / "ceph")
        except BaseException:
            self.redis.stop()
            raise
        self.saved = dict(os.environ)
        os.environ.update(self.rgw.env)  # in-process boto3 finds credentials the usual way
        self.env = farm_env(self.redis, self.rgw, tmp / "client-home", prefix="bench-image")
        _bucket(self.env)
        self.releases = add_kernels(self.env)  # the reference kernels and this machine's

    def close(self) -> None:
        self.rgw.stop()
        self.redis.stop()
        os.environ.clear()
        os.environ.update(self.saved)

    def round(self, tag: str) -> float:
        """Fresh copies of BUNDLES for every kernel in the catalog; seconds until all are built."""
        from bench_farm import fresh_copies

        from builder.farmcli import submit, wait
        from loader.model.settings import Settings

        settings = Settings.from_env(self.env)
        copies = fresh_copies([ROOT / "bpf" / b for b in BUNDLES], self.tmp / "bundles", tag)
        t0 = time.perf_counter()
        builds = [submit(settings, str(c), "all") for c in copies.values()]
        done = [wait(settings, b, WAIT_S, live=False) for b in builds]
        took = time.perf_counter() - t0
        states = [j.state for b in done for j in b.jobs.values()]
        # refused: built, then relocation-checked and found unfit for that kernel (work done too)
        if len(states) != len(BUNDLES) * len(self.releases) or set(states) - {"built", "refused"}:
            raise SystemExit(f"bench: round {tag} did not finish every job: {states}")
        return took


def host_worker(farm: Farm) -> Callable[[], None]:
    from tests.services import start_workers

    home = farm.tmp / f"host-worker-{uuid.uuid4().hex[:6]}"
    home.mkdir()
    worker = start_workers(dict(farm.env, BPFDEPOT_HOME=str(home)), count=1, concurrency=2,
                           logdir=home)
    return worker.stop


def container_worker(farm: Farm) -> Callable[[], None]:
    from celery import Celery

    name = f"bpfdepot-bench-{uuid.uuid4().hex[:8]}"
    keys = ("BPFDEPOT_BROKER", "BPFDEPOT_STORE", "BPFDEPOT_S3_ENDPOINT", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    harness.run(["podman", "run", "--detach", f"--name={name}", f"--hostname={name}",
                 "--network=host", "--privileged", *run_flags(),
                 *[f"-e={k}={farm.env[k]}" for k in keys], IMAGE, "--concurrency", "2"])

    def stop() -> None:
        subprocess.run(["podman", "rm", "--force", "--time=30", name], capture_output=True, check=False)
    app = Celery(broker=farm.env["BPFDEPOT_BROKER"])
    try:
        deadline = time.monotonic() + 120
        while not any(next(iter(r)).endswith(f"@{name}") for r in app.control.ping(timeout=1.0) or []):
            if time.monotonic() > deadline:
                stop()
                raise SystemExit(f"bench: the worker in container {name} did not answer in 120 s")
    finally:
        app.close()
    return stop


def measure_farm(args: argparse.Namespace) -> list[Row]:
    with harness.scratch("image") as tmp:
        farm = Farm(tmp)
        try:
            times: dict[str, list[float]] = {"host": [], "container": []}
            for rep in range(args.reps):
                for kind, start in (("host", host_worker), ("container", container_worker)):
                    stop = start(farm)
                    try:
                        farm.round(f"warm-{kind}-{rep}")
                        times[kind].append(farm.round(f"{kind}-{rep}"))
                    finally:
                        stop()
                    print(f"  {kind} round {rep}: {s(times[kind][-1])}", flush=True)
        finally:
            farm.close()
    return [Row(metric=f"farm build, {len(BUNDLES)} bundles × {len(farm.releases)} kernels, "
                       "worker in the container",
                value=s(median(times["container"])),
                baseline=f"{s(median(times['host']))} worker on the host",
                ratio=paired(times["container"], times["host"]), goal="≤ 1.10×",
                met=paired(times["container"], times["host"]) <= 1.10)]


def measure(args: argparse.Namespace) -> list[Row]:
    rows = [] if args.no_image else measure_image(args)
    return rows + ([] if args.no_farm else measure_farm(args))


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cold-reps", type=int, default=1, help="no-cache image builds (default 1)")
    p.add_argument("--no-image", action="store_true", help="skip the image-build rows")
    p.add_argument("--no-farm", action="store_true", help="skip the farm rows (no Ceph needed)")


if __name__ == "__main__":
    sys.exit(harness.main("bench_image", measure, reps=3, add_args=_args))
