"""``bpfdepot worker | submit | builds``: the build farm from the command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from builder.records import Build, Job, Records, connect
from loader.errors import BpfDepotError, BuildError
from loader.model.settings import Settings

STATE_STYLE = {"queued": "dim", "waiting": "yellow", "compiling": "cyan", "built": "green",
               "cached": "green", "failed": "bold red"}


def _records(settings: Settings) -> Records:
    return Records(connect(settings.broker))


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import shutil

    from builder.farm import QUEUE, configure

    for tool, package in (("clang", "clang"), ("bpftool", "bpftool"), ("bwrap", "bubblewrap")):
        if not shutil.which(tool):
            raise BuildError(f"this worker cannot build: {tool} is not installed",
                             hint=f"apt-get install {package} (or run scripts/setup)")
    app = configure(settings)
    argv = ["worker", f"--concurrency={args.concurrency}", f"--pool={args.pool}",
            "--without-gossip", "--without-mingle", f"--queues={QUEUE}",
            f"--loglevel={'DEBUG' if settings.debug else 'INFO'}",
            f"--hostname=bpfdepot-{os.getpid()}@%h"]
    app.worker_main(argv)
    return 0


def submit(settings: Settings, bundle: str, selector: str) -> Build:
    """Pack the bundle, store it, record one job per (program × kernel), enqueue the build:
    a compile for each ebpf_object source, a check for each bpftrace_object script."""
    from builder.bundle import pack_bundle
    from builder.farm import QUEUE, build_task, configure
    from loader.kernel.catalog import list_kernels, parse_selector, select
    from loader.model.manifest import load_bundle
    from loader.artifacts.sources import SHARED_INCLUDE
    from loader.artifacts.store import open_store

    manifest = load_bundle(bundle)
    store = open_store(settings)
    kernels = select(list_kernels(store), parse_selector(selector))
    # .bpf.c sources are compiled per kernel, .bt scripts checked per kernel (builder/jobs.py)
    programs = [p for p in manifest.programs if p.is_source and p.local_path is not None
                and p.type in ("ebpf_object", "bpftrace_object")]
    if not programs:
        raise BuildError(f"bundle '{manifest.name}' has no kernel program sources to build",
                         hint="the farm builds .bpf.c programs and checks .bt scripts; prebuilt "
                              "objects need no build")
    digest = store.put_blob(pack_bundle(manifest, [SHARED_INCLUDE]))
    jobs = [Job(program=p.name, target=f"{k.arch}-{k.btf_digest}", release=k.release)
            for p in programs for k in kernels]
    records = _records(settings)
    build = records.create(bundle=digest, name=manifest.name, selector=selector, jobs=jobs)
    app = configure(settings)
    # an explicit connection: the app's pool would keep the first broker URL of this process
    with app.connection_for_write(settings.broker) as conn:
        build_task.apply_async((build.id,), queue=QUEUE, connection=conn)
    return build


def _table(build: Build):
    from rich.table import Table

    table = Table(title=f"build {build.id} · {build.name} · {build.selector}", expand=False)
    for col in ("program", "kernel", "state", "artifact", "time"):
        table.add_column(col)
    for job in sorted(build.jobs.values(), key=lambda j: (j.program, j.release)):
        table.add_row(job.program, job.release, f"[{STATE_STYLE.get(job.state, '')}]{job.state}",
                      job.digest[:19] if job.digest else (job.error.splitlines()[0][:60] if job.error else ""),
                      f"{job.seconds:.2f} s" if job.seconds else "")
    return table


def wait(settings: Settings, build: Build, timeout_s: float, live: bool) -> Build:
    records = _records(settings)
    cursor, deadline = 0, time.monotonic() + timeout_s
    current = build
    if live:
        from rich.console import Console
        from rich.live import Live

        with Live(_table(current), console=Console(stderr=True), refresh_per_second=8,
                  transient=True) as view:
            while not current.done and time.monotonic() < deadline:
                _, cursor = records.wait_event(build.id, cursor, 0.25)
                current = records.get(build.id) or current
                view.update(_table(current))
    else:
        while not current.done and time.monotonic() < deadline:
            changed, cursor = records.wait_event(build.id, cursor, 0.25)
            if changed:
                current = records.get(build.id) or current
    if not current.done:
        raise BuildError(f"build {build.id} did not finish within {timeout_s:.0f} s",
                         hint=f"is a worker running? (bpfdepot worker); follow it: bpfdepot builds {build.id}")
    return current


def print_result(build: Build, bundle: Path | None = None) -> int:
    """One line per job; a failed job's error follows on stderr, its files named in ``bundle``
    (the user's bundle folder) when known, as a local build names them."""
    from builder.jobs import BUNDLE_MARK

    for job in sorted(build.jobs.values(), key=lambda j: (j.program, j.release)):
        if job.state == "failed":
            print(f"{job.program:<16} {job.release:<30} FAILED", flush=True)
            error = job.error.replace(f"{BUNDLE_MARK}/", f"{bundle}/") if bundle else job.error
            print("  " + error.replace("\n", "\n  "), file=sys.stderr)
        else:
            print(f"{job.program:<16} {job.release:<30} {job.digest} {job.size:>7} B  "
                  f"{job.state:<7} meta {job.meta}")
    return BuildError.exit_code if build.failed else 0


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    build = submit(settings, args.bundle, args.kernels)
    print(f"build {build.id}: {len(build.jobs)} compile(s) of '{build.name}' queued", file=sys.stderr)
    if not args.wait:
        print(build.id)
        return 0
    done = wait(settings, build, args.timeout, live=sys.stderr.isatty())
    return print_result(done, _bundle_folder(args.bundle))


def _bundle_folder(bundle: str) -> Path:
    """The folder of a bundle given as a folder or as its manifest file, resolved as the
    manifest's ``root`` is (so farm errors name files as a local build does)."""
    path = Path(bundle).resolve()
    return path if path.is_dir() else path.parent


def cmd_builds(args: argparse.Namespace, settings: Settings) -> int:
    records = _records(settings)
    if args.build_id:
        build = records.get(args.build_id)
        if build is None:
            raise BpfDepotError(f"no build {args.build_id} (records expire after 7 days)",
                                hint="list recent builds: bpfdepot builds")
        from rich.console import Console

        Console().print(_table(build))
        return print_result(build) if build.done else 0
    for build in records.recent(args.limit):
        done = sum(j.done for j in build.jobs.values())
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(build.created))
        print(f"{build.id}  {when}  {build.name:<16} {build.state:<8} {done}/{len(build.jobs)}  "
              f"{build.selector}")
    return 0


def register_commands(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser("worker", help="run a build-farm worker (Celery) on $BPFDEPOT_BROKER")
    worker.add_argument("--concurrency", "-c", type=int, default=os.cpu_count() or 1)
    worker.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    worker.set_defaults(func=cmd_worker)

    sub_ = sub.add_parser("submit", help="send a bundle to the farm for every selected kernel")
    sub_.add_argument("bundle")
    sub_.add_argument("--kernels", "-k", default="all",
                      help="selector: all, a release glob (6.1.*), release=, arch=, feature= terms")
    sub_.add_argument("--wait", "-w", action="store_true", help="show progress and the results")
    sub_.add_argument("--timeout", type=float, default=900, help="seconds --wait waits")
    sub_.set_defaults(func=cmd_submit)

    builds = sub.add_parser("builds", help="recent builds, or one build's jobs")
    builds.add_argument("build_id", nargs="?")
    builds.add_argument("--limit", type=int, default=20)
    builds.set_defaults(func=cmd_builds)
