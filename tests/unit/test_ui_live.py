"""The instances page's sources: a fake agent on a Unix socket (the real protocol module
answers; only the agent behind it is canned), a socket left by a dead agent, an agent that
garbles, and the in-process detail of a run's routes and sinks from a stand-in pipeline."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from loader.agent.protocol import decode, encode, read_line
from loader.processors.workers import RouteCounts
from loader.sinks import SinkStats
from loader.ui import UiError
from loader.ui.live import OverSocket, detail

ROW = {"name": "tcp_connlat", "target": "bpf/tcp_connlat", "state": "running", "since": 1.5,
       "set": {}, "generation": 1, "programs": 2, "attach_ms": 11.0, "pinned": True,
       "channels": [{"program": "tcp_connlat", "channel": "tcp_connlat_events", "received": 7, "lost": 1}],
       "processors": 0}


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Path, list[dict]]]:
    """A Unix socket answering ping and ps as the agent does; the requests it got."""
    path = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    seen: list[dict] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = decode(read_line(conn, bytearray()))
                seen.append(request)
                answer = {"ok": True, "pid": 4242} if request["op"] == "ping" else \
                    {"ok": True, "instances": [ROW]}
                conn.sendall(encode(answer))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, seen
    listener.close()


def test_instances_from_the_agent_socket(agent) -> None:
    path, seen = agent
    answer = OverSocket(path).instances()
    assert answer["mode"] == "socket" and answer["agent"] == {"pid": 4242}
    (row,) = answer["instances"]
    assert row["channels"] == ROW["channels"] and row["state"] == "running"
    assert row["processors"] is None and row["sinks"] is None  # plain ps: not reported
    assert {"op": "ps", "detail": True} in seen
    assert {r["op"] for r in seen} <= {"ps", "ping"}  # read-only: nothing else is ever asked


def test_no_agent_is_an_empty_state(tmp_path: Path) -> None:
    assert OverSocket(tmp_path / "none.sock").instances()["empty"] is True
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens: a dead agent's socket
    answer = OverSocket(stale).instances()
    assert answer["empty"] and "no bpfdepot agent listens" in answer["why"]


def test_an_agent_that_garbles_is_503(tmp_path: Path) -> None:
    path = tmp_path / "bad.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(100)
            conn.sendall(b"not json\n")

    threading.Thread(target=serve, daemon=True).start()
    with pytest.raises(UiError) as err:
        OverSocket(path).instances()
    assert err.value.status == 503 and "unreadable" in err.value.message
    listener.close()


def test_detail_adds_routes_and_sinks_of_a_live_run() -> None:
    counts = RouteCounts(sent=10, kept=8, dropped=1, errors=1, lost=0)
    pool = SimpleNamespace(name="l7_user", restarts=2)
    sink = SimpleNamespace(stats=lambda: SinkStats(delivered=8, failed=0, pending=1))
    pipeline = SimpleNamespace(route_counts=lambda: [(SimpleNamespace(name="l7_events"), pool, counts)],
                               outlets=SimpleNamespace(sinks={"tsdb": sink}))
    row = detail(dict(ROW), SimpleNamespace(live=SimpleNamespace(pipeline=pipeline)))
    assert row["processors"] == [{"channel": "l7_events", "processor": "l7_user", "sent": 10, "kept": 8,
                                  "dropped": 1, "errors": 1, "lost": 0, "restarts": 2}]
    assert row["sinks"] == [{"sink": "tsdb", "delivered": 8, "failed": 0, "pending": 1}]
    assert detail(dict(ROW), None)["processors"] is None  # failed or not attached yet
