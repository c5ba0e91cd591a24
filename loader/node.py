"""One run on this node, from a manifest (or an artifact digest) to its last record.

    resolve   artifacts for this kernel: lock pin → store → a compile on the host
              (loader/artifacts/resolve.py; the compile is the caller's ``Compilers``)
    check     privileges, arch, required features, tracefs/bpffs (loader/session.py)
    plan      each channel's output kind opens a reader (loader/outputs/), each named BPF
              program its attach kind (loader/attach/), processors and sinks (loader/pipeline.py)
    load      open → knobs / autoload → load → processors start → attach → readers start
    run       one poll loop until Ctrl-C, SIGTERM or the duration
    stop      detach → last read of every channel → processors drained → sinks closed

The CLI (builder/cli.py) only turns arguments into ``RunOptions`` and prints what ``run``
returns and says; nothing here prints on its own.
"""

from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

from loader.artifacts.lock import lock_path
from loader.artifacts.resolve import (Compilers, artifact, node_identity, resolve,
                                      resolve_processors)
from loader.artifacts.store import open_store
from loader.attach import attach_kinds
from loader.decoders.names import node_enums
from loader.errors import KernelUnsupported, ManifestError
from loader.kernel.btf import Btf
from loader.kernel.elf import ObjectInfo
from loader.kernel.hooks import kernel_btf, missing_hooks
from loader.kernel.probe import Feature, probe_features
from loader.libbpf.core import BpfObject
from loader.libbpf.pins import unpin
from loader.model.manifest import ChannelSpec, Manifest, load_bundle
from loader.model.settings import Settings
from loader.model.storage import StorageSettings
from loader.monitor import FilterRequest, open_monitor, with_manifest
from loader.outputs import ChannelContext, ChannelStats, Reader, output_kinds
from loader.pipeline import Pipeline, StopSignal
from loader.remote import is_remote, materialize
from loader.trust.artifacts import TrustPolicy
from loader.programs.bpftrace import (CheckedScript, resolve_scripts, start_children,
                                      stored_script)
from loader.processors.workers import RouteCounts
from loader.session import (Loadable, Session, check_fits, check_privileges, choose_forms,
                            ensure_filesystems)
from loader.sinks import SinkStats
from loader.sinks.opener import SinkSet

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """What one run is asked to do (the CLI's flags)."""

    locked: bool = False                  # only what bpfdepot.lock pins
    duration: float | None = None         # seconds; None: until Ctrl-C or SIGTERM
    knobs: Mapping[str, int | str] = field(default_factory=dict)  # const volatile globals
    processor_timeout: float = 5.0        # s in one call before a worker is restarted
    metrics: str | None = None            # HOST:PORT for /metrics
    # called with (stream, lines, count) for every batch of records, before the sinks
    taps: tuple[Callable[[str, bytes, int], None], ...] = ()
    labels: str | None = None             # --labels: label records from the node's files under it
    # the in-kernel process filter (--unit/--cgroup/--pid/--filter-file); none: everything
    filter: FilterRequest = field(default_factory=FilterRequest)
    allow_unsigned: bool = False          # load what a trust root does not vouch for (logged)
    # the agent's bpffs folder for this run: pinned once attached (so a killed agent's programs
    # stay), or with adopt, an earlier agent's pins taken over instead of attaching again
    pins: Path | None = None
    adopt: bool = False
    # the agent's: stops the run from another thread; told the live run once attached
    stop: StopSignal | None = None
    on_attached: Callable[[LiveRun], None] | None = None


@dataclass(frozen=True, slots=True)
class LiveRun:
    """A run once attached, for those watching it from another thread (the agent's ``ps``)."""

    session: Session
    pipeline: Pipeline
    programs: int
    attach_ms: float


@dataclass(slots=True, kw_only=True)
class RunReport:
    """The counts that must add up: kernel → channel → processor → sinks."""

    name: str
    seconds: float
    channels: list[ChannelStats]
    routes: list[tuple[str, str, RouteCounts, int, int]]  # channel, processor, counts, restarts, violations
    sinks: dict[str, SinkStats]


def run(settings: Settings, target: str, options: RunOptions, storage: StorageSettings, *,
        compilers: Compilers | None, say: Say,
        check_bpftrace: Callable | None = None) -> RunReport:
    """Run ``target`` (a bundle folder, a manifest, or ``sha256:…``) and return its counts.
    ``check_bpftrace(manifest, program, kernel)``: the builder's check of a bpftrace script on
    this host, for one the store does not hold checked (loader/programs/bpftrace.py)."""
    started = time.perf_counter()
    if is_remote(target):  # fetched (bounded, cached by content) into a local bundle folder
        url, target = target, str(materialize(target, settings.home))
        say(f"bpfdepot: {url}: fetched into {target}")
    store = open_store(settings)
    # what this node's trust root vouches for (loader/trust/artifacts.py); no root: digests only
    trust = TrustPolicy.for_node(settings.home, allow_unsigned=options.allow_unsigned, say=say)
    manifest = None
    scripts: list[CheckedScript] = []
    if target.startswith("sha256:"):
        loadables = [artifact(settings, store, target)]
        name = loadables[0].meta.name
        check_privileges(name)
        kernel = node_identity(settings, store)
        if loadables[0].meta.kind == "bpftrace_object":  # a checked script, run by bpftrace
            scripts, loadables = [stored_script(store, loadables[0].meta, target, kernel)], []
    else:
        manifest = load_bundle(target)
        name = manifest.name
        check_privileges(name)
        kernel = node_identity(settings, store)
        trust.check_lock(lock_path(manifest), manifest.name)
        loadables = resolve(settings, store, manifest, kernel, locked=options.locked,
                            compilers=None if options.locked else compilers)
    if manifest:
        scripts = resolve_scripts(store, manifest, kernel, locked=options.locked,
                                  check=None if options.locked else check_bpftrace)
    wanted = (with_manifest(options.filter, manifest.filter, f"{manifest.path}: spec.filter")
              if manifest else options.filter)
    if scripts and wanted.active:
        # bpftrace programs cannot read the filter's maps: never run one unfiltered silently
        raise ManifestError(
            f"'{name}' has bpftrace program(s) {', '.join(repr(s.name) for s in scripts)}, "
            "which the in-kernel process filter (--unit/--cgroup/--pid) cannot reach",
            hint="run the filter without the .bt programs, or filter inside the script "
                 "(e.g. /cgroup == cgroupid(\"/sys/fs/cgroup/unified/...\")/)")
    processors = (resolve_processors(settings, store, manifest, kernel.arch,
                                     compilers=None if options.locked else compilers)
                  if manifest else {})
    # signatures before anything runs: every object, library and script about to load
    trust.check(store, [(f"program '{i.meta.name}'", i.path, i.meta) for i in loadables]
                + [(f"processor '{n}'", Path(p.so_path), None) for n, p in processors.items()]
                + [(f"bpftrace program '{s.name}'", s.path, s.meta) for s in scripts])
    features = probe_features(kernel, settings.cache)
    # parsing the node's BTF costs ~0.1 s: only kernel objects need it (a .bt-only run does not)
    off = _programs_off(manifest, loadables, features,
                        kernel_btf(str(settings.kernel_btf)) if loadables else None, say)
    for item in loadables:
        check_fits(item.meta, kernel, features, off.get(item.meta.name, ()))
    needs_tracefs = any(p["feature"] == "tracepoint" for i in loadables for p in i.meta.programs)
    for what in ensure_filesystems(needs_tracefs):
        say(f"bpfdepot: mounted {what}")

    sinks = SinkSet(storage)
    pipeline = Pipeline(manifest=manifest, processors=processors, open_sinks=sinks.open,
                        workers=lambda route: route.workers or (2 if route.hash else 1),
                        hang_timeout=options.processor_timeout)
    pipeline.outlets.taps.extend(options.taps)
    open_channel = partial(_open_channel, manifest, pipeline, node_enums(str(settings.kernel_btf)))
    session = Session()
    server = None
    monitor = None
    labels = None
    try:
        if options.labels is not None:
            from loader.labels.run import open_labels

            labels = open_labels(options.labels, say=say)
        # the filter's maps are filled before anything loads: no event escapes it at attach
        monitor = open_monitor(wanted, say=say)
        if labels is not None or monitor is not None:
            # records: filter label ids named, then labels (loader/labels/run.py)
            from loader.labels.run import run_stamp

            pipeline.outlets.stamp = run_stamp(labels, monitor)
        if options.metrics:  # first: a port in use fails before anything loads
            server = _serve_metrics(options.metrics, pipeline, session, say, labels)
        session.start(loadables, open_channel, dict(options.knobs), before_attach=pipeline.start,
                      attach=_attach_plans(manifest), autoload_off=off,
                      maps={p.name: p.maps for p in manifest.kernel_programs} if manifest else {},
                      prepare=partial(_prepare_filter, monitor) if monitor else None,
                      pins=options.pins, adopt=options.adopt)
        if monitor is not None:
            monitor.start()  # units started later, pids added to the filter file
        programs = session.attached
        programs += _start_bpftrace(scripts, pipeline, session, say)

        def attached() -> None:
            ms = (time.perf_counter() - started) * 1000
            pools = f", {len(pipeline.pools)} processor(s)" if pipeline.pools else ""
            say(f"bpfdepot: {name}: {programs} program(s) attached, {len(session.readers)} "
                f"channel(s){pools}, in {ms:.1f} ms"
                + ("" if options.stop is not None else "; Ctrl-C to stop"))
            if options.on_attached is not None:
                options.on_attached(LiveRun(session, pipeline, programs, ms))

        seconds = pipeline.run(session.readers, duration=options.duration, on_attached=attached,
                               stop=options.stop)
        if options.pins is not None:
            unpin(options.pins)  # a stop on purpose: the links go with their last fd
        session.detach()
        pipeline.drain()
        stats = session.stats()
    finally:
        if server is not None:
            server.close()  # before the objects it reads go away
        for pool in pipeline.pools.values():
            pool.stop(kill=True)
        if options.pins is not None:
            unpin(options.pins)  # any way out but a kill: nothing stays attached
        session.close()
        if monitor is not None:
            monitor.close()
        if labels is not None:
            labels.close()
        sink_stats = pipeline.outlets.close()
    say(f"bpfdepot: {name}: detached after {seconds:.1f} s")
    if labels is not None:
        say(f"bpfdepot: {name}: {labels.summary()}")
    routes = [(s.name, pool.name, c, pool.restarts, pool.violations)
              for s, pool, c in pipeline.route_counts()]
    return RunReport(name=name, seconds=seconds, channels=stats, routes=routes, sinks=sink_stats)


def _start_bpftrace(scripts: list[CheckedScript], pipeline: Pipeline, session: Session,
                    say: Say) -> int:
    """Launch the bpftrace children (after the kernel objects attached); their output joins the
    run as readers, so the loop moves it and stop ends them. Returns the probes attached."""
    children = start_children(scripts, pipeline.records, say)
    for child in children:
        session.readers += [child, child.maps_view()]
    return sum(child.probes for child in children)


def _open_channel(manifest: Manifest | None, pipeline: Pipeline, enums, item: Loadable, name: str,
                  obj: BpfObject, info: ObjectInfo) -> Reader:
    """The reader of channel ``name`` of ``item``, by its output kind."""
    spec: ChannelSpec | None = next((c for c in manifest.channels if c.name == name), None) \
        if manifest else None
    kind_name = spec.type if spec else item.meta.channels[name].get("type", "ring_buffer")
    kind = output_kinds().get(kind_name)
    if kind is None:
        raise ManifestError(f"channel '{name}' of '{item.meta.name}' is of type {kind_name}, which "
                            "this bpfdepot cannot read",
                            hint=f"output kinds here: {', '.join(output_kinds())}")
    ctx = ChannelContext(program=item.meta.name, name=name, spec=spec, obj=obj, info=info,
                         pipeline=pipeline, enums=enums, options=spec.options if spec else {})
    return kind.open(ctx)


def _prepare_filter(monitor, item: Loadable, obj: BpfObject, info: ObjectInfo) -> None:
    monitor.prepare(item.meta.name, item.path, obj, info)


def _attach_plans(manifest: Manifest | None) -> dict[str, dict[str, Callable]]:
    """Per kernel program, its BPF programs that attach by a kind (the rest: libbpf's auto-attach)."""
    if manifest is None:
        return {}
    kinds = attach_kinds()
    return {p.name: {prog: partial(_attach_with, kinds[kind].attach, options)
                     for prog, kind, options in p.attach}
            for p in manifest.kernel_programs if p.attach}


def _attach_with(attach, options, obj: BpfObject, program: str) -> list:
    return attach(obj, program, options)


def _programs_off(manifest: Manifest | None, loadables: list[Loadable],
                  features: Mapping[str, Feature], node_btf: Btf | None,
                  say: Say) -> dict[str, tuple[str, ...]]:
    """Per kernel program, the BPF programs not to load: ``autoload: false`` ones and those of
    every form but the first this kernel offers (so a hook is never counted twice). A program
    left to load whose tracepoint this kernel lacks is refused here, naming the tracepoint,
    instead of failing in libbpf's attach."""
    out = {}
    for item in loadables:
        program = next((p for p in manifest.kernel_programs if p.name == item.meta.name),
                       None) if manifest else None
        missing = missing_hooks(((p["name"], p["section"]) for p in item.meta.programs), node_btf)
        off = program.autoload_off if program else ()
        if program and program.forms:
            index, others = choose_forms(program.forms, {p["name"]: p["feature"] for p in
                                                         item.meta.programs}, features,
                                         program.name, missing)
            say(f"bpfdepot: {program.name}: form {index + 1} of {len(program.forms)} "
                f"({', '.join(program.forms[index])}) fits this kernel")
            off = off + tuple(p for p in others if p not in off)
        lacking = [f"{name} ({hook})" for name, hook in missing.items() if name not in off]
        if lacking:
            raise KernelUnsupported(
                f"'{item.meta.name}' hooks what this kernel does not have: {', '.join(lacking)}",
                hint="give the program a form for kernels without it (`forms:` in the manifest) "
                     "or run it on a kernel that has the tracepoint")
        if off:
            out[item.meta.name] = off
    return out


def run_metrics(pipeline: Pipeline, session: Session, labels=None):
    """A run's Prometheus registry: the loader's families, refreshed from its counts at each
    scrape (``bpfdepot run --metrics`` serves it; the agent merges its instances')."""
    from loader.sinks.prometheus import Metrics, loader_families

    # --labels: series keyed by a cgroup id gain its unit/pod labels (loader/labels/run.py)
    metrics = Metrics(series_labels=labels.series_labels() if labels is not None else None)
    families = loader_families(metrics)

    def refresh() -> None:
        for item, obj in list(session.objects):
            families.programs_attached.labels(program=item.meta.name).set(obj.attached_links)
        pipeline.refresh_metrics(families, session.stats())

    metrics.on_scrape(refresh)
    return metrics


def _serve_metrics(address: str, pipeline: Pipeline, session: Session, say: Say, labels=None):
    from loader.sinks.prometheus import serve

    server = serve(run_metrics(pipeline, session, labels), address)
    host, port = server.address
    say(f"bpfdepot: metrics on http://{host}:{port}/metrics")
    return server
