"""``bpfdepot deploy | undeploy | fleet``: desired state for every agent that follows the store
(``bpfdepot agent --fleet``), and what each node reports back (loader/agent/fleet.py)."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone

from loader.errors import BpfDepotError
from loader.model.settings import Settings


def _store(settings: Settings):
    from loader.artifacts.store import open_store

    return open_store(settings)


def _current(store, name: str) -> dict | None:
    from loader.agent.fleet import DESIRED, read_doc

    digest = store.get_ref(f"{DESIRED}/{name}")
    return read_doc(store, digest) if digest else None


def cmd_deploy(args: argparse.Namespace, settings: Settings) -> int:
    from builder.bundle import pack_bundle
    from loader.agent.fleet import DESIRED, put_doc, split_nodes
    from loader.artifacts.sources import SHARED_INCLUDE
    from loader.model.manifest import load_bundle

    split_nodes(args.nodes)  # a bad selector is refused before anything is written
    manifest = load_bundle(args.bundle)
    name = args.name or manifest.name
    store = _store(settings)
    bundle = store.put_blob(pack_bundle(manifest, [SHARED_INCLUDE]))
    previous = _current(store, name)
    version = int(previous.get("version", 0)) + 1 if previous else 1
    put_doc(store, f"{DESIRED}/{name}", {
        "name": name, "bundle": bundle, "nodes": args.nodes, "version": version,
        "deployed_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
    print(f"deployed {name} v{version} to nodes '{args.nodes}' (bundle {bundle})")
    return 0


def cmd_undeploy(args: argparse.Namespace, settings: Settings) -> int:
    from loader.agent.fleet import DESIRED, put_doc

    store = _store(settings)
    previous = _current(store, args.name)
    if previous is None or previous.get("removed"):
        raise BpfDepotError(f"no deployment named '{args.name}'", hint="bpfdepot fleet lists them")
    version = int(previous.get("version", 0)) + 1
    put_doc(store, f"{DESIRED}/{args.name}", {"name": args.name, "removed": True,
                                              "version": version})
    print(f"undeployed {args.name} (v{version}): agents unload it at their next poll")
    return 0


def cmd_fleet(args: argparse.Namespace, settings: Settings) -> int:
    from loader.agent.fleet import DESIRED, STATUS, read_doc

    store = _store(settings)
    desired = [read_doc(store, d) for d in store.read_refs(DESIRED).values()]
    status = [read_doc(store, d) for d in store.read_refs(STATUS).values()]
    if args.json:
        print(json.dumps({"deployments": desired, "nodes": status}, indent=1, sort_keys=True))
        return 0
    print(f"{'DEPLOYMENT':<20} {'VERSION':>7}  NODES")
    for d in sorted(desired, key=lambda d: d["name"]):
        print(f"{d['name']:<20} {d['version']:>7}  {'(removed)' if d.get('removed') else d['nodes']}")
    print(f"\n{'NODE':<20} {'DEPLOYMENT':<20} {'VERSION':>7} {'STATE':<13} {'RECEIVED':>9} "
          f"{'LOST':>6} {'AGE':>6}  ERROR")
    now = time.time()
    for s in sorted(status, key=lambda s: (s["node"], s["deployment"])):
        print(f"{s['node']:<20} {s['deployment']:<20} {s['version']:>7} {s['state']:<13} "
              f"{s.get('received', ''):>9} {s.get('lost', ''):>6} {now - s['at']:>5.0f}s  "
              f"{s.get('error', '')}")
    return 0


def register_commands(sub: argparse._SubParsersAction) -> None:
    deploy = sub.add_parser("deploy", help="ask every matching agent (--fleet) to run a bundle")
    deploy.add_argument("bundle")
    deploy.add_argument("--nodes", default="all", metavar="SELECTOR",
                        help="the farm's kernel terms (release=6.*, arch=, feature=, digest=) "
                             "and label.KEY=VALUE of the agents' --node-label (default all)")
    deploy.add_argument("--name", help="the deployment (and instance) name; default the "
                        "manifest's")
    deploy.set_defaults(func=cmd_deploy)
    undeploy = sub.add_parser("undeploy", help="ask every agent to unload a deployment")
    undeploy.add_argument("name")
    undeploy.set_defaults(func=cmd_undeploy)
    fleet = sub.add_parser("fleet", help="deployments and what each node reports")
    fleet.add_argument("--json", action="store_true")
    fleet.set_defaults(func=cmd_fleet)


