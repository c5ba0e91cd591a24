"""The instances page: what the node agent has loaded, with its counts, live.

Two sources. **In-process**: the agent itself serves the UI (``bpfdepot agent --ui``), so its
instances are read directly — each run's channels, processor routes and sinks. **The control
socket**: ``bpfdepot ui`` asks a running agent ``{"op": "ps", "detail": true}`` (the agent adds
the routes and sinks of each instance for ``detail``; an agent that does not know it answers
plain ``ps`` rows, and the page says processors and sinks are not reported). Nothing here
loads, unloads or changes anything: ``ps`` is the only request sent.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

from loader.agent.protocol import AgentError, call
from loader.ui import UiError

PS_TIMEOUT_S = 2.0


class Live(Protocol):
    """Where the instances page reads from."""

    mode: str

    def instances(self) -> dict[str, Any]: ...


def detail(row: dict[str, Any], instance: Any) -> dict[str, Any]:
    """A ``ps`` row with its run's processor routes and sinks (``null`` before it attached)."""
    out = dict(row)
    live = getattr(instance, "live", None) if instance is not None else None
    if live is None:
        out["processors"], out["sinks"] = None, None
        return out
    pipeline = live.pipeline
    out["processors"] = [{"channel": state.name, "processor": pool.name, "sent": c.sent,
                          "kept": c.kept, "dropped": c.dropped, "errors": c.errors, "lost": c.lost,
                          "restarts": pool.restarts}
                         for state, pool, c in pipeline.route_counts()]
    out["sinks"] = [{"sink": name, "delivered": s.delivered, "failed": s.failed, "pending": s.pending}
                    for name, s in ((n, sink.stats()) for n, sink in pipeline.outlets.sinks.items())]
    return out


def _shape(rows: list[dict[str, Any]], mode: str, pid: int | None) -> dict[str, Any]:
    out = []
    for row in rows:
        r = {"name": row.get("name"), "target": row.get("target"), "state": row.get("state"),
             "since": row.get("since"), "generation": row.get("generation"),
             "adopted": bool(row.get("adopted")), "pinned": row.get("pinned"),
             "programs": row.get("programs"), "attach_ms": row.get("attach_ms"),
             "error": row.get("error"), "channels": row.get("channels") or []}
        procs = row.get("processors")
        r["processors"] = procs if isinstance(procs, list) else None  # plain ps: only a count
        sinks = row.get("sinks")
        r["sinks"] = sinks if isinstance(sinks, list) else None
        out.append(r)
    return {"mode": mode, "now_ns": time.time_ns(), "agent": {"pid": pid}, "instances": out}


class InProcess:
    """The agent's own instances (``bpfdepot agent --ui``): ``server`` is its AgentServer."""

    mode = "in-process"

    def __init__(self, server: Any) -> None:
        self.server = server

    def instances(self) -> dict[str, Any]:
        answer = self.server.handle({"op": "ps", "detail": True})
        return _shape(answer.get("instances", []), self.mode, os.getpid())


class OverSocket:
    """A running agent, asked over its control socket."""

    mode = "socket"

    def __init__(self, path: Path) -> None:
        self.path = path

    def instances(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"empty": True, "why": f"no bpfdepot agent answers on {self.path}",
                    "run": "sudo bpfdepot agent &  then  sudo bpfdepot load bpf/tcp_connlat"}
        try:
            answer = call(self.path, {"op": "ps", "detail": True}, timeout=PS_TIMEOUT_S)
            pong = call(self.path, {"op": "ping"}, timeout=PS_TIMEOUT_S)
        except AgentError as exc:
            if "no bpfdepot agent listens" in exc.message:  # a socket file left by a dead agent
                return {"empty": True, "why": exc.message,
                        "run": "sudo bpfdepot agent &  then  sudo bpfdepot load bpf/tcp_connlat"}
            raise UiError(503, exc.message, exc.hint or "check the agent: sudo bpfdepot ps") from None
        if not answer.get("ok"):
            raise UiError(503, f"the agent on {self.path} refused ps: {answer.get('error')}",
                          answer.get("hint") or "see the agent's log")
        return _shape(answer.get("instances", []), self.mode, pong.get("pid"))
