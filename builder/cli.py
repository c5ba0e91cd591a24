"""The ``bpfdepot`` command: where the loader and the builder meet.

    bpfdepot run BUNDLE [--output FILE] [--duration S]    build if needed, load, stream events
    bpfdepot build BUNDLE [--kernel-btf FILE ...]          build for this kernel or given BTFs
    bpfdepot inspect OBJECT_OR_DIGEST                     what is inside an object or artifact
    bpfdepot kernel [--json]                              this kernel and what loads on it

Errors print their message and hint (a traceback only with --debug) and exit with the code
of their class (loader/errors.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from loader.errors import BpfDepotError
from loader.model.settings import Settings
from loader.artifacts.store import open_store


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cmd_kernel(args: argparse.Namespace, settings: Settings) -> int:
    from loader.kernel.probe import probe_features, running_kernel

    kernel = running_kernel(settings.kernel_btf)
    features = probe_features(kernel, settings.cache)
    if args.json:
        print(json.dumps({"release": kernel.release, "arch": kernel.arch,
                          "btf_digest": kernel.btf_digest,
                          "features": {f.name: {"ok": f.ok, "why": f.why} for f in features.values()}},
                         indent=1))
        return 0
    print(f"release     {kernel.release}\narch        {kernel.arch}\nbtf digest  sha256:{kernel.btf_digest}")
    print("features:")
    for f in features.values():
        print(f"  {f.name:<17} {'yes' if f.ok else 'no ':<4} {f.why}")
    return 0


def cmd_build(args: argparse.Namespace, settings: Settings) -> int:
    from builder.buildcli import cmd_build as build

    return build(args, settings)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from loader.node import RunOptions, run

    from builder.flamecli import run_collector, write_run_outputs

    stacks = run_collector(args)  # --flamegraph/--folded/--speedscope: a tap on the records
    options = RunOptions(locked=args.locked, duration=args.duration,
                         knobs=knob_pairs(args.set),
                         processor_timeout=args.processor_timeout, metrics=args.metrics,
                         taps=(stacks.tap,) if stacks else (), filter=_filter(args),
                         labels=args.labels, allow_unsigned=args.allow_unsigned)
    report = run(settings, args.bundle, options, _storage(args, settings),
                 compilers=None if args.no_build else host_compilers(settings), say=_err,
                 check_bpftrace=None if args.no_build else host_bpftrace_check(settings))
    _report(report)
    if stacks:
        write_run_outputs(args, stacks, _err)
    return 0


def _filter(args: argparse.Namespace):
    from loader.monitor import filter_request

    return filter_request(units=args.unit or (), cgroups=args.cgroup or (), pids=args.pid or (),
                          containers=args.container or (), pods=args.pod or (),
                          file=args.filter_file, labels_root=args.labels)


def host_compilers(settings: Settings):
    """The on-host compile the node falls back to: the builder, wired in here (the loader
    never imports it)."""
    from builder.compile import Target, build_program
    from builder.processors import build_processor
    from builder.toolchain import find_toolchain
    from loader.artifacts.resolve import Compilers

    store = open_store(settings)

    def kernel(manifest, program, identity):
        return build_program(store, manifest, program, Target(identity=identity, btf=settings.kernel_btf),
                             find_toolchain(settings.cache), settings.cache).meta

    def processor(manifest, program, arch):
        return build_processor(store, manifest, program, arch, find_toolchain(settings.cache),
                               settings.cache).meta

    return Compilers(kernel=kernel, processor=processor)


def host_bpftrace_check(settings: Settings):
    """The on-host check of a bpftrace script for this kernel (builder/bpftrace.py)."""
    from builder.bpftrace import check_script
    from builder.compile import Target

    store = open_store(settings)

    def check(manifest, program, identity):
        return check_script(store, manifest, program,
                            Target(identity=identity, btf=settings.kernel_btf)).meta

    return check


def _report(report) -> None:
    """The counts that must add up: kernel → channel → processor → sinks."""
    _err(f"  {'channel':<40} {'received':>10} {'lost':>8}")
    for s in report.channels:
        _err(f"  {s.program + '/' + s.channel:<40} {s.received:>10} {s.lost:>8}")
        if s.short:
            _err(f"  ({s.short} {s.short_means})")
    if report.routes:
        _err(f"  {'processor':<40} {'sent':>10} {'kept':>8} {'dropped':>8} {'errors':>7} "
             f"{'lost':>6} {'restarts':>8} {'violations':>10}")
        for channel, processor, c, restarts, violations in report.routes:
            label = f"{channel} → {processor}"
            _err(f"  {label:<40} {c.sent:>10} {c.kept:>8} {c.dropped:>8} {c.errors + c.bad:>7} "
                 f"{c.lost:>6} {restarts:>8} {violations:>10}")
    for sink_name, st in report.sinks.items():
        if sink_name != "stdout" or st.failed:
            _err(f"  sink {sink_name:<35} {st.delivered:>10} delivered {st.failed:>8} failed")


def _storage(args: argparse.Namespace, settings: Settings):
    """The global storage settings (config file, environment) with this command line's."""
    from loader.model.storage import load_storage

    storage = load_storage(os.environ, settings.home, Path(args.config) if args.config else None)
    if args.output:  # this run's events to this file (truncated), nothing on stdout
        Path(args.output).write_bytes(b"")
        storage = dataclasses.replace(
            storage, stdout=dataclasses.replace(storage.stdout, enabled=False),
            file=dataclasses.replace(storage.file, enabled=True, path=Path(args.output).resolve(),
                                     max_bytes=1 << 62, fsync="never"))
    if args.kafka:
        storage = dataclasses.replace(storage, kafka=dataclasses.replace(
            storage.kafka, enabled=True, bootstrap=args.kafka))
    if args.tsdb:
        storage = dataclasses.replace(storage, tsdb=dataclasses.replace(
            storage.tsdb, enabled=True, **({} if args.tsdb == "-" else {"path": Path(args.tsdb)})))
    return storage


def knob_pairs(pairs: list[str] | None) -> dict[str, str]:
    """``--set NAME=VALUE`` pairs; the value is read by the knob's own type at load (an
    integer, text for a ``char x[N]``, or ``1,2,3`` for an integer array)."""
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise BpfDepotError(f"--set {pair!r} is not NAME=INTEGER, NAME=TEXT or NAME=N,N,...",
                                hint="for example: --set targ_tgid=1234, --set targ_comm=bash, "
                                     "--set targ_pids=1,2,3")
        out[name.strip()] = value
    return out


def cmd_lock(args: argparse.Namespace, settings: Settings) -> int:
    from loader.kernel.catalog import list_kernels, parse_selector, select
    from loader.artifacts.lock import lock_path, make_lock, write_lock
    from loader.model.manifest import load_bundle

    manifest = load_bundle(args.bundle)
    store = open_store(settings)
    kernels = select(list_kernels(store), parse_selector(args.kernels))
    lock = make_lock(store, manifest, [k.identity for k in kernels],
                     {f"{k.arch}-{k.btf_digest}": k.release for k in kernels})
    path = lock_path(manifest)
    write_lock(path, lock)
    for pin in lock.pins:
        print(f"{pin.program:<16} {pin.release:<30} {pin.artifact}  meta {pin.meta}")
    for refusal in lock.refused:
        print(f"{refusal.program:<16} {refusal.release:<30} REFUSED  {refusal.reason}")
    _err(f"bpfdepot: wrote {path} ({len(lock.pins)} pin(s)"
         + (f"; {len(lock.refused)} kernel(s) refused, not pinned)" if lock.refused else ")"))
    return 0


def cmd_inspect(args: argparse.Namespace, settings: Settings) -> int:
    from builder.inspect import inspect

    print(inspect(args.target, settings), end="")
    return 0


# Command groups kept in their own modules, imported only when the command line names one of
# their commands (or asks for help): `bpfdepot run` should not pay for Celery or the catalog.
GROUPS = {("kernels",): "kernels", ("worker", "submit", "builds"): "farm", ("query",): "query",
          ("flamegraph",): "flamegraph",
          ("agent", "load", "unload", "replace", "ps", "logs"): "agent",
          ("keys", "sign", "verify"): "keys", ("deploy", "undeploy", "fleet"): "fleet",
          ("vmtest",): "vmtest", ("ui",): "ui"}


def _register_group(sub: argparse._SubParsersAction, group: str) -> None:
    if group == "kernels":
        from builder.kernels import register_commands

        register_commands(sub, open_store)
    elif group == "farm":
        from builder.farmcli import register_commands

        register_commands(sub)
    elif group == "flamegraph":
        from builder.flamecli import register_commands

        register_commands(sub)
    elif group == "agent":
        from builder.agentcli import register_commands

        register_commands(sub)
    elif group == "keys":
        from builder.keyscli import register_commands

        register_commands(sub)
    elif group == "fleet":
        from builder.fleetcli import register_commands

        register_commands(sub)
    elif group == "vmtest":
        from builder.vmtestcli import register_commands

        register_commands(sub)
    elif group == "ui":
        from builder.uicli import register_commands

        register_commands(sub)
    else:
        from builder.query import register_commands

        register_commands(sub)


def parser(command: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bpfdepot", description="Build eBPF observability programs "
                                "per kernel and run them.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and libbpf's debug log")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="build if needed, load, attach and stream events as JSON lines")
    run.add_argument("bundle", help="a folder with manifest.yaml, the manifest file, or an artifact digest")
    run.add_argument("--output", "-o", help="write events to this file instead of stdout")
    run.add_argument("--duration", "-d", type=float, help="stop after this many seconds")
    run.add_argument("--no-build", action="store_true",
                     help="never compile on this host; fail when nothing is built for this kernel")
    run.add_argument("--set", action="append", metavar="NAME=VALUE",
                     help="set a program knob (a const volatile global) before load, e.g. "
                          "targ_tgid=1234, targ_comm=bash (char[N]), targ_pids=1,2,3 "
                          "(an integer array) (repeatable)")
    run.add_argument("--locked", action="store_true",
                     help="load only the digests bpfdepot.lock pins for this kernel")
    run.add_argument("--config", metavar="FILE",
                     help="storage settings (default: $BPFDEPOT_CONFIG, else <home>/config.yaml)")
    run.add_argument("--kafka", metavar="HOST:PORT",
                     help="also send records to this Kafka bootstrap server")
    run.add_argument("--tsdb", metavar="PATH", nargs="?", const="-",
                     help="also store records in the embedded time-series store (default path "
                          "<home>/tsdb/events.sqlite); query them with bpfdepot query")
    run.add_argument("--metrics", metavar="HOST:PORT",
                     help="serve Prometheus metrics at http://HOST:PORT/metrics (:PORT for every "
                          "interface), e.g. 127.0.0.1:9435")
    run.add_argument("--processor-timeout", type=float, default=5.0, metavar="S",
                     help="restart a processor stuck this long in one call (default 5 s)")
    builtin = {"run", "build", "inspect", "kernel", "lock"}
    known = builtin | {n for ns in GROUPS for n in ns}
    if command is None or command == "run" or command not in known:
        from builder.flamecli import add_run_flags  # the flame graph package: for run only

        add_run_flags(run)
    for flag, meta, what in (
            ("--unit", "NAME.service", "only this systemd unit and everything below it (repeat)"),
            ("--cgroup", "PATH", "only this cgroup2 directory and below it (repeat)"),
            ("--pid", "N", "only this process (repeat)"),
            ("--container", "ID", ("only this container (its id, or the first 12+ hex digits; "
                                   "files read under the --labels ROOT) (repeat)")),
            ("--pod", "NS/NAME", "only this pod, every container of it (repeat)")):
        run.add_argument(flag, action="append", metavar=meta, help=f"in-kernel filter: {what}")
    run.add_argument("--allow-unsigned", action="store_true",
                     help="with a trust root on this node, load files it does not vouch for "
                          "anyway (each is named in the log)")
    run.add_argument("--labels", nargs="?", const="/", metavar="ROOT",
                     help="add each record's labels (systemd unit, or pod, namespace, container, "
                          "image) from its cgroup or pid, read from the node's cgroup2 tree and "
                          "files under ROOT (default /: var/log/pods, run/containerd)")
    run.add_argument("--filter-file", metavar="FILE", help="in-kernel filter read from this YAML "
                     "({units: [...], cgroups: [...], pids: [...], containers: [...], "
                     "pods: [...]}) and re-read when it changes")
    run.set_defaults(func=cmd_run)

    build = sub.add_parser("build", help="build a bundle's kernel programs")
    build.add_argument("bundle")
    build.add_argument("--kernel-btf", action="append", metavar="FILE",
                       help="build for the kernel with this raw BTF (repeatable); default: this kernel")
    build.add_argument("--arch", default=os.uname().machine, help="arch of the --kernel-btf kernels")
    build.set_defaults(func=cmd_build)

    insp = sub.add_parser("inspect", help="show what is inside an object or artifact")
    insp.add_argument("target", help="a .bpf.o file, an artifact or meta digest (sha256:...), or a bundle")
    insp.set_defaults(func=cmd_inspect)

    kern = sub.add_parser("kernel", help="this kernel's identity and which program types load")
    kern.add_argument("--json", action="store_true")
    kern.set_defaults(func=cmd_kernel)
    lock = sub.add_parser("lock", help="pin each program's artifact per target kernel in bpfdepot.lock")
    lock.add_argument("bundle")
    lock.add_argument("--kernels", "-k", default="all", help="selector, as for submit")
    lock.set_defaults(func=cmd_lock)

    for names, group in GROUPS.items():
        if command is None or command in names or command not in known:
            _register_group(sub, group)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = parser(command).parse_args(argv)
    args.argv = list(argv)  # as given: what `build` keys its stamp by (builder/quick.py)
    settings = Settings.from_env(os.environ)
    if args.debug:
        settings = dataclasses.replace(settings, debug=True)
    try:
        return args.func(args, settings)
    except BpfDepotError as exc:
        if args.debug:
            raise
        _err(f"bpfdepot: error: {exc.message}")
        if exc.detail:
            _err(exc.detail.rstrip())
        if exc.hint:
            _err(f"hint: {exc.hint}")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
