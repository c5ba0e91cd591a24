"""The web view over a store filled by real programs: bpf/topology traces a loopback exchange of
a known size and the UI's service map (``bpfdepot ui`` over HTTP) shows the client → server edge
with exactly those bytes, grouped by process too; a range before the run is an empty state;
bpf/cpu_profile on ``burn`` gives a flame tree holding burn_mid → burn_leaf."""

from __future__ import annotations

import time
from pathlib import Path

from tests.kernel.ui_fixtures import burn_profile, topology_exchange, ui_server


def _find(tree: dict, name: str) -> dict | None:
    if tree["name"] == name:
        return tree
    return next((hit for c in tree["children"] if (hit := _find(c, name))), None)


def test_service_map_shows_the_exchange_with_its_bytes(home: Path, tmp_path: Path) -> None:
    x = topology_exchange(home, tmp_path)
    with ui_server(x.db) as ui:
        status, answer = ui.get_json("/api/servicemap?from=-10m")
        assert status == 200, answer
        edge = next(e for e in answer["edges"]
                    if (e["source"], e["target"]) == (f"comm:{x.client_comm}", f"comm:{x.server_comm}"))
        assert (edge["bytes_tx"], edge["bytes_rx"], edge["conns"], edge["server"]) == \
            (x.up, x.down, 1, f"127.0.0.1:{x.port}")
        # the exchange counts once: no edge from an external node into the server for it
        assert not [e for e in answer["edges"] if e["target"] == f"comm:{x.server_comm}"
                    and e["source"].startswith("ext:")]
        status, by_process = ui.get_json("/api/servicemap?from=-10m&by=process")
        ids = {(e["source"], e["target"]) for e in by_process["edges"]}
        assert (f"proc:{x.client_comm}:{x.client_pid}", f"proc:{x.server_comm}:{x.server_pid}") in ids
        status, detail = ui.get_json(f"/api/servicemap/edge?from=-10m&id={edge['id']}")
        assert status == 200 and sum(s["bytes"] for s in detail["series"]) == x.up + x.down
        before = int(time.time()) - 7200
        status, empty = ui.get_json(f"/api/servicemap?from={before}&to={before + 60}")
        assert status == 200 and empty["empty"] and "the store holds topology events" in empty["why"]


def test_flame_graph_of_burn_holds_burn_leaf(home: Path, tmp_path: Path) -> None:
    p = burn_profile(home, tmp_path)
    with ui_server(p.db) as ui:
        status, answer = ui.get_json(f"/api/flamegraph?from=-10m&comm=burn&pid={p.pid}&min_share=0")
        assert status == 200, answer
        leaf = _find(answer["tree"], "burn_leaf")
        assert leaf is not None and leaf["value"] > 0 and not leaf["kernel"]
        assert _find(answer["tree"], "burn_mid")["value"] >= leaf["value"]
        assert answer["tree"]["value"] == answer["total"] > 0
        status, none = ui.get_json("/api/flamegraph?from=-10m&comm=nosuchcomm")
        assert status == 200 and none["empty"]


def _connects(port: int, n: int) -> None:
    import socket

    with socket.create_server(("127.0.0.1", port)) as srv:
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", port)):
                srv.accept()[0].close()


def _received(answer: dict, name: str) -> int:
    row = next(r for r in answer["instances"] if r["name"] == name)
    return sum(c["received"] for c in row["channels"] if c["channel"] == "tcp_connlat_events")


def test_instances_page_counts_change_live(home: Path, tmp_path: Path) -> None:
    from tests.kernel.ui_fixtures import agent_ui
    from tests.services import free_port

    with agent_ui(home, tmp_path) as agent:
        assert agent.cli("load", str(Path(__file__).parents[2] / "bpf" / "tcp_connlat")).returncode == 0
        port = free_port()
        counts = []
        for _ in range(2):
            _connects(port, 3)
            deadline = time.monotonic() + 10
            while True:
                status, answer = agent.get_json("/api/instances")
                assert status == 200 and answer["mode"] == "in-process", answer
                got = _received(answer, "tcp_connlat")
                if got >= 3 * (len(counts) + 1) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            counts.append(got)
        assert counts[0] >= 3 and counts[1] >= counts[0] + 3, counts
        row = next(r for r in answer["instances"] if r["name"] == "tcp_connlat")
        assert row["state"] == "running" and row["programs"] >= 1
        assert isinstance(row["sinks"], list) and isinstance(row["processors"], list)
        # bpfdepot ui beside the agent reads the same over the control socket
        with ui_server(tmp_path / "events.sqlite", agent_socket=agent.socket, home=home) as ui:
            status, over = ui.get_json("/api/instances")
            assert status == 200 and over["mode"] == "socket", over
            assert _received(over, "tcp_connlat") >= counts[1]
            assert isinstance(next(r for r in over["instances"])["sinks"], list)


CONNECTS = r"""
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"ui_connect", 0, 0, 0)
port = int(sys.argv[1])
for _ in range(3):
    socket.create_connection(("127.0.0.1", port)).close()
"""


def test_connect_latency_of_three_connects(home: Path, tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from tests.kernel.conftest import ROOT, Running

    db, out = tmp_path / "events.sqlite", tmp_path / "connlat.jsonl"
    run = Running(home, str(ROOT / "bpf" / "tcp_connlat"), out, extra=["--tsdb", str(db)])
    try:
        with socket.create_server(("127.0.0.1", 0), backlog=8) as srv:
            port = srv.getsockname()[1]
            subprocess.run([sys.executable, "-c", CONNECTS, str(port)], check=True, timeout=30)
    finally:
        done = run.stop()
    mine = sorted(e["delta_ns"] for e in done.events if e.get("comm") == "ui_connect" and e.get("dport") == port)
    assert len(mine) == 3, done.events[-5:]
    with ui_server(db) as ui:
        status, answer = ui.get_json("/api/latency?from=-10m&metric=connect&by=comm&comm=ui_connect")
        assert status == 200, answer
        (group,) = answer["groups"]
        assert (group["group"], group["count"], group["sum_ns"]) == ("ui_connect", 3, sum(mine))
        assert abs(group["p50_ns"] - mine[1]) / mine[1] < 0.19
        assert sum(sum(row) for row in group["heatmap"]["counts"]) == 3
