"""The agent's instances: one per loaded manifest, each a ``loader.node.run`` on its own thread.

An instance owns everything its run owns — objects, links, readers, processors, sinks — so
loading, replacing or unloading one never touches another's stream. The agent thread that
asked for a load waits until the instance is attached (or has failed, and is then gone with
nothing left loaded: the run's own clean-up); an unload sets the run's stop signal, which
wakes its poll loop at once, and waits for the run to detach and drain.

    Instance     name, target, state (loading → running → stopped | failed), its log lines
                 (the run's ``say``), the live session and pipeline once attached (for ``ps``),
                 the final report once stopped
    Instances    the registry: load, unload, replace (the new one attached before the old one
                 is stopped; a failed replacement leaves the old one running), ps, logs
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from loader.errors import BpfDepotError, ManifestError
from loader.node import LiveRun, run_metrics
from loader.pipeline import StopSignal

LOG_LINES = 500          # kept per instance for `bpfdepot logs`
LOAD_TIMEOUT_S = 300.0   # a load may compile on the host first
UNLOAD_TIMEOUT_S = 30.0  # the run drains its processors and sinks


class AgentConflict(BpfDepotError):
    """An instance name in use (load) or unknown (unload, replace, logs)."""

    exit_code = 2


# runs one instance to its end and returns the run's report: it passes the instance's ``stop``,
# ``attached`` and ``say`` to loader.node.run (the agent binds settings, storage, compilers)
Runner = Callable[["Instance"], Any]


class Instance:
    def __init__(self, name: str, target: str, runner: Runner,
                 knobs: dict[str, str] | None = None, generation: int = 1,
                 adopt: bool = False) -> None:
        self.name = name
        # 1, 2, … per name in this agent: a replacement runs beside the one it replaces for a
        # moment, so what it writes (files) is told apart by it
        self.generation = generation
        self.output: str | None = None  # where the runner sends its records, for ps
        self.adopt = adopt  # take over an earlier agent's pinned run instead of attaching
        self.target = target
        self.knobs = dict(knobs or {})  # --set NAME=VALUE of the load
        self.state = "loading"
        self.error: BpfDepotError | Exception | None = None
        self.live: LiveRun | None = None
        self.metrics = None  # its Prometheus registry once attached
        self.report: Any = None
        self.loaded_at = time.time()
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.stop = StopSignal()
        self._ready = threading.Event()
        self._runner = runner
        self._thread = threading.Thread(target=self._run, name=f"instance {name}", daemon=True)

    def say(self, line: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {line}")

    def attached(self, live: LiveRun) -> None:
        # its own registry, merged into the agent's /metrics (loader/agent/metrics.py); one
        # refresh now hands it to the pipeline, so map channels export from their first read
        self.metrics = run_metrics(live.pipeline, live.session)
        self.metrics.refresh()
        self.live = live
        self.state = "running"
        self._ready.set()

    def _run(self) -> None:
        try:
            self.report = self._runner(self)
            self.state = "stopped"
        except BaseException as exc:  # the run has cleaned up; keep why for load's answer
            self.error = exc
            self.state = "failed"
            self.say(f"error: {getattr(exc, 'message', exc)}")
        finally:
            self.live = None
            self.stop.close()
            self._ready.set()

    def start(self, timeout: float) -> None:
        """Start the run and wait until it is attached; its error if it failed first."""
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop.set()
            self._thread.join(UNLOAD_TIMEOUT_S)
            raise AgentConflict(f"instance '{self.name}' did not attach within {timeout:.0f} s; "
                                "stopped it", hint=f"see bpfdepot logs {self.name}")
        if self.state == "failed":
            raise self.error

    def close(self, timeout: float = UNLOAD_TIMEOUT_S) -> float:
        """Stop the run and wait for it to detach and drain; the milliseconds it took."""
        began = time.perf_counter()
        self.stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AgentConflict(f"instance '{self.name}' did not stop within {timeout:.0f} s",
                                hint="its processors may be stuck; see bpfdepot logs "
                                     f"{self.name}")
        return (time.perf_counter() - began) * 1000

    def status(self) -> dict[str, Any]:
        """One row of ``ps``."""
        row: dict[str, Any] = {"name": self.name, "target": self.target, "state": self.state,
                               "since": self.loaded_at, "set": self.knobs,
                               "generation": self.generation}
        if self.output:
            row["output"] = self.output
        if self.adopt:
            row["adopted"] = True
        live = self.live
        if live is not None:
            row["programs"] = live.programs
            row["attach_ms"] = round(live.attach_ms, 1)
            row["channels"] = [{"program": s.program, "channel": s.channel,
                                "received": s.received, "lost": s.lost}
                               for s in live.session.stats()]
            row["processors"] = len(live.pipeline.pools)
            row["pinned"] = getattr(live.session, "pinned", False)
        if self.error is not None:
            row["error"] = getattr(self.error, "message", str(self.error))
        return row


class Instances:
    """The agent's registry of instances, safe to call from many connection threads."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._lock = threading.Lock()
        self._by_name: dict[str, Instance] = {}
        self._busy: set[str] = set()  # names being loaded, replaced or unloaded
        self._generations: dict[str, int] = {}

    def _next_generation(self, name: str, at_least: int = 0) -> int:
        with self._lock:
            self._generations[name] = max(self._generations.get(name, 0) + 1, at_least)
            return self._generations[name]

    def _claim(self, name: str, *, exists: bool) -> Instance | None:
        with self._lock:
            if name in self._busy:
                raise AgentConflict(f"instance '{name}' is being changed by another request",
                                    hint="wait for it and try again")
            have = self._by_name.get(name)
            if exists and have is None:
                raise AgentConflict(f"no instance named '{name}'",
                                    hint=f"loaded: {', '.join(sorted(self._by_name)) or 'none'}"
                                         " (bpfdepot ps)")
            if not exists and have is not None:
                raise AgentConflict(f"instance '{name}' is already loaded (from {have.target})",
                                    hint=f"bpfdepot replace {name} TARGET, or load it under "
                                         "another --name")
            self._busy.add(name)
            return have

    def _release(self, name: str) -> None:
        with self._lock:
            self._busy.discard(name)

    def load(self, name: str, target: str, knobs: dict[str, str] | None = None,
             timeout: float = LOAD_TIMEOUT_S, *, adopt_generation: int = 0) -> Instance:
        """Load ``target`` as instance ``name``; ``adopt_generation``: take over that
        generation's pins left by an earlier agent instead of attaching."""
        _check_name(name)
        self._claim(name, exists=False)
        try:
            instance = Instance(name, target, self._runner, knobs,
                                self._next_generation(name, adopt_generation),
                                adopt=bool(adopt_generation))
            instance.start(timeout)
            with self._lock:
                self._by_name[name] = instance
            return instance
        finally:
            self._release(name)

    def unload(self, name: str) -> float:
        instance = self._claim(name, exists=True)
        try:
            ms = instance.close()
            with self._lock:
                del self._by_name[name]
            return ms
        finally:
            self._release(name)

    def replace(self, name: str, target: str, knobs: dict[str, str] | None = None,
                timeout: float = LOAD_TIMEOUT_S) -> tuple[Instance, float]:
        """The new run attached first, then the old one stopped: no gap in what is traced (for
        a moment both are attached); a new run that fails leaves the old one as it was."""
        old = self._claim(name, exists=True)
        try:
            new = Instance(name, target, self._runner, knobs, self._next_generation(name))
            new.start(timeout)
            ms = old.close()
            with self._lock:
                self._by_name[name] = new
            return new, ms
        finally:
            self._release(name)

    def get(self, name: str) -> Instance:
        with self._lock:
            instance = self._by_name.get(name)
        if instance is None:
            raise AgentConflict(f"no instance named '{name}'", hint="bpfdepot ps lists them")
        return instance

    def ps(self) -> list[dict[str, Any]]:
        with self._lock:
            instances = list(self._by_name.values())
        return [i.status() for i in instances]

    def registries(self) -> list[tuple[str, object]]:
        """(name, registry) of every instance running now, for the agent's /metrics."""
        with self._lock:
            instances = list(self._by_name.values())
        return [(i.name, i.metrics) for i in instances
                if i.state == "running" and i.metrics is not None]

    def states(self) -> dict[str, int]:
        with self._lock:
            instances = list(self._by_name.values())
        out: dict[str, int] = {}
        for i in instances:
            out[i.state] = out.get(i.state, 0) + 1
        return out

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._by_name)

    def close_all(self) -> None:
        for name in self.names():
            try:
                self.unload(name)
            except AgentConflict:
                pass  # being changed right now: its own request finishes it


def _check_name(name: str) -> None:
    """Instance names become folder names (state, pins): a plain word only."""
    ok = name and len(name) <= 64 and all(c.isalnum() or c in "-_." for c in name) \
        and not name.startswith(".")
    if not ok:
        raise ManifestError(f"instance name {name!r} is not a plain name",
                            hint="use letters, digits, '-', '_' and '.', at most 64, not "
                                 "starting with '.' (e.g. --name tcp-connlat-2)")
