"""``bpfdepot agent | load | unload | replace | ps | logs``: the node agent and its clients.

The agent (loader/agent/) keeps many instances loaded in one process, so a load pays no Python
start-up, imports or BTF parsing; the clients are thin: one request over the agent's socket.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from builder.cli import knob_pairs
from loader.model.settings import Settings
from loader.errors import BpfDepotError

DEFAULT_STATE = Path("/var/lib/bpfdepot/agent")
PINS = Path("/sys/fs/bpf/bpfdepot")  # <instance>-<generation>/<program>/{maps,links}/


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cmd_agent(args: argparse.Namespace, settings: Settings) -> int:
    from builder.cli import host_bpftrace_check, host_compilers
    from loader.libbpf.pins import pin_name
    from loader.agent.instances import Instances
    from loader.agent.protocol import socket_path
    from loader.agent.server import AgentServer
    from loader.model.storage import load_storage
    from loader.node import RunOptions, run

    state = Path(args.state)
    storage = load_storage(os.environ, settings.home, Path(args.config) if args.config else None)
    storage = dataclasses.replace(storage, stdout=dataclasses.replace(storage.stdout, enabled=False))
    compilers = None if args.no_build else host_compilers(settings)
    check = None if args.no_build else host_bpftrace_check(settings)

    def runner(instance):
        """One instance's run: its events to <state>/instances/NAME/events.jsonl (rotated as
        the file sink is configured; a replacement, which runs beside the one it replaces for a
        moment, to events-GENERATION.jsonl) besides whatever Kafka/TSDB the config turns on."""
        folder = state / "instances" / instance.name
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        gen = instance.generation
        path = folder / ("events.jsonl" if gen == 1 else f"events-{gen}.jsonl")
        instance.output = str(path)
        mine = dataclasses.replace(storage, file=dataclasses.replace(
            storage.file, enabled=True, path=path))
        pins = Path(args.pins) / pin_name(f"{instance.name}-{gen}")
        options = RunOptions(stop=instance.stop, on_attached=instance.attached,
                             labels=args.labels, knobs=instance.knobs,
                             allow_unsigned=args.allow_unsigned, pins=pins,
                             adopt=instance.adopt)
        # what a restarted agent needs to adopt this run if this agent dies (kill -9)
        record = folder / f"instance.{gen}.json"
        record.write_text(json.dumps({"name": instance.name, "target": instance.target,
                                      "set": instance.knobs, "generation": gen,
                                      "pins": str(pins)}))
        try:
            return run(settings, instance.target, options, mine, compilers=compilers,
                       say=instance.say, check_bpftrace=check)
        finally:
            record.unlink(missing_ok=True)  # stopped on purpose: nothing to adopt

    def name_of(target: str) -> str:
        if target.startswith("sha256:"):
            from loader.artifacts.resolve import artifact
            from loader.artifacts.store import open_store

            return artifact(settings, open_store(settings), target).meta.name
        from loader.model.manifest import load_bundle
        from loader.remote import is_remote, materialize

        if is_remote(target):
            target = str(materialize(target, settings.home))
        return load_bundle(target).name

    instances = Instances(runner)
    metrics_server = None
    if args.metrics:  # first: a port in use fails before the agent starts
        from loader.agent.metrics import AgentMetrics
        from loader.sinks.prometheus import serve

        metrics = AgentMetrics(instances.registries)

        def count_states() -> None:
            for state in ("running", "stopped", "failed"):
                metrics.instances.labels(state=state).set(instances.states().get(state, 0))

        metrics.on_scrape(count_states)
        metrics_server = serve(metrics, args.metrics)
        host, port = metrics_server.address
        _err(f"bpfdepot agent: metrics of every instance on http://{host}:{port}/metrics")
    adopt_or_clean(instances, state, Path(args.pins), adopt=args.orphans == "adopt")
    follower = _follower(args, settings, instances, state) if args.fleet else None
    server = AgentServer(instances, socket_path(args.socket),
                         manifests=Path(args.manifests) if args.manifests else None,
                         name_of=name_of, say=_err)
    ui = _open_ui(args, storage.tsdb.path, server) if args.ui else None
    try:
        if follower is not None:
            follower.start()
        server.serve()
    finally:
        if ui is not None:
            ui.stop()
        if follower is not None:
            follower.stop()
        if metrics_server is not None:
            metrics_server.close()
        with contextlib.suppress(OSError):
            Path(args.pins).rmdir()  # every instance unpinned at stop: leave no empty folder
    return 0


def _open_ui(args: argparse.Namespace, tsdb: Path, server):
    """``--ui HOST:PORT``: the web view (loader/ui) with this agent's instances, read in-process."""
    from loader.ui import UiError
    from loader.ui.live import InProcess
    from loader.ui.server import open_ui

    try:
        ui = open_ui(Path(args.ui_db) if args.ui_db else tsdb, InProcess(server), args.ui, say=_err)
    except UiError as exc:
        raise BpfDepotError(exc.message, hint=exc.fix) from None
    except OSError as exc:
        raise BpfDepotError(f"--ui {args.ui}: cannot listen: {exc.strerror}",
                            hint="pick another port: --ui 127.0.0.1:PORT") from None
    _err(f"bpfdepot agent: web view on {ui.url}/")
    return ui


def _follower(args: argparse.Namespace, settings: Settings, instances, state: Path):
    """The fleet follower: this node's name, labels, kernel and probed features."""
    import socket as socketlib

    from builder.bundle import unpack_bundle
    from loader.agent.fleet import Follower, Node
    from loader.artifacts.resolve import node_identity
    from loader.artifacts.store import open_store
    from loader.kernel.catalog import KernelEntry
    from loader.kernel.probe import probe_features

    store = open_store(settings)
    kernel = node_identity(settings, store)
    features = {name: f.ok for name, f in probe_features(kernel, settings.cache).items()}
    entry = KernelEntry(release=kernel.release, arch=kernel.arch, btf_digest=kernel.btf_digest,
                        config_blob=None, features=features, features_from="probed",
                        btf_on_node=True, source="this node")
    labels = {}
    for pair in args.node_label or []:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise BpfDepotError(f"--node-label {pair!r} is not KEY=VALUE",
                                hint="e.g. --node-label env=prod")
        labels[key] = value

    def unpack(data: bytes, dest: Path) -> Path:
        if (dest / "manifest.yaml").exists():
            return dest  # unpacked before (an agent restart)
        return unpack_bundle(data, dest)

    node = Node(name=args.node_name or socketlib.gethostname(), labels=labels, kernel=entry)
    _err(f"bpfdepot agent: following the fleet in {store} as node {node.name} "
         f"({entry}, labels {labels or 'none'})")
    return Follower(store=store, node=node, instances=instances, unpack=unpack,
                    workdir=state / "fleet", say=_err, interval=args.fleet_interval)


def adopt_or_clean(instances, state: Path, pins_root: Path, *, adopt: bool) -> None:
    """At start: the runs an earlier agent left pinned (it was killed) are adopted — their
    programs were never detached, so nothing attaches twice — or, with --orphans clean,
    detached; pins no record claims are detached either way."""
    from loader.libbpf.pins import unpin

    claimed: set[str] = set()
    records = sorted((state / "instances").glob("*/instance.*.json"),
                     key=lambda p: int(p.name.split(".")[1]), reverse=True)
    for record in records:
        try:
            doc = json.loads(record.read_text())
            name, pins = doc["name"], Path(doc["pins"])
        except (OSError, ValueError, KeyError):
            record.unlink(missing_ok=True)
            continue
        record.unlink(missing_ok=True)  # the adopted run writes its own
        if not adopt or not pins.exists() or name in instances.names():
            unpin(pins)
            _err(f"bpfdepot agent: {name}: detached what an earlier agent left pinned at {pins}")
            continue
        try:
            instances.load(name, doc["target"], doc.get("set") or {},
                           adopt_generation=int(doc["generation"]))
            claimed.add(pins.name)
            _err(f"bpfdepot agent: {name}: adopted from {pins} (attached since the earlier agent)")
        except Exception as exc:  # noqa: BLE001 — one bad record never stops the agent
            unpin(pins)
            _err(f"bpfdepot agent: {name}: cannot adopt ({getattr(exc, 'message', exc)}); "
                 "detached it")
    if pins_root.is_dir():
        for orphan in pins_root.iterdir():
            if orphan.name not in claimed:
                unpin(orphan)
                _err(f"bpfdepot agent: detached orphan pins {orphan}")


def _call(args: argparse.Namespace, request: dict) -> dict:
    from loader.agent.protocol import AgentError, call, socket_path
    from loader.errors import BpfDepotError

    answer = call(socket_path(args.socket), request)
    if not answer.get("ok"):
        error = BpfDepotError(answer.get("error", "the agent refused"),
                              hint=answer.get("hint", ""), detail=answer.get("detail", ""))
        error.exit_code = int(answer.get("exit_code", AgentError.exit_code))
        raise error
    return answer


def _target(text: str) -> str:
    """A local path made absolute for the agent (its working folder is not ours)."""
    if text.startswith(("sha256:", "http://", "https://", "s3://")):
        return text
    return str(Path(text).resolve())


def cmd_load(args: argparse.Namespace, settings: Settings) -> int:
    answer = _call(args, {"op": "load", "target": _target(args.target), "name": args.name,
                          "set": knob_pairs(args.set)})
    _err(f"bpfdepot: loaded {answer['name']}: {answer['programs']} program(s) attached in "
         f"{answer['ms']:.1f} ms")
    return 0


def cmd_replace(args: argparse.Namespace, settings: Settings) -> int:
    answer = _call(args, {"op": "replace", "name": args.name, "target": _target(args.target),
                          "set": knob_pairs(args.set)})
    _err(f"bpfdepot: replaced {answer['name']}: new one attached in {answer['ms']:.1f} ms, old "
         f"one stopped in {answer['old_stopped_ms']:.1f} ms")
    return 0


def cmd_unload(args: argparse.Namespace, settings: Settings) -> int:
    for name in args.names:
        answer = _call(args, {"op": "unload", "name": name})
        counts = "; ".join(f"{c['program']}/{c['channel']} received {c['received']} lost "
                           f"{c['lost']}" for c in answer.get("channels", []))
        _err(f"bpfdepot: unloaded {name} in {answer['ms']:.1f} ms" + (f": {counts}" if counts else ""))
    return 0


def cmd_ps(args: argparse.Namespace, settings: Settings) -> int:
    import json

    rows = _call(args, {"op": "ps"})["instances"]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'NAME':<20} {'STATE':<8} {'UP':>8} {'PROGS':>5} {'RECEIVED':>10} {'LOST':>8}  TARGET")
    now = time.time()
    for row in rows:
        channels = row.get("channels", [])
        received = sum(c["received"] for c in channels)
        lost = sum(c["lost"] for c in channels)
        up = _age(now - row["since"])
        print(f"{row['name']:<20} {row['state']:<8} {up:>8} {row.get('programs', 0):>5} "
              f"{received:>10} {lost:>8}  {row['target']}")
        if row.get("error"):
            print(f"{'':<20} error: {row['error']}")
    return 0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    answer = _call(args, {"op": "logs", "name": args.name, "lines": args.lines})
    for line in answer["lines"]:
        print(line)
    return 0


def register_commands(sub: argparse._SubParsersAction) -> None:
    def socket_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--socket", metavar="PATH", help="the agent's socket (default "
                       "$BPFDEPOT_AGENT_SOCKET, else /run/bpfdepot/agent.sock)")

    agent = sub.add_parser("agent", help="the node daemon: keep instances loaded, controlled by "
                           "load/unload/replace/ps/logs and a watched manifests folder")
    socket_flag(agent)
    agent.add_argument("--manifests", metavar="DIR", help="load every manifest in DIR "
                       "(NAME.yaml or NAME/manifest.yaml), unload removed ones, replace changed "
                       "ones (e.g. /etc/bpfdepot/manifests.d)")
    agent.add_argument("--state", default=str(DEFAULT_STATE), metavar="DIR",
                       help=f"instance events and state (default {DEFAULT_STATE})")
    agent.add_argument("--config", metavar="FILE", help="storage settings, as for run")
    agent.add_argument("--labels", nargs="?", const="/", metavar="ROOT",
                       help="label every instance's records, as bpfdepot run --labels")
    agent.add_argument("--metrics", metavar="HOST:PORT", help="serve every instance's metrics "
                       "(labelled instance=NAME) at http://HOST:PORT/metrics")
    agent.add_argument("--ui", metavar="HOST:PORT", help="also serve the web view (as bpfdepot ui; "
                       "loopback only) with these instances live")
    agent.add_argument("--ui-db", metavar="PATH", help="the store the web view reads (default: the "
                       "storage config's tsdb path)")
    agent.add_argument("--pins", default=str(PINS), metavar="DIR",
                       help=f"bpffs folder of this agent's pinned instances (default {PINS}; "
                            "one per agent)")
    agent.add_argument("--orphans", choices=("adopt", "clean"), default="adopt",
                       help="at start, what an earlier agent left pinned in --pins: adopt its "
                            "instances (default) or detach them")
    agent.add_argument("--fleet", action="store_true",
                       help="follow the deployments in the store (bpfdepot deploy) and report "
                            "back (bpfdepot fleet)")
    agent.add_argument("--node-name", help="this node in the fleet (default the host name)")
    agent.add_argument("--node-label", action="append", metavar="KEY=VALUE",
                       help="a label deployments select with label.KEY=VALUE (repeatable)")
    agent.add_argument("--fleet-interval", type=float, default=2.0, metavar="S",
                       help="how often the store is read (default 2 s)")
    agent.add_argument("--no-build", action="store_true", help="never compile on this host")
    agent.add_argument("--allow-unsigned", action="store_true",
                       help="load what this node's trust root does not vouch for (logged)")
    agent.set_defaults(func=cmd_agent)

    load = sub.add_parser("load", help="load a manifest, bundle or artifact digest into the agent")
    socket_flag(load)
    load.add_argument("target", help="a bundle folder, a manifest file or sha256:DIGEST")
    load.add_argument("--name", help="the instance's name (default: the manifest's name)")
    load.add_argument("--set", action="append", metavar="NAME=VALUE",
                      help="set a program knob before load, as for run (repeatable)")
    load.set_defaults(func=cmd_load)

    replace = sub.add_parser("replace", help="load a new version of an instance, then stop the old")
    socket_flag(replace)
    replace.add_argument("name")
    replace.add_argument("target")
    replace.add_argument("--set", action="append", metavar="NAME=VALUE",
                         help="the new instance's knobs, as for load")
    replace.set_defaults(func=cmd_replace)

    unload = sub.add_parser("unload", help="stop instances: detach, drain, unload")
    socket_flag(unload)
    unload.add_argument("names", nargs="+", metavar="NAME")
    unload.set_defaults(func=cmd_unload)

    ps = sub.add_parser("ps", help="the agent's instances with programs, channels and counts")
    socket_flag(ps)
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(func=cmd_ps)

    logs = sub.add_parser("logs", help="an instance's recent log lines")
    socket_flag(logs)
    logs.add_argument("name")
    logs.add_argument("--lines", "-n", type=int, default=0, help="only the last N")
    logs.set_defaults(func=cmd_logs)
