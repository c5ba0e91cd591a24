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
               "cached": "green", "failed": "bold red", "refused": "red", "load-testing": "magenta"}


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
    queues = [QUEUE]
    if args.load_test_node or os.environ.get("BPFDEPOT_LOAD_TEST_NODE") == "1":
        queues.append(_announce_node(settings))
    argv = ["worker", f"--concurrency={args.concurrency}", f"--pool={args.pool}",
            "--without-gossip", "--without-mingle", f"--queues={','.join(queues)}",
            f"--loglevel={'DEBUG' if settings.debug else 'INFO'}",
            f"--hostname=bpfdepot-{os.getpid()}@%h"]
    app.worker_main(argv)
    return 0


def _announce_node(settings: Settings) -> str:
    """Offer this node's kernel for load tests (builder/loadtests.py): its queue, announced
    while the worker runs. Needs root, the kernel's BTF and the kernel in the catalog."""
    import socket
    import threading

    from builder.loadtests import announce, node_queue
    from loader.kernel.catalog import get_kernel, uname_arch
    from loader.kernel.probe import file_digest
    from loader.artifacts.store import open_store

    if os.geteuid() != 0:
        raise BuildError("--load-test-node loads BPF programs: run the worker as root",
                         hint="or leave load tests of this kernel to a VM (kernels add --package)")
    btf = Path("/sys/kernel/btf/vmlinux")
    if not btf.exists():
        raise BuildError("--load-test-node: this kernel has no /sys/kernel/btf/vmlinux",
                         hint="a kernel without BTF cannot be a build target")
    arch, digest = uname_arch(os.uname().machine), file_digest(btf)
    if get_kernel(open_store(settings), arch, digest) is None:
        raise BuildError(f"--load-test-node: this kernel ({os.uname().release}) is not in the "
                         "kernel catalog", hint="register it first: bpfdepot kernels register")
    target = f"{arch}-{digest}"
    announce(connect(settings.broker), target, f"{socket.gethostname()}-{os.getpid()}",
             threading.Event())
    print(f"bpfdepot: load-testing for kernel {os.uname().release} (queue {node_queue(target)})",
          file=sys.stderr)
    return node_queue(target)


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
    for col in ("program", "kernel", "state", "artifact / verdict", "compiled against", "time"):
        table.add_column(col)
    for job in sorted(build.jobs.values(), key=lambda j: (j.program, j.release)):
        table.add_row(job.program, job.release, f"[{STATE_STYLE.get(job.state, '')}]{job.state}",
                      job.digest[:19] if job.digest else _verdict_line(job.error, 70),
                      job.reference, f"{job.seconds:.2f} s" if job.seconds else "")
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


def _verdict_line(error: str, width: int) -> str:
    """The first line of a job's error, without the program and kernel the row names."""
    first = error.splitlines()[0] if error else ""
    return (first.split("): ", 1)[1] if " is refused for kernel " in first and "): " in first
            else first)[:width]


def print_result(build: Build, bundle: Path | None = None) -> int:
    """One line per job: its artifact, or FAILED (the compile) / REFUSED (this kernel, with the
    field, hook or verifier words that decided it); errors follow on stderr, files named in
    ``bundle`` (the user's bundle folder) when known, as a local build names them. Non-zero
    when a compile failed or a program is refused on every kernel it was built for."""
    from builder.jobs import BUNDLE_MARK

    for job in sorted(build.jobs.values(), key=lambda j: (j.program, j.release)):
        if job.state in ("failed", "refused"):
            print(f"{job.program:<16} {job.release:<30} {job.state.upper()}", flush=True)
            error = job.error.replace(f"{BUNDLE_MARK}/", f"{bundle}/") if bundle else job.error
            print("  " + error.replace("\n", "\n  "), file=sys.stderr)
        else:
            print(f"{job.program:<16} {job.release:<30} {job.digest} {job.size:>7} B  "
                  f"{job.state:<7} meta {job.meta}")
    passed = {j.program for j in build.jobs.values() if j.state in ("built", "cached")}
    nowhere = sorted({j.program for j in build.refused} - passed)
    if build.refused:
        kernels = len({j.target for j in build.refused})
        print(f"bpfdepot: {len(build.refused)} job(s) refused on {kernels} kernel(s); `bpfdepot "
              "lock` pins only the kernels that passed"
              + (f"; refused everywhere: {', '.join(nowhere)}" if nowhere else ""), file=sys.stderr)
    return BuildError.exit_code if build.failed or nowhere else 0


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    build = submit(settings, args.bundle, args.kernels)
    programs = len({j.program for j in build.jobs.values()})
    print(f"build {build.id}: {len(build.jobs)} job(s) of '{build.name}' queued ({programs} "
          f"program(s) × {len(build.jobs) // max(programs, 1)} kernel(s); one compile per variant)",
          file=sys.stderr)
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
    worker.add_argument("--load-test-node", action="store_true",
                        help="also load-test artifacts for this node's own kernel before they "
                             "are published (root; the kernel registered in the catalog); "
                             "BPFDEPOT_LOAD_TEST_NODE=1 does the same")
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
