"""What the farm's tasks do (builder/farm.py holds only the Celery wrappers).

A job compiles an ebpf_object source or checks a bpftrace_object script for one kernel
(``steps``); either is idempotent: it plans the build (its key comes from content), returns at once
when the store has that key, and otherwise compiles under a Redis lock named by the key, held
with a heartbeat. A redelivered or duplicate job that finds the lock taken does not compile: it
comes back later and finds the result in the store. So identical submissions compile once, a
worker killed mid-build is replaced by the redelivery, and a build longer than the broker's
visibility timeout never runs twice at the same time.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cache, partial
from pathlib import Path

import redis

from builder.bundle import bundle_include_dir, unpack_bundle
from builder.compile import (
    Built,
    Target,
    cached_build,
    execute_build,
    form_features,
    plan_build,
)
from builder.records import Job, Records, connect
from builder.toolchain import Toolchain, find_toolchain
from loader.kernel.catalog import get_kernel
from loader.errors import BpfDepotError, BuildError, StoreError
from loader.model.manifest import Manifest, load_bundle
from loader.model.settings import Settings
from loader.artifacts.store import ArtifactStore, open_store

log = logging.getLogger(__name__)

MAX_DELIVERIES = 3      # a message delivered more often than this is a poison bundle
LOCK_TTL_S = 10         # a dead compiler's lock frees itself after this long
STORE_RETRIES = 3       # transient store failures: retried with backoff, then the job fails
BUNDLE_MARK = "<bundle>"  # stands for the bundle's folder in recorded errors (see bundle_paths)


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    settings: Settings
    store: ArtifactStore
    records: Records
    redis: redis.Redis


@cache
def context() -> Context:
    """One per worker process, built from the environment the worker was started with."""
    settings = Settings.from_env(os.environ)
    client = connect(settings.broker)
    return Context(settings=settings, store=open_store(settings), records=Records(client), redis=client)


def fan_out(ctx: Context, build_id: str) -> Iterator[tuple[str, str]]:
    """The (program, target) pairs that need a compile job, once per build. Jobs whose result
    is already in the store are answered here, without a second trip through the broker."""
    build = ctx.records.get(build_id)
    if build is None or not ctx.records.claim_fanout(build_id):
        return iter(())
    def check(job: Job) -> tuple[Job, Built | None]:
        _, find, _ = steps(ctx, unpacked(ctx, build.bundle), job.program, job.target)
        return job, find()

    try:
        unpacked(ctx, build.bundle)  # once, before the threads race to unpack it
        with ThreadPoolExecutor(max_workers=min(8, len(build.jobs) or 1)) as pool:
            checked = list(pool.map(check, build.jobs.values()))  # store lookups overlap
    except Exception:  # noqa: BLE001 - this task claimed the fan-out: it must never lose a job
        log.warning("build %s: cache check failed, every job goes to a compile task", build_id,
                    exc_info=True)
        checked = [(job, None) for job in build.jobs.values()]
    todo = []
    for job, done in checked:
        if done is None:
            todo.append((job.program, job.target))
        else:
            ctx.records.update(build_id, replace(job, state="cached", digest=done.meta.digest,
                                                 meta=done.meta_digest, size=done.meta.size))
    return iter(todo)


def bundle_root(ctx: Context, bundle: str) -> Path:
    """Where this worker unpacks a bundle (its digest names the folder)."""
    return ctx.settings.cache / "bundles" / bundle.removeprefix("sha256:")


def bundle_paths(text: str, root: Path) -> str:
    """Name the worker's copy of a bundle BUNDLE_MARK in an error, so the record says
    ``<bundle>/x.bpf.c:3:10`` and ``submit --wait`` can show it in the user's own folder
    (as a local build does), instead of naming a folder of the worker's cache."""
    for path in dict.fromkeys((root, root.resolve())):  # the manifest names it resolved
        text = text.replace(f"{path}/", f"{BUNDLE_MARK}/")
        # an include reaching outside the bundle is shown normalised: <cache>/bundles/x.h
        text = text.replace(f"{path.parent}/", f"{BUNDLE_MARK}/../")
    return text


def unpacked(ctx: Context, bundle: str) -> Manifest:
    """The bundle unpacked in this worker's cache (once per digest, published by rename)."""
    root = bundle_root(ctx, bundle)
    if not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".unpack-"))
        try:
            unpack_bundle(ctx.store.read_blob(bundle), tmp)
            os.rename(tmp, root)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process published it first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return load_bundle(root)


_BTF_PATHS: dict[str, Path] = {}  # verified once per process: blobs never change


def target_of(ctx: Context, target: str) -> Target:
    """The build target for a catalog key (its entry is read each time: a node may have
    registered newer features; the entry and its BTF come from the local blob cache)."""
    arch, _, btf = target.partition("-")
    entry = get_kernel(ctx.store, arch, btf)
    if entry is None:
        raise BuildError(f"kernel {target} is not in the catalog of {ctx.store}",
                         hint="add it: bpfdepot kernels add --btf FILE")
    if btf not in _BTF_PATHS:
        _BTF_PATHS[btf] = ctx.store.blob_path(f"sha256:{btf}")
    return Target(identity=entry.identity, btf=_BTF_PATHS[btf],
                  features=form_features(entry.features, probed=entry.features_from == "probed"),
                  btf_on_node=entry.btf_on_node)


@cache
def toolchain(cache_dir: Path) -> Toolchain:
    return find_toolchain(cache_dir)


class _Heartbeat:
    """Keeps a Redis lock alive while a compile runs."""

    def __init__(self, lock: redis.lock.Lock) -> None:
        self.lock, self.stop = lock, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(LOCK_TTL_S / 3):
            try:
                self.lock.extend(LOCK_TTL_S, replace_ttl=True)
            except Exception:  # noqa: BLE001 - Redis away: the lock may lapse; the compile goes on
                pass

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def steps(ctx: Context, manifest: Manifest, program: str, target: str
          ) -> tuple[str, Callable[[], Built | None], Callable[[], Built]]:
    """One job's key (what its Redis lock is named by), how to find it done in the store and how
    to do it: a compile of an ebpf_object source, or the check of a bpftrace_object script
    (builder/bpftrace.py: policy, probes and fields against the target's BTF)."""
    spec = manifest.program(program)
    if getattr(spec, "type", None) == "bpftrace_object":  # anything else is planned as a compile
        from builder.bpftrace import cached_check, execute_check, plan_check

        check = plan_check(spec, target_of(ctx, target))
        return (check.key, partial(cached_check, ctx.store, check),
                partial(execute_check, ctx.store, check))
    plan = plan_build(manifest, spec, target_of(ctx, target), toolchain(ctx.settings.cache),
                      [bundle_include_dir(manifest.root)])
    return (plan.key, partial(cached_build, ctx.store, plan),
            partial(execute_build, ctx.store, plan, ctx.settings.cache))


def compile_job(ctx: Context, build_id: str, program: str, target: str, *, delivery: str,
                attempt: int, worker: str) -> float | None:
    """Run one compile job; return seconds after which to try again, or None when done."""
    build = ctx.records.get(build_id)
    if build is None:
        return None  # expired or unknown: nothing to report to
    job = build.jobs.get(f"{program}@{target}") or Job(program=program, target=target, release="?")
    if job.done:
        return None
    if ctx.records.delivered(delivery) > MAX_DELIVERIES:
        ctx.records.update(build_id, replace(job, state="failed", worker=worker, error=(
            f"delivered {MAX_DELIVERIES + 1} times: a worker died each time it ran this compile; "
            "not trying again (a bundle that kills its compiler?)")))
        return None
    started = time.perf_counter()
    try:
        key, find, make = steps(ctx, unpacked(ctx, build.bundle), program, target)
        done = find()
        if done is None:
            lock = ctx.redis.lock(f"bpfdepot:compiling:{key}", timeout=LOCK_TTL_S,
                                  blocking=False, thread_local=False)
            if not lock.acquire():
                ctx.records.update(build_id, replace(job, state="waiting", worker=worker))
                return min(0.05 * 2 ** min(attempt, 6), 2.0)
            try:
                done = find()  # finished while we took the lock?
                if done is None:
                    ctx.records.update(build_id, replace(job, state="compiling", worker=worker))
                    with _Heartbeat(lock):
                        done = make()
            finally:
                try:
                    lock.release()
                except redis.exceptions.LockError:
                    pass  # lapsed while Redis was away; the result is in the store either way
    except StoreError as exc:
        if attempt < STORE_RETRIES:
            ctx.records.update(build_id, replace(job, state="queued", worker=worker,
                                                 error=f"retrying: {exc.message}"))
            return 0.5 * 2 ** attempt
        ctx.records.update(build_id, replace(job, state="failed", worker=worker, error=str(exc)))
        return None
    except BpfDepotError as exc:  # compile errors fail at once: retrying cannot fix them
        ctx.records.update(build_id, replace(job, state="failed", worker=worker,
                                             error=bundle_paths(str(exc), bundle_root(ctx, build.bundle))))
        return None
    except Exception as exc:  # noqa: BLE001 - a bug or a bundle we did not foresee
        # Left to Celery, the message would be acknowledged and the job stay "queued" for ever.
        # The same bundle fails the same way on every delivery, so fail it now, with the cause.
        log.exception("build %s: compile of %s for %s failed unexpectedly", build_id, program, target)
        ctx.records.update(build_id, replace(job, state="failed", worker=worker,
                                             error=unexpected(exc, f"compile of '{program}'")))
        return None
    ctx.records.update(build_id, replace(
        job, state="cached" if done.cached else "built", digest=done.meta.digest,
        meta=done.meta_digest, size=done.meta.size, worker=worker, error="",
        seconds=round(time.perf_counter() - started, 3)))
    return None


def unexpected(exc: BaseException, what: str) -> str:
    """The recorded error for an exception no code path expected: its type names the cause."""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return (f"the farm's {what} failed: {type(exc).__name__}" + (f": {text}" if text else "") +
            "\nhint: this is a bug in bpfdepot or a bundle it cannot handle; the worker's log "
            "has the traceback (report it with the bundle)")


def fail_unfinished(ctx: Context, build_id: str, error: str, *, skip: AbstractSet[str] = frozenset()) -> None:
    """Mark the jobs of a build that are not done, nor in ``skip`` (their compile task is
    enqueued), as failed: for a fan-out that cannot go on."""
    build = ctx.records.get(build_id)
    for job in (build.jobs.values() if build else ()):
        if not job.done and job.key not in skip:
            ctx.records.update(build_id, replace(job, state="failed", error=error))
