"""Fleet rollout: desired state in the store, agents that follow it, status written back.

    fleet/desired/NAME     → a JSON blob {name, bundle (a packed bundle's blob digest), nodes
                             (a selector), version, deployed_at} — or {removed: true} — written
                             by ``bpfdepot deploy`` / ``undeploy`` (builder/fleetcli.py)
    fleet/status/NODE/NAME → a JSON blob {node, deployment, version, state, error, programs,
                             received, lost, at} written by the agent on NODE

A node matches ``nodes`` when every term holds: the farm's kernel terms (``release=GLOB``,
``arch=``, ``feature=``, ``digest=``; loader/kernel/catalog.py) against this node's kernel and
probed features, and ``label.KEY=VALUE`` against the labels the agent was started with
(``--node-label``). The agent's ``Follower`` polls the desired refs; a deployment that matches
is unpacked (by the builder's hostile-archive reader, handed in) and loaded as the instance NAME,
replaced when its version changes, unloaded when it is removed or stops matching. A refused
load is reported (``refused`` with the error) and tried again only at a new version.
"""

from __future__ import annotations

import fnmatch
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loader.artifacts.store import ArtifactStore
from loader.errors import BpfDepotError
from loader.kernel.catalog import KernelEntry, Selector, parse_selector

DESIRED = "fleet/desired"
STATUS = "fleet/status"
COUNTS_EVERY_S = 30.0  # a loaded deployment's counts are written back this often (each a blob)


def split_nodes(text: str) -> tuple[Selector, tuple[tuple[str, str], ...]]:
    """A ``--nodes`` selector: kernel terms (the farm's) and ``label.KEY=VALUE`` terms."""
    kernel_terms, labels = [], []
    for raw in text.split(","):
        term = raw.strip()
        if term.startswith("label."):
            key, eq, value = term[len("label."):].partition("=")
            if not eq or not key or not value:
                from loader.kernel.catalog import SelectorError

                raise SelectorError(f"node selector '{text}': '{term}' is not label.KEY=VALUE",
                                    hint="e.g. --nodes 'release=6.*,label.env=prod'")
            labels.append((key, value))
        elif term:
            kernel_terms.append(term)
    return parse_selector(",".join(kernel_terms) or "all"), tuple(labels)


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    labels: dict[str, str]
    kernel: KernelEntry

    def matches(self, nodes: str) -> bool:
        selector, labels = split_nodes(nodes)
        return selector.matches(self.kernel) and all(
            fnmatch.fnmatchcase(self.labels.get(k, ""), v) for k, v in labels)


def read_doc(store: ArtifactStore, digest: str) -> dict[str, Any]:
    doc = json.loads(store.read_blob(digest))
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def put_doc(store: ArtifactStore, ref: str, doc: dict[str, Any]) -> None:
    store.set_ref(ref, store.put_blob(json.dumps(doc, sort_keys=True).encode()))


@dataclass
class _Followed:
    version: int
    loaded: bool
    state: str
    error: str = ""
    reported: float = field(default_factory=time.monotonic)


@dataclass
class Follower:
    """The agent's side of the fleet: one thread polling the store every ``interval`` s."""

    store: ArtifactStore
    node: Node
    instances: Any                       # loader.agent.instances.Instances
    unpack: Callable[[bytes, Path], Path]  # packed bundle → the folder holding manifest.yaml
    workdir: Path
    say: Callable[[str], None]
    interval: float = 2.0
    _followed: dict[str, _Followed] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fleet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 — a store outage must not end the agent
                self.say(f"bpfdepot agent: fleet: cannot read the store: "
                         f"{getattr(exc, 'message', exc)}; trying again")
            self._stop.wait(self.interval)

    def poll(self) -> None:
        """One pass: bring this node's fleet instances in line with the desired state."""
        desired = {}
        for ref, digest in self.store.read_refs(DESIRED).items():
            name = ref.rsplit("/", 1)[-1]
            try:
                desired[name] = read_doc(self.store, digest)
            except (ValueError, BpfDepotError) as exc:
                self.say(f"bpfdepot agent: fleet: {ref} is unreadable ({exc}); ignored")
        for name, doc in desired.items():
            self._follow(name, doc)
        for name in [n for n in self._followed if n not in desired]:
            self._drop(name, {"version": self._followed[name].version}, "removed")

    def _follow(self, name: str, doc: dict[str, Any]) -> None:
        version = int(doc.get("version", 0))
        have = self._followed.get(name)
        if doc.get("removed"):
            if have is not None and have.loaded:
                self._drop(name, doc, "removed")
            elif have is None or have.version != version:
                self._followed[name] = _Followed(version, False, "removed")
                self._status(name, version, "removed")
            return
        try:
            wanted = self.node.matches(str(doc.get("nodes", "all")))
        except BpfDepotError as exc:
            wanted, error = False, exc.message
        else:
            error = ""
        if not wanted:
            if have is not None and have.loaded:
                self._drop(name, doc, "not-selected")
            elif have is None or have.version != version or have.state != "not-selected":
                self._followed[name] = _Followed(version, False, "not-selected", error)
                self._status(name, version, "not-selected", error)
            return
        if have is not None and have.version == version and have.state in ("loaded", "refused"):
            if have.loaded and time.monotonic() - have.reported > COUNTS_EVERY_S:
                self._status(name, version, "loaded")  # the counts, now and then
                have.reported = time.monotonic()
            return
        try:
            folder = self.unpack(self.store.read_blob(doc["bundle"]),
                                 self.workdir / f"{name}-v{version}")
            if have is not None and have.loaded:
                self.instances.replace(name, str(folder))
            else:
                self.instances.load(name, str(folder))
            self._followed[name] = _Followed(version, True, "loaded")
            self.say(f"bpfdepot agent: fleet: {name} v{version} loaded")
            self._status(name, version, "loaded")
        except Exception as exc:  # noqa: BLE001 — reported, tried again at the next version
            message = getattr(exc, "message", str(exc))
            self._followed[name] = _Followed(version, bool(have and have.loaded), "refused",
                                             message)
            self.say(f"bpfdepot agent: fleet: {name} v{version} refused: {message}")
            self._status(name, version, "refused", message)

    def _drop(self, name: str, doc: dict[str, Any], state: str) -> None:
        try:
            self.instances.unload(name)
        except BpfDepotError:
            pass  # already gone
        version = int(doc.get("version", 0))
        self._followed[name] = _Followed(version, False, state)
        self.say(f"bpfdepot agent: fleet: {name} {state}: unloaded")
        self._status(name, version, state)

    def _status(self, name: str, version: int, state: str, error: str = "") -> None:
        row: dict[str, Any] = {"node": self.node.name, "labels": self.node.labels,
                               "kernel": str(self.node.kernel), "deployment": name,
                               "version": version, "state": state, "error": error,
                               "at": time.time()}
        if state == "loaded":
            for r in self.instances.ps():
                if r["name"] == name:
                    channels = r.get("channels", [])
                    row.update(programs=r.get("programs", 0),
                               received=sum(c["received"] for c in channels),
                               lost=sum(c["lost"] for c in channels))
        put_doc(self.store, f"{STATUS}/{self.node.name}/{name}", row)
