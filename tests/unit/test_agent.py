"""The agent's registry, protocol and folder logic with a stand-in runner (no kernel): a run
that attaches at once and waits for its stop signal, or fails before attaching."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from types import SimpleNamespace
from pathlib import Path

import pytest

from loader.agent.instances import AgentConflict, Instances
from loader.agent.protocol import AgentError, ProtocolError, call, decode, encode, read_line
from loader.agent.server import AgentServer
from loader.errors import ManifestError, LoadError


class FakeRun:
    """Attaches at once unless the target says ``fail``; returns when stopped."""

    def __init__(self) -> None:
        self.running: list[str] = []

    def __call__(self, instance):
        if "fail" in instance.target:
            raise LoadError(f"'{instance.name}' was rejected by the verifier",
                                hint="see the log")
        instance.attached(_Live())
        self.running.append(instance.target)
        while not instance.stop.is_set():
            time.sleep(0.005)
        self.running.remove(instance.target)
        return SimpleNamespace(channels=[])  # a RunReport with no channels


class _Live:
    programs, attach_ms = 2, 1.5

    class pipeline:  # noqa: N801 — a stand-in for loader.pipeline.Pipeline
        pools: dict = {}

        @staticmethod
        def refresh_metrics(families, stats) -> None:
            families.events_received.labels(program="p", channel="c").set(7)

    class session:  # noqa: N801 — a stand-in for loader.session.Session
        objects: list = []

        @staticmethod
        def stats():
            return []


def test_load_unload_and_conflicts() -> None:
    run = FakeRun()
    instances = Instances(run)
    instances.load("a", "/x/a")
    instances.load("b", "/x/b", {"targ": "1"})
    assert run.running == ["/x/a", "/x/b"]
    with pytest.raises(AgentConflict, match="instance 'a' is already loaded"):
        instances.load("a", "/x/c")
    rows = {r["name"]: r for r in instances.ps()}
    assert rows["b"]["set"] == {"targ": "1"} and rows["a"]["state"] == "running"
    assert instances.unload("a") < 1000
    assert run.running == ["/x/b"] and instances.names() == ["b"]
    with pytest.raises(AgentConflict, match="no instance named 'a'"):
        instances.unload("a")
    instances.close_all()
    assert run.running == [] and instances.names() == []


def test_a_failed_load_is_not_kept_and_a_failed_replace_keeps_the_old() -> None:
    run = FakeRun()
    instances = Instances(run)
    with pytest.raises(LoadError):
        instances.load("a", "/x/fail")
    assert instances.names() == []
    instances.load("a", "/x/a")
    with pytest.raises(LoadError):
        instances.replace("a", "/x/fail")
    assert run.running == ["/x/a"] and instances.get("a").target == "/x/a"
    new, _ = instances.replace("a", "/x/a2")
    assert run.running == ["/x/a2"] and new.generation == 4  # every try counts one
    instances.close_all()


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "a/b", "x" * 65, "a b"])
def test_instance_names_are_plain(name: str) -> None:
    with pytest.raises(ManifestError, match="is not a plain name"):
        Instances(FakeRun()).load(name, "/x")


def test_protocol_lines_are_bounded_objects() -> None:
    assert decode(encode({"op": "ps"})) == {"op": "ps"}
    for bad in (b"[1]", b"{", b"\xff"):
        with pytest.raises(ProtocolError):
            decode(bad)
    a, b = socket.socketpair()
    a.sendall(b'{"op":"ping"}\n{"op"')
    buffer = bytearray()
    assert read_line(b, buffer) == b'{"op":"ping"}'
    a.settimeout(5)
    def send() -> None:
        with contextlib.suppress(OSError):  # the reader gives up first: a broken pipe
            a.sendall(b"x" * (2 << 20))

    sender = threading.Thread(target=send, daemon=True)
    sender.start()  # more than a socket buffer: sent while the reader reads
    with pytest.raises(ProtocolError, match="limit"):
        read_line(b, buffer)
    b.close()
    sender.join(5)
    a.close()


@pytest.fixture
def server(tmp_path: Path):
    run = FakeRun()
    made = AgentServer(Instances(run), tmp_path / "s" / "agent.sock",
                       manifests=tmp_path / "m", name_of=lambda t: Path(t).stem, say=lambda _: None)
    thread = threading.Thread(target=made.serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not made.socket_path.exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield made, run
    made.stop()
    thread.join(5)
    assert not made.socket_path.exists() and run.running == []


def test_requests_over_the_socket(server) -> None:
    made, run = server
    path = made.socket_path
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert call(path, {"op": "load", "target": "/x/shop.yaml"})["name"] == "shop"
    answer = call(path, {"op": "load", "target": "/x/fail.yaml"})
    assert answer == {"ok": False, "error": "'fail' was rejected by the verifier",
                      "exit_code": LoadError.exit_code, "hint": "see the log"}
    assert call(path, {"op": "nope"})["error"] == "unknown request op 'nope'"
    assert call(path, {"op": "load"})["error"] == "request 'load' needs 'target' (a non-empty string)"
    assert call(path, {"op": "load", "target": "/x/y", "set": ["a"]})["exit_code"] == 2
    assert [r["name"] for r in call(path, {"op": "ps"})["instances"]] == ["shop"]
    assert call(path, {"op": "unload", "name": "shop"})["ok"]
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(path))
    sock.sendall(b"not json\n")
    assert json.loads(sock.makefile().readline())["error"].startswith("bad request: not a JSON")
    sock.close()


def test_a_second_agent_on_the_same_socket_is_refused(server, tmp_path: Path) -> None:
    made, _ = server
    other = AgentServer(Instances(FakeRun()), made.socket_path, manifests=None,
                        name_of=str, say=lambda _: None)
    with pytest.raises(AgentConflict, match="another agent already listens"):
        other.serve()


def test_the_folder_follows_files(server) -> None:
    made, run = server
    folder = made.manifests
    (folder / "a.yaml").write_text("v1")
    (folder / ".tmp.yaml").write_text("hidden")
    (folder / "fail.yaml").write_text("x")
    made.scan_folder()
    assert run.running == [str(folder / "a.yaml")]
    rows = {r["name"]: r for r in made.handle({"op": "ps"})["instances"]}
    assert rows["fail"]["state"] == "failed" and "verifier" in rows["fail"]["error"]
    (folder / "a.yaml").write_text("v2, longer")
    made.scan_folder()
    assert made.instances.get("a").generation == 2
    (folder / "a.yaml").unlink()
    (folder / "fail.yaml").unlink()
    made.scan_folder()
    assert run.running == [] and made.handle({"op": "ps"})["instances"] == []


def test_no_agent_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match="no bpfdepot agent listens on"):
        call(tmp_path / "none.sock", {"op": "ps"})


def test_metrics_of_every_instance_merge_with_their_names() -> None:
    from loader.agent.metrics import AgentMetrics

    instances = Instances(FakeRun())
    instances.load("a", "/x/a")
    instances.load("b", "/x/b")
    text = AgentMetrics(instances.registries).render().decode()
    assert text.count("# TYPE bpfdepot_events_received_total counter") == 1
    assert 'bpfdepot_events_received_total{instance="a",program="p",channel="c"} 7' in text
    assert 'bpfdepot_events_received_total{instance="b",program="p",channel="c"} 7' in text
    instances.close_all()
    assert "instance=" not in AgentMetrics(instances.registries).render().decode()
