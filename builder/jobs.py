"""What the farm's tasks do (builder/farm.py holds only the Celery wrappers).

A build has one job per (program × kernel). The fan-out answers the jobs the store already
holds and groups the rest by *object key*: the kernels of one variant share one compile
against the build's reference header (builder/compile.py), so one task compiles the group's
object once and then checks it for each of its kernels (builder/verdicts.py), publishing or
refusing each. A bpftrace_object script is checked per kernel (builder/bpftrace.py).

Every task is idempotent: keys come from content, a key the store holds is answered at once,
and a compile runs under a Redis lock named by its object key, held with a heartbeat. A
redelivered or duplicate task that finds the lock taken does not compile: it comes back later
and finds the object in the store. So identical submissions compile once, a worker killed
mid-build is replaced by the redelivery, and a build longer than the broker's visibility
timeout never runs twice at the same time.
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
    Compiled,
    Plan,
    Target,
    closure_of,
    compile_object,
    find_compiled,
    form_features,
    plan_build,
)
from builder.verdicts import (Checked, check_kernel, find_done, index_of, publish_kernel,
                              publish_sheet_of)
from builder.records import Build, Job, Records, connect
from builder.toolchain import Toolchain, find_toolchain
from loader.artifacts.meta import index_ref, read_meta
from loader.artifacts.sheets import SheetView
from loader.kernel.catalog import KernelEntry, catalog_ref
from loader.errors import BpfDepotError, BuildError, KernelRefused, StoreError
from loader.model.manifest import Manifest, load_bundle
from loader.model.settings import Settings
from loader.artifacts.store import ArtifactStore, open_store

log = logging.getLogger(__name__)

MAX_DELIVERIES = 3      # a message delivered more often than this is a poison bundle
LOCK_TTL_S = 10         # a dead compiler's lock frees itself after this long
STORE_RETRIES = 3       # transient store failures: retried with backoff, then the job fails
LOAD_TEST_RETRIES = 2   # a load test that could not run (QEMU, a node): tried again, then failed
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


def fan_out(ctx: Context, build_id: str) -> Iterator[tuple[str, list[str]]]:
    """The compile tasks a build needs, once per build: (program, the kernels that share one
    compile). Jobs whose result (or refusal) is already in the store are answered here,
    without a second trip through the broker."""
    build = ctx.records.get(build_id)
    if build is None or not ctx.records.claim_fanout(build_id):
        return iter(())
    groups: dict[tuple[str, str], list[str]] = {}

    def check(item: tuple[Job, str, Callable[[], Built | None]]) -> tuple[Job, str, object]:
        job, group, find = item
        try:
            return job, group, find()
        except KernelRefused as exc:
            return job, group, exc

    try:
        unpacked(ctx, build.bundle)  # once, before the threads race to unpack it
        load_methods(ctx, build_id, [job.target for job in build.jobs.values()])
        steps = [(job, *job_steps(ctx, build, job.program, job.target)) for job in build.jobs.values()]
        # one listing per program's sources tells which kernels have a verdict at all: a fresh
        # build of 30 kernels asks the store 1 question per program, not 30 (and one more for
        # its verdict sheets: loader/artifacts/sheets.py)
        prefixes = sorted({index.rpartition("/")[0] for *_, index in steps})
        with ThreadPoolExecutor(max_workers=min(8, len(steps) or 1)) as pool:
            listed = {name for names in pool.map(ctx.store.list_refs, prefixes) for name in names}
            views = dict(zip(prefixes, pool.map(partial(_sheets, ctx.store), prefixes)))
            in_sheets = {p: v.targets() for p, v in views.items()}
            known = [(job, group, find if index in listed else partial(find, sheets=views[prefix]))
                     for job, group, find, index in steps
                     for prefix, _, target in [index.rpartition("/")]
                     if index in listed or target in in_sheets[prefix]]
            checked = list(pool.map(check, known))  # store lookups overlap
        answered = {id(job) for job, *_ in known}
        checked += [(job, group, None) for job, group, *_ in steps if id(job) not in answered]
    except Exception:  # noqa: BLE001 - this task claimed the fan-out: it must never lose a job
        log.warning("build %s: cache check failed, every job goes to a compile task", build_id,
                    exc_info=True)
        checked = [(job, job.target, None) for job in build.jobs.values()]
    for job, group, done in checked:
        if done is None:
            groups.setdefault((job.program, group), []).append(job.target)
        else:
            record_done(ctx, build_id, job, done)
    return iter((program, targets) for (program, _), targets in groups.items())


def _sheets(store: ArtifactStore, index_prefix: str) -> SheetView:
    """The verdict sheets of the sources whose index refs are under ``index/<program>/<src>``."""
    _, program, source = index_prefix.split("/")
    return SheetView.of(store, program, source)


def record_done(ctx: Context, build_id: str, job: Job, done: Built | KernelRefused | Checked, *,
                worker: str = "", seconds: float = 0.0) -> None:
    """Record a job's end: its artifact (built or found), or its kernel's refusal; or that it
    waits for its kernel's load test (its candidate meta stored, not published)."""
    ctx.records.update(build_id, ended(ctx, job, done, worker=worker, seconds=seconds))


def ended(ctx: Context, job: Job, done: Built | KernelRefused | Checked, *, worker: str = "",
          seconds: float = 0.0) -> Job:
    """The job as record_done records it."""
    if isinstance(done, Checked):
        from builder.loadtests import candidate

        return replace(
            job, state="load-testing", digest=done.meta.digest, meta=candidate(ctx.store, done),
            size=done.meta.size, worker=worker or job.worker, seconds=seconds or job.seconds,
            compiled=done.fresh, reference=str(done.meta.extra.get("reference", "")),
            object_key=str(done.meta.extra.get("object_key", "")))
    if isinstance(done, KernelRefused):
        record = getattr(done, "record", {})
        return replace(job, state="refused", worker=worker or job.worker, error=str(done),
                       seconds=seconds, digest="", meta="", size=0,
                       reference=str(record.get("reference", "")),
                       object_key=str(record.get("object_key", "")))
    return replace(
        job, state="cached" if done.cached else "built", digest=done.meta.digest,
        meta=done.meta_digest, size=done.meta.size, worker=worker or job.worker, error="",
        seconds=seconds or job.seconds, reference=str(done.meta.extra.get("reference", "")),
        object_key=str(done.meta.extra.get("object_key", "")))


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


_MANIFESTS: dict[str, Manifest] = {}  # by bundle digest: content-addressed, parsed once


def unpacked(ctx: Context, bundle: str) -> Manifest:
    """The bundle unpacked in this worker's cache (once per digest, published by rename), and
    its manifest (parsed once per process: every job of a build asks for it)."""
    if bundle in _MANIFESTS:
        return _MANIFESTS[bundle]
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
    manifest = load_bundle(root)
    if len(_MANIFESTS) > 256:
        _MANIFESTS.clear()
    _MANIFESTS[bundle] = manifest
    return manifest


_BTF_PATHS: dict[str, Path] = {}  # verified once per process: blobs never change
ENTRY_TTL_S = 10.0                 # the kernel catalog listed this recently is listed again no sooner
_TARGETS: dict[str, tuple[object, Target]] = {}


class _Catalog:
    """The kernel catalog as this process last listed it: every entry's ref and digest, from
    one listing at most every ENTRY_TTL_S (an unchanged S3 listing is one request), and the
    entries read so far by digest (content-addressed: read once). A build of 30 kernels × 30
    programs asks the store once, not twice per kernel per task; a kernel the listing lacks
    is listed again at once (added since), so a new kernel is never refused for a stale list."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.listed_at = float("-inf")
        self.refs: dict[str, str] = {}
        self.entries: dict[str, KernelEntry] = {}

    def entry(self, store: ArtifactStore, target: str) -> KernelEntry | None:
        arch, _, btf = target.partition("-")
        name = catalog_ref(arch, btf)
        with self.lock:
            if name not in self.refs or time.monotonic() - self.listed_at > ENTRY_TTL_S:
                self.listed_at = time.monotonic()
                self.refs = store.read_refs(name.rpartition("/")[0])
            digest = self.refs.get(name)
            if digest is None:
                return None
            if digest not in self.entries:
                self.entries[digest] = KernelEntry.from_json(
                    store.read_blob(digest), where=f"kernel entry {name} ({digest})")
            return self.entries[digest]


_CATALOG = _Catalog()


def kernel_entry(ctx: Context, target: str) -> KernelEntry | None:
    """The catalog entry of ``target`` (None if absent), as listed at most ENTRY_TTL_S ago: a
    node may register newer features, but a build must not read the catalog for every job."""
    return _CATALOG.entry(ctx.store, target)


def target_of(ctx: Context, target: str) -> Target:
    """The build target for a catalog key (its entry and BTF come from the local blob cache)."""
    arch, _, btf = target.partition("-")
    entry = kernel_entry(ctx, target)
    made = _TARGETS.get(target)
    if made is not None and made[0] is entry:  # the same entry read: the same target
        return made[1]
    if entry is None:
        raise BuildError(f"kernel {target} is not in the catalog of {ctx.store}",
                         hint="add it: bpfdepot kernels add --btf FILE")
    if btf not in _BTF_PATHS:
        _BTF_PATHS[btf] = ctx.store.blob_path(f"sha256:{btf}")
    made = Target(identity=entry.identity, btf=_BTF_PATHS[btf],
                  features=form_features(entry.features, probed=entry.features_from == "probed"),
                  btf_on_node=entry.btf_on_node,
                  absent=frozenset(k for k, ok in entry.features.items() if not ok))
    _TARGETS[target] = (entry, made)
    return made


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


def job_steps(ctx: Context, build: Build, program: str, target: str
              ) -> tuple[str, Callable[[], Built | None], str]:
    """A job's group (jobs of one group share a compile: its object key), how to find it done
    in the store (raising KernelRefused for a recorded refusal), and the index ref where its
    kernel's verdict would be."""
    manifest = unpacked(ctx, build.bundle)
    spec = manifest.program(program)
    if getattr(spec, "type", None) == "bpftrace_object":  # checked per kernel, never grouped
        from builder.bpftrace import cached_check, plan_check

        check = plan_check(spec, target_of(ctx, target))
        return f"bpftrace:{target}", partial(cached_check, ctx.store, check), check.index
    plan = plan_of(ctx, build, manifest, program, target)
    return plan.object_key, partial(find_done, ctx.store, plan), \
        index_ref(plan.program.name, plan.source_digest, plan.target.identity)


_PLANS: dict[tuple, Plan] = {}  # a bundle's folder never changes: plans are reused
_CLOSURES: dict[tuple[str, str], tuple] = {}
_REFERENCES: dict[str, dict[str, str]] = {}


def plan_of(ctx: Context, build: Build, manifest: Manifest, program: str, target: str) -> Plan:
    """The plan of one job: compiled against the build's reference kernel for its arch, and
    load-tested the way the build decided for its kernel."""
    if build.id not in _REFERENCES:  # the same for every job of a build
        _REFERENCES[build.id] = build.references
    reference = _REFERENCES[build.id].get(target.partition("-")[0])
    method = load_method(ctx, build.id, target)
    kernel, header = target_of(ctx, target), target_of(ctx, reference) if reference else None
    key = (build.bundle, program, kernel, header, method)  # the entries' features count
    if key not in _PLANS:
        if len(_PLANS) > 4096:
            _PLANS.clear()
            _CLOSURES.clear()
            _REFERENCES.clear()
        spec, includes = manifest.program(program), [bundle_include_dir(manifest.root)]
        files = _CLOSURES.get((build.bundle, program))
        if files is None:  # the same sources for every kernel
            files = _CLOSURES[(build.bundle, program)] = closure_of(manifest, spec, includes)
        _PLANS[key] = plan_build(manifest, spec, kernel, toolchain(ctx.settings.cache), includes,
                                 reference=header, load_test=method, files=files)
    return _PLANS[key]


_METHODS: dict[tuple[str, str], str] = {}


def load_method(ctx: Context, build_id: str, target: str) -> str:
    """How the build load-tests its objects for ``target`` (builder/loadtests.py), decided once
    per build, by its first task, so that every task computes the same record keys."""
    return load_methods(ctx, build_id, [target])[target]


def load_methods(ctx: Context, build_id: str, targets: list[str]) -> dict[str, str]:
    """``load_method`` of each target; those this process does not know yet are decided
    together, in two round trips (a task of 30 kernels would otherwise make 60)."""
    missing = [t for t in dict.fromkeys(targets) if (build_id, t) not in _METHODS]
    if missing:
        from builder.loadtests import methods_for

        entries = {t: kernel_entry(ctx, t) for t in missing}
        known = [t for t in missing if entries[t] is not None]
        methods = dict.fromkeys(missing, "") | dict(zip(known, methods_for(
            ctx.redis, [entries[t] for t in known])))
        if len(_METHODS) > 4096:  # a long-lived worker sees many builds
            _METHODS.clear()
        decided = ctx.records.decide_many(build_id, {f"load-test:{t}": m for t, m in methods.items()})
        _METHODS.update({(build_id, t): decided[f"load-test:{t}"] for t in missing})
    return {t: _METHODS[(build_id, t)] for t in targets}


def compile_job(ctx: Context, build_id: str, program: str, target: str | list[str], *,
                delivery: str, attempt: int, worker: str) -> float | None:
    """Run one compile task: the object of ``program`` shared by ``target`` (a kernel or the
    kernels of one variant), then its verdict for each. Return seconds after which to try
    again, or None when done."""
    targets = [target] if isinstance(target, str) else list(target)
    build = ctx.records.get(build_id)
    if build is None:
        return None  # expired or unknown: nothing to report to
    jobs = [build.jobs.get(f"{program}@{t}") or Job(program=program, target=t, release="?")
            for t in targets]
    if any(job.state == "load-testing" for job in jobs):  # a redelivery after the check
        for job in jobs:
            start_load_test(ctx, build_id, job.target)
    jobs = [job for job in jobs if not job.done and job.state != "load-testing"]
    if not jobs:
        return None
    if ctx.records.delivered(delivery) > MAX_DELIVERIES:
        for job in jobs:
            ctx.records.update(build_id, replace(job, state="failed", worker=worker, error=(
                f"delivered {MAX_DELIVERIES + 1} times: a worker died each time it ran this "
                "compile; not trying again (a bundle that kills its compiler?)")))
        return None
    started = time.perf_counter()
    what = f"compile of '{program}'"
    try:
        manifest = unpacked(ctx, build.bundle)
        bpftrace = getattr(manifest.program(program), "type", None) == "bpftrace_object"
        if bpftrace:
            from builder.bpftrace import plan_check

            what = f"check of '{program}'"
            key = plan_check(manifest.program(program), target_of(ctx, jobs[0].target)).key
        else:
            load_methods(ctx, build_id, [job.target for job in jobs])
            plans = [plan_of(ctx, build, manifest, program, job.target) for job in jobs]
            key = plans[0].object_key
        # The whole task runs under its key's lock: a redelivery (a task longer than the
        # visibility timeout) or an identical build waits, then finds the work done.
        lock = ctx.redis.lock(f"bpfdepot:compiling:{key}", timeout=LOCK_TTL_S, blocking=False,
                              thread_local=False)
        if not lock.acquire():
            for job in jobs:
                ctx.records.update(build_id, replace(job, state="waiting", worker=worker))
            return min(0.05 * 2 ** min(attempt, 6), 2.0)
        try:
            with _Heartbeat(lock):
                # a delivery before this one may have ended them (only these jobs are read:
                # the whole build is ~1000 of them)
                now = ctx.records.jobs_of(build_id, [job.key for job in jobs])
                left = [i for i, job in enumerate(jobs) if not (
                    now.get(job.key, job).done or now.get(job.key, job).state == "load-testing")]
                earlier = [job.target for job in jobs if now.get(job.key, job).state == "load-testing"]
                if bpftrace:
                    for i in left:
                        record_done(ctx, build_id, jobs[i],
                                    _bpftrace(ctx, manifest, program, jobs[i].target),
                                    worker=worker, seconds=round(time.perf_counter() - started, 3))
                    return None
                jobs, plans = [jobs[i] for i in left], [plans[i] for i in left]
                waiting = earlier + (_compile_and_check(ctx, build_id, jobs, plans, worker, started)
                                     if jobs else [])
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass  # lapsed while Redis was away; the results are in the store either way
        for target in dict.fromkeys(waiting):  # only kernels with a candidate have a load test
            start_load_test(ctx, build_id, target)
    except StoreError as exc:
        if attempt < STORE_RETRIES:
            for job in jobs:
                ctx.records.update(build_id, replace(job, state="queued", worker=worker,
                                                     error=f"retrying: {exc.message}"))
            return 0.5 * 2 ** attempt
        _fail(ctx, build_id, jobs, worker, str(exc))
    except BpfDepotError as exc:  # compile errors fail at once: retrying cannot fix them
        _fail(ctx, build_id, jobs, worker, bundle_paths(str(exc), bundle_root(ctx, build.bundle)))
    except Exception as exc:  # noqa: BLE001 - a bug or a bundle we did not foresee
        # Left to Celery, the message would be acknowledged and the job stay "queued" for ever.
        # The same bundle fails the same way on every delivery, so fail it now, with the cause.
        log.exception("build %s: %s for %s failed unexpectedly", build_id, what, targets)
        _fail(ctx, build_id, jobs, worker, unexpected(exc, what))
    return None


def _compile_and_check(ctx: Context, build_id: str, jobs: list[Job], plans: list[Plan],
                       worker: str, started: float) -> list[str]:
    """The shared object (found, or compiled now), then each kernel's verdict, recorded (in one
    round trip); returns the kernels whose candidates wait for a load test."""
    own = set(ctx.store.list_refs(index_of(plans[0]).rpartition("/")[0]))  # kernels with an index ref
    verdicts: list[Built | KernelRefused | Checked | None] = [None] * len(plans)
    compiled = find_compiled(ctx.store, plans[0].object_key)
    if compiled is None:
        ctx.records.update_many(build_id, [replace(job, state="compiling", worker=worker)
                                           for job in jobs])
        compiled = compile_object(ctx.store, plans[0], ctx.settings.cache)
    else:  # compiled before, maybe by an identical build this task waited for: checked too?
        verdicts = _found(ctx, plans, own)
    # Each kernel's check is ~1 ms of CPU. The kernels without an index ref of their own (all
    # of them, for new sources) are published together in one verdict sheet: two store writes
    # for the compile, not two per kernel. A kernel with one (an older compile's pass or
    # refusal, a load test's) is published there as before: a sheet never overrides it.
    left = [i for i, v in enumerate(verdicts) if v is None]
    together = [not p.load_test and index_of(p) not in own for p in plans]

    def verdict(i: int) -> Built | KernelRefused | Checked:
        return _verdict(ctx, plans[i], compiled, meta_of=i == 0, together=together[i])

    if all(together[i] and plans[i].target.btf_on_node for i in left):
        checked = list(map(verdict, left))  # Python alone: threads would only wait
    else:  # store writes, and bpftool for minimal BTFs: overlapped
        with ThreadPoolExecutor(max_workers=min(8, len(left))) as pool:
            checked = list(pool.map(verdict, left))
    for i, done in zip(left, checked):
        verdicts[i] = done
    sheet = [i for i in left if together[i]]
    if sheet:
        published = publish_sheet_of(ctx.store, compiled, [plans[i] for i in sheet],
                                     [verdicts[i] for i in sheet])
        for i, done in zip(sheet, published):
            verdicts[i] = replace(done, cached=compiled.cached) if isinstance(done, Built) else done
    seconds = round(time.perf_counter() - started, 3)
    ctx.records.update_many(build_id, [ended(ctx, job, verdict, worker=worker, seconds=seconds)
                                       for job, verdict in zip(jobs, verdicts)])
    return [job.target for job, verdict in zip(jobs, verdicts) if isinstance(verdict, Checked)]


def _found(ctx: Context, plans: list[Plan], own: AbstractSet[str]) -> list[Built | KernelRefused | None]:
    """Each kernel's verdict on a compile published before (None: to be checked): a task that
    waited on the lock of an identical build finds its work done, instead of publishing the
    same verdicts in a sheet of its own."""
    sheets = _sheets(ctx.store, index_of(plans[0]).rpartition("/")[0])

    def find(plan: Plan) -> Built | KernelRefused | None:
        try:
            return find_done(ctx.store, plan, sheets=None if index_of(plan) in own else sheets)
        except KernelRefused as exc:
            return exc

    return [find(plan) for plan in plans]


def _verdict(ctx: Context, plan: Plan, compiled: Compiled, *, meta_of: bool = True,
             together: bool = False) -> Built | KernelRefused | Checked:
    """The kernel's record of a compiled object: checked and published, or checked and waiting
    for its load test, or refused; ``together``: checked only, its verdict (pass or refusal)
    published with the others' in a verdict sheet. (The fan-out found no record for it; one
    published since, by an identical build, is the same bytes: publishing keeps the first.)"""
    try:
        checked = check_kernel(ctx.store, plan, compiled, ctx.settings.cache, record=not together)
        if plan.load_test or together:
            return replace(checked, fresh=not compiled.cached)
        return replace(publish_kernel(ctx.store, checked, meta_of=meta_of), cached=compiled.cached)
    except KernelRefused as exc:
        return exc


def start_load_test(ctx: Context, build_id: str, target: str) -> None:
    """Enqueue the load test of ``target`` once every job of the build for it is checked."""
    build = ctx.records.get(build_id)
    mine = [j for j in (build.jobs.values() if build else ()) if j.target == target]
    waiting = [j for j in mine if j.state == "load-testing"]
    if not waiting or not all(j.done or j.state == "load-testing" for j in mine):
        return
    if not ctx.records.claim(build_id, f"load-test:{target}"):
        return
    from builder.farm import QUEUE, loadtest_task
    from builder.loadtests import node_queue

    queue = node_queue(target) if load_method(ctx, build_id, target) == "node" else QUEUE
    loadtest_task.apply_async((build_id, target), queue=queue)


def load_test_job(ctx: Context, build_id: str, target: str, *, attempt: int,
                  worker: str) -> float | None:
    """Load-test every candidate of ``target`` in the build in one go, then publish or refuse
    each; return seconds after which to try again (the test could not run), or None."""
    from builder.loadtests import run_load_test, settle

    build = ctx.records.get(build_id)
    jobs = [j for j in (build.jobs.values() if build else ()) if j.target == target
            and j.state == "load-testing"]
    if not jobs:
        return None
    method = load_method(ctx, build_id, target)
    try:
        manifest = unpacked(ctx, build.bundle)
        entry = kernel_entry(ctx, target)
        if entry is None:
            raise BuildError(f"kernel {target} left the catalog during the build",
                             hint="add it again and resubmit")
        plans = [plan_of(ctx, build, manifest, j.program, target) for j in jobs]
        for job, plan in zip(jobs, plans):  # another build may have tested the same object
            try:
                done = find_done(ctx.store, plan)
            except KernelRefused as exc:
                done = exc
            if done is not None:
                record_done(ctx, build_id, job, done if isinstance(done, KernelRefused)
                            else replace(done, cached=not job.compiled), worker=worker)
        now = ctx.records.get(build_id)
        left = [(j, p) for j, p in zip(jobs, plans) if now is not None and not now.jobs[j.key].done]
        if not left:
            return None
        jobs, plans = [j for j, _ in left], [p for _, p in left]
        metas = [read_meta(ctx.store, j.meta) for j in jobs]
        objects = [(j.program, ctx.store.read_blob(m.digest)) for j, m in zip(jobs, metas)]
        started = time.perf_counter()
        verdicts, seconds, how = run_load_test(ctx.store, entry, method, objects, ctx.settings.cache)
        results = settle(ctx.store, list(zip(plans, metas)), verdicts, seconds, how)
    except Exception as exc:  # noqa: BLE001 - QEMU, the node or the store: not the program
        if attempt < LOAD_TEST_RETRIES:
            log.warning("build %s: load test of %s failed, again later: %s", build_id, target, exc)
            return 2.0 * 2 ** attempt
        error = str(exc) if isinstance(exc, BpfDepotError) else unexpected(exc, "load test")
        _fail(ctx, build_id, jobs, worker, f"the load test ({method}) could not run: {error}")
        return None
    for job in jobs:
        result = results[job.program]
        if isinstance(result, Built):  # "built" where this build compiled it, else "cached"
            result = replace(result, cached=not job.compiled)
        record_done(ctx, build_id, job, result, worker=worker,
                    seconds=round(job.seconds + time.perf_counter() - started, 3))
    return None


def _bpftrace(ctx: Context, manifest: Manifest, program: str, target: str) -> Built:
    """A bpftrace_object script checked for one kernel (builder/bpftrace.py), or found checked."""
    from builder.bpftrace import cached_check, execute_check, plan_check

    check = plan_check(manifest.program(program), target_of(ctx, target))
    return cached_check(ctx.store, check) or execute_check(ctx.store, check)


def _fail(ctx: Context, build_id: str, jobs: list[Job], worker: str, error: str) -> None:
    for job in jobs:
        ctx.records.update(build_id, replace(job, state="failed", worker=worker, error=error))


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
