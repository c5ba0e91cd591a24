"""Faults the farm survives, each with its own broker database and workers (the session's
workers listen elsewhere), real processes killed and restarted."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from builder.farmcli import submit, wait
from builder.records import Records, connect
from loader.model.settings import VISIBILITY_TIMEOUT_S, Settings
from loader.artifacts.store import open_store
from tests.farm.conftest import _bucket, cli, slow_bundle
from tests.services import (
    descendants,
    free_port,
    restart_redis,
    start_redis,
    start_worker_loop,
    start_workers,
)

ONE = f"release={os.uname().release}"


def _env(redis_url: str, rgw, home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(rgw.env)
    env.update(BPFDEPOT_BROKER=redis_url, BPFDEPOT_HOME=str(home),
               BPFDEPOT_STORE=f"s3://bpfdepot/faults-{home.parent.name}", BPFDEPOT_VISIBILITY_TIMEOUT="6")
    env.update(extra)
    _bucket(env)
    return env


def _register(env: dict[str, str]) -> None:
    done = cli(env, "kernels", "register")
    assert done.returncode == 0, done.stderr


def _events(records: Records, build_id: str) -> list[dict]:
    return [json.loads(x) for x in records.r.lrange(f"bpfdepot:build:{build_id}:events", 0, -1)]


def _until(what: str, check, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _state(records: Records, build_id: str) -> str:
    build = records.get(build_id)
    return next(iter(build.jobs.values())).state if build else ""


@pytest.fixture
def own_redis(tmp_path: Path):
    service = start_redis(tmp_path / "redis", persist=True)
    yield service
    service.stop()


def test_worker_killed_mid_build_is_redelivered_and_builds_once(own_redis, rgw, tmp_path: Path) -> None:
    """With the default visibility timeout (no BPFDEPOT_VISIBILITY_TIMEOUT): a build whose worker
    was killed comes back to a fresh worker within a bounded wait, not after an hour."""
    env = _env(own_redis.url, rgw, tmp_path / "home")
    del env["BPFDEPOT_VISIBILITY_TIMEOUT"]
    assert Settings.from_env(env).visibility_timeout == VISIBILITY_TIMEOUT_S
    _register(env)
    settings, records = Settings.from_env(env), Records(connect(own_redis.url))
    first = start_workers(env, concurrency=1, logdir=tmp_path)
    second = None
    try:
        build = submit(settings, str(slow_bundle(tmp_path, 16, "killed")), ONE)
        _until("the compile to start", lambda: _state(records, build.id) == "compiling", 60)
        for proc in first.procs:  # the whole worker: main process, pool child, clang
            os.killpg(proc.pid, signal.SIGKILL)
        first.procs.clear()
        second = start_workers(env, concurrency=1, logdir=tmp_path)
        # the visibility timeout plus one scan for unacked messages (every 10 s), with room
        done = wait(settings, build, 4 * VISIBILITY_TIMEOUT_S, live=False)
    finally:
        first.stop()
        if second:
            second.stop()
    [job] = done.jobs.values()
    assert job.state == "built", job
    states = [e["state"] for e in _events(records, build.id)]
    assert states.count("built") == 1
    store = open_store(settings)
    # published once: one verdict sheet (a redelivered compile would add a second)
    assert (store.list_refs("index/slow"), len(store.list_refs("sheets/slow"))) == ([], 1)
    assert store.read_blob(job.digest)[:4] == b"\x7fELF"


def test_redis_restart_during_a_build(own_redis, rgw, tmp_path: Path) -> None:
    """A worker of concurrency 2 (prefork: the build runs in a pool child, its message unacked in
    the main process) rides out a Redis restart: the in-flight build completes and the worker
    still consumes the queue afterwards, so a second build submitted after the restart is built."""
    env = _env(own_redis.url, rgw, tmp_path / "home")
    _register(env)
    settings, records = Settings.from_env(env), Records(connect(own_redis.url))
    workers = start_workers(env, concurrency=2, logdir=tmp_path)
    redis_now = own_redis
    try:
        build = submit(settings, str(slow_bundle(tmp_path, 16, "redis-restart")), ONE)
        _until("the compile to start", lambda: _state(records, build.id) == "compiling", 60)
        redis_now = restart_redis(own_redis, tmp_path / "redis")
        done = wait(settings, build, 180, live=False)
        after = submit(settings, str(slow_bundle(tmp_path, 4, "after-restart")), ONE)
        after_done = wait(settings, after, 180, live=False)
    finally:
        workers.stop()
        redis_now.stop()
    [job] = done.jobs.values()
    assert job.state == "built", job
    [second] = after_done.jobs.values()
    assert second.state == "built", second


def test_supervised_worker_killed_mid_build_is_started_again(own_redis, rgw, tmp_path: Path) -> None:
    """scripts/worker-loop (the worker image's entry point) starts the worker again after a
    kill -9 of it and its pool, and the new worker builds what the dead one was building."""
    env = _env(own_redis.url, rgw, tmp_path / "home")
    _register(env)
    settings, records = Settings.from_env(env), Records(connect(own_redis.url))
    supervised = start_worker_loop(env, concurrency=2, logdir=tmp_path)
    try:
        [loop] = supervised.procs
        [first] = _children_of(loop.pid)  # the worker's main process
        build = submit(settings, str(slow_bundle(tmp_path, 16, "supervised")), ONE)
        _until("the compile to start", lambda: _state(records, build.id) == "compiling", 60)
        for pid in [first, *descendants(first)]:  # the worker, its pool and clang: not the loop
            os.kill(pid, signal.SIGKILL)
        _until("the loop to start a new worker",
               lambda: any(p != first for p in _children_of(loop.pid)), 60)
        done = wait(settings, build, 180, live=False)
        assert loop.poll() is None, "the loop itself must keep running"
    finally:
        supervised.stop()
    [job] = done.jobs.values()
    assert job.state == "built", job
    log = next(tmp_path.glob("worker-loop-*.log")).read_text()
    assert "bpfdepot worker exited with status 137; starting it again in 1 s" in log


def _children_of(pid: int) -> list[int]:
    """The live, non-zombie children of a process."""
    from tests.services import children

    alive = []
    for child in children(pid):
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(child)
    return alive


def test_unreachable_store_fails_clearly_and_publishes_nothing(own_redis, rgw, tmp_path: Path) -> None:
    # Each attempt against the dead store retries for seconds: with the 6 s the other fault
    # tests use, a loaded machine redelivered the message while it still ran, and the job
    # ended as a poison bundle instead (redelivery is not what this test is about).
    env = _env(own_redis.url, rgw, tmp_path / "home", BPFDEPOT_VISIBILITY_TIMEOUT="30")
    _register(env)
    settings = Settings.from_env(env)
    dead = dict(env, BPFDEPOT_S3_ENDPOINT=f"http://127.0.0.1:{free_port()}",
                BPFDEPOT_HOME=str(tmp_path / "worker-home"))
    workers = start_workers(dead, concurrency=1, logdir=tmp_path)
    try:
        bundle = slow_bundle(tmp_path, 4, "store-down")
        build = submit(settings, str(bundle), ONE)  # the submitter reaches the store; workers do not
        done = wait(settings, build, 240, live=False)
    finally:
        workers.stop()
    [job] = done.jobs.values()
    assert job.state == "failed"
    assert "failed after 5 attempts" in job.error and "is the object store reachable?" in job.error
    assert open_store(settings).list_refs("index/slow") == []
    assert open_store(settings).list_refs("sheets/slow") == []
    assert cli(env, "lock", str(bundle)).returncode == 3
    assert not (bundle / "bpfdepot.lock").exists()
    # and a client that cannot reach the store says so, with the store's exit code
    refused = cli(dead, "submit", str(bundle), "--kernels", ONE)
    assert refused.returncode == 9, refused.stderr
    assert "is the object store reachable?" in refused.stderr


def test_build_longer_than_the_visibility_timeout_runs_once(own_redis, rgw, tmp_path: Path) -> None:
    env = _env(own_redis.url, rgw, tmp_path / "home", BPFDEPOT_VISIBILITY_TIMEOUT="3")
    _register(env)
    settings, records = Settings.from_env(env), Records(connect(own_redis.url))
    workers = start_workers(env, concurrency=2, logdir=tmp_path)
    try:
        # 2**18 statements: well past 3 s + the 10 s at which workers restore unacked messages
        build = submit(settings, str(slow_bundle(tmp_path, 18, "visibility")), ONE)
        done = wait(settings, build, 300, live=False)
    finally:
        workers.stop()
    [job] = done.jobs.values()
    assert job.state == "built", job
    states = [e["state"] for e in _events(records, build.id)]
    assert states.count("compiling") == 1, states
    assert "waiting" in states, f"the message was never redelivered: {states}"
