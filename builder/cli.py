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
import time
from pathlib import Path

from loader.errors import BpfDepotError, ManifestError
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


def _targets(args: argparse.Namespace, settings: Settings) -> list:
    """This kernel (features probed), or each --kernel-btf (features from a .config beside it)."""
    from builder.compile import Target, form_features
    from loader.kernel.catalog import features_from_config
    from loader.kernel.probe import KernelIdentity, file_digest, probe_features, running_kernel

    if not args.kernel_btf:
        kernel = running_kernel(settings.kernel_btf)
        try:
            features = frozenset(f.name for f in probe_features(kernel, settings.cache).values() if f.ok)
        except BpfDepotError as exc:  # not root and never probed: build the portable forms
            _err(f"bpfdepot: {exc.message}; building tracepoint forms only")
            features = frozenset()
        return [Target(identity=kernel, btf=settings.kernel_btf, features=features)]
    out = []
    for btf in args.kernel_btf:
        path = Path(btf)
        if not path.is_file():
            raise BpfDepotError(f"kernel BTF {path} does not exist",
                                hint="pass raw BTF files such as ../shared/kernels/6.1.0-50-amd64.btf")
        config = path.with_suffix(".config")
        features = form_features(features_from_config(config.read_text(), args.arch),
                                 probed=False) if config.is_file() else frozenset()
        out.append(Target(identity=KernelIdentity(release=path.name.removesuffix(".btf"),
                                                  arch=args.arch, btf_digest=file_digest(path)),
                          btf=path, features=features))
    return out


def cmd_build(args: argparse.Namespace, settings: Settings) -> int:
    from builder.compile import build_program
    from builder.toolchain import find_toolchain
    from loader.model.manifest import load_bundle

    manifest = load_bundle(args.bundle)
    skipped = [p for p in manifest.programs if p.local_path is None or not p.is_source]
    if len(skipped) == len(manifest.programs):
        first = skipped[0] if skipped else manifest.programs[0]
        raise ManifestError(
            f"{manifest.path}:{first.line}: nothing to build: program '{first.name}' is {first.path}, "
            "not a local source" + (f" (and {len(skipped) - 1} more like it)" if len(skipped) > 1 else ""),
            hint="bpfdepot builds file:// .bpf.c, .c and .go sources; prebuilt and remote paths "
                 "load as they are (bpfdepot run)")
    for program in skipped:
        _err(f"bpfdepot: '{program.name}' is {program.path}, not a local source: not built")
    store = open_store(settings)
    targets = _targets(args, settings)
    toolchain = find_toolchain(settings.cache)
    for target in targets:
        for program in manifest.kernel_programs:
            if program in skipped:
                continue
            built = build_program(store, manifest, program, target, toolchain, settings.cache)
            if built.warnings:
                _err(built.warnings)
            how = "cached" if built.cached else f"built in {built.seconds:.2f} s"
            print(f"{program.name:<16} {str(target.identity):<30} {built.meta.digest} "
                  f"{built.meta.size:>7} B  {how:<15} meta {built.meta_digest}")
    _build_processors(manifest, store, toolchain, settings)
    return 0


def _build_processors(manifest, store, toolchain, settings: Settings) -> None:
    """user_so sources are built once per arch: natively, for this machine's."""
    from builder.processors import build_processor, host_arch

    for program in manifest.programs:
        if program.type != "user_so" or not program.is_source or program.local_path is None:
            continue
        built = build_processor(store, manifest, program, host_arch(), toolchain, settings.cache)
        if built.warnings:
            _err(built.warnings)
        how = "cached" if built.cached else f"built in {built.seconds:.2f} s"
        print(f"{program.name:<16} {host_arch() + ' (user_so)':<30} {built.meta.digest} "
              f"{built.meta.size:>7} B  {how:<15} meta {built.meta_digest}")


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from builder.host import artifact, node_identity, resolve, resolve_processors
    from loader.kernel.probe import probe_features
    from loader.model.manifest import load_bundle
    from loader.decoders.names import node_enums
    from loader.pipeline import Pipeline
    from loader.session import Session, check_fits, check_privileges, ensure_filesystems

    started = time.perf_counter()
    store = open_store(settings)
    manifest = None
    if args.bundle.startswith("sha256:"):
        loadables = [artifact(settings, store, args.bundle)]
        name = loadables[0].meta.name
        check_privileges(name)
        kernel = node_identity(settings, store)
    else:
        manifest = load_bundle(args.bundle)
        name = manifest.name
        check_privileges(name)
        kernel = node_identity(settings, store)
        loadables = resolve(settings, store, manifest, kernel, locked=args.locked,
                            compile_on_host=not (args.no_build or args.locked))
    processors = (resolve_processors(settings, store, manifest, kernel.arch,
                                     compile_on_host=not (args.no_build or args.locked))
                  if manifest else {})
    features = probe_features(kernel, settings.cache)
    for item in loadables:
        check_fits(item.meta, kernel, features)
    needs_tracefs = any(p["feature"] == "tracepoint" for i in loadables for p in i.meta.programs)
    for what in ensure_filesystems(needs_tracefs):
        _err(f"bpfdepot: mounted {what}")

    outlets = _sinks(args, settings)
    specs = {c.name: c for c in manifest.channels} if manifest else {}
    pipeline = Pipeline(manifest=manifest, processors=processors, open_sinks=outlets.open,
                        workers=lambda route: route.workers or (2 if route.hash else 1),
                        hang_timeout=args.processor_timeout)

    def make_channel(program: str, channel: str, info) -> object:
        spec = specs.get(channel)
        if spec is None:
            return pipeline.channel(program, channel, info.decoder(
                channel, enums=node_enums(str(settings.kernel_btf))))
        return pipeline.channel(program, channel, info.decoder(
            channel, spec.event, spec.fields, overrides=spec.decoders, unions=spec.unions,
            enums=node_enums(str(settings.kernel_btf))))

    session = Session()
    server = None
    try:
        if args.metrics:  # first: a port in use fails before anything loads
            server = _serve_metrics(args.metrics, pipeline, session)
        session.start(loadables, make_channel, _knobs(args.set), before_attach=pipeline.start)
        programs = sum(len(i.meta.programs) for i in loadables)

        def attached() -> None:
            ms = (time.perf_counter() - started) * 1000
            pools = f", {len(pipeline.pools)} processor(s)" if pipeline.pools else ""
            _err(f"bpfdepot: {name}: {programs} program(s) attached, "
                 f"{len(session.channels)} channel(s){pools}, in {ms:.1f} ms; Ctrl-C to stop")

        seconds = pipeline.run(session.reader, duration=args.duration, on_attached=attached)
        session.detach()
        pipeline.drain()
        stats = session.stats()
    finally:
        if server is not None:
            server.close()  # before the objects it reads go away
        for pool in pipeline.pools.values():
            pool.stop(kill=True)
        session.close()
        sink_stats = pipeline.outlets.close()
    _err(f"bpfdepot: {name}: detached after {seconds:.1f} s")
    _report(stats, pipeline, sink_stats)
    return 0


def _serve_metrics(address: str, pipeline, session):
    from loader.sinks.prometheus import Metrics, loader_families, serve

    metrics = Metrics()
    families = loader_families(metrics)

    def refresh() -> None:
        for item, obj in list(session.objects):
            families.programs_attached.labels(program=item.meta.name).set(obj.attached_links)
        pipeline.refresh_metrics(families, session.kernel_lost)

    metrics.on_scrape(refresh)
    server = serve(metrics, address)
    host, port = server.address
    _err(f"bpfdepot: metrics on http://{host}:{port}/metrics")
    return server


def _report(stats: list, pipeline: object, sinks: dict) -> None:
    """The counts that must add up: kernel → channel → processor → sinks."""
    _err(f"  {'channel':<40} {'received':>10} {'lost':>8}")
    for s in stats:
        _err(f"  {s.program + '/' + s.channel:<40} {s.received:>10} {s.lost:>8}")
        if s.short:
            _err(f"  ({s.short} events shorter than the event struct)")
    rows = pipeline.route_counts()
    if rows:
        _err(f"  {'processor':<40} {'sent':>10} {'kept':>8} {'dropped':>8} {'errors':>7} "
             f"{'lost':>6} {'restarts':>8} {'violations':>10}")
        for state, pool, c in rows:
            label = f"{state.name} → {pool.name}"
            _err(f"  {label:<40} {c.sent:>10} {c.kept:>8} {c.dropped:>8} {c.errors + c.bad:>7} "
                 f"{c.lost:>6} {pool.restarts:>8} {pool.violations:>10}")
    for sink_name, st in sinks.items():
        if sink_name != "stdout" or st.failed:
            _err(f"  sink {sink_name:<35} {st.delivered:>10} delivered {st.failed:>8} failed")


class _Sinks:
    """Opens each sink once, the first time a stream needs it: the global storage settings
    (config file, environment, command line) with each route's overrides."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
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
        self.storage = storage
        self.opened: dict[tuple[str, str], object] = {}

    def open(self, stream: str, route, program: str, channel: str) -> list:
        from loader.model.storage import effective

        where = f"at line {route.line} of the manifest" if route is not None else None
        want = effective(self.storage, route.storage if route is not None else None,
                         program=program, channel=channel, route=where)
        out = []
        if want.stdout:
            out.append(self._get("stdout", "", self._stdout))
        if want.file is not None:
            out.append(self._get("file", str(want.file), lambda: self._file(want.file)))
        if want.kafka_topic is not None:
            out.append(self._get("kafka", want.kafka_topic, lambda: self._kafka(want.kafka_topic)))
        if want.tsdb:
            out.append(self._get("tsdb", "", self._tsdb))
        return out

    def _get(self, kind: str, which: str, make) -> object:
        if (kind, which) not in self.opened:
            self.opened[(kind, which)] = make()
        return self.opened[(kind, which)]

    def _stdout(self):
        from loader.sinks.files import StdoutSink

        return StdoutSink()

    def _file(self, path: Path):
        from loader.sinks.files import FileSink

        f = self.storage.file
        name = "file" if path == f.path else f"file:{path.name}"
        return FileSink(path, max_bytes=f.max_bytes, keep=f.keep, fsync=f.fsync, name=name)

    def _kafka(self, topic: str):
        from loader.sinks.kafka import KafkaSink

        k = self.storage.kafka
        default = not any(kind == "kafka" for kind, _ in self.opened)
        return KafkaSink(k.bootstrap, topic_template=topic, acks=k.acks, retries=k.retries,
                         delivery_timeout_s=k.delivery_timeout_s, connect_timeout_s=k.connect_timeout_s,
                         name="kafka" if default else f"kafka:{topic}")

    def _tsdb(self):
        from loader.sinks.tsdb import TsdbSink

        t = self.storage.tsdb
        t.path.parent.mkdir(parents=True, exist_ok=True)
        return TsdbSink(t.path, retention_s=t.retention_s, max_bytes=t.max_bytes)

    def close(self) -> None:
        for sink in self.opened.values():
            sink.close()


def _sinks(args: argparse.Namespace, settings: Settings) -> _Sinks:
    return _Sinks(args, settings)


def _knobs(pairs: list[str] | None) -> dict[str, int]:
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        try:
            out[name.strip()] = int(value, 0)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise BpfDepotError(f"--set {pair!r} is not NAME=INTEGER",
                                hint="for example: --set targ_tgid=1234")
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
    _err(f"bpfdepot: wrote {path} ({len(lock.pins)} pin(s))")
    return 0


def cmd_inspect(args: argparse.Namespace, settings: Settings) -> int:
    from builder.inspect import inspect

    print(inspect(args.target, settings), end="")
    return 0


# Command groups kept in their own modules, imported only when the command line names one of
# their commands (or asks for help): `bpfdepot run` should not pay for Celery or the catalog.
GROUPS = {("kernels",): "kernels", ("worker", "submit", "builds"): "farm", ("query",): "query"}


def _register_group(sub: argparse._SubParsersAction, group: str) -> None:
    if group == "kernels":
        from builder.kernels import register_commands

        register_commands(sub, open_store)
    elif group == "farm":
        from builder.farmcli import register_commands

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
                          "targ_tgid=1234 (repeatable)")
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

    builtin = {"run", "build", "inspect", "kernel", "lock"}
    for names, group in GROUPS.items():
        if command is None or command in names or command not in builtin | {n for ns in GROUPS for n in ns}:
            _register_group(sub, group)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = parser(command).parse_args(argv)
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
