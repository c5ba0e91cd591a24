"""The node agent in the running kernel: `bpfdepot agent` with instances loaded, replaced and
unloaded over its socket and through a watched folder, each instance's stream untouched by the
others'. The subject is a plain libbpf program (tests/kernel/bundles/agent_calls: one ring-buffer
event per getppid()/getpgrp() of the process its `target_tgid` knob names)."""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kernel.conftest import ROOT, bpfdepot, cli_env, held_prog_ids, records
from tests.kernel.monitor import Worker, workers
from tests.services import free_port

CALLS = ROOT / "tests" / "kernel" / "bundles" / "agent_calls"
BROKEN = ROOT / "tests" / "kernel" / "bundles" / "verifier_reject"


@dataclass
class Agent:
    home: Path
    proc: subprocess.Popen
    socket: Path
    state: Path
    manifests: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return bpfdepot(self.home, *args, "--socket", str(self.socket))

    def ok(self, *args: str) -> str:
        out = self.cli(*args)
        assert out.returncode == 0, out.stderr
        return out.stdout + out.stderr

    def ps(self) -> dict[str, dict]:
        return {row["name"]: row for row in json.loads(self.ok("ps", "--json"))}

    def events(self, name: str) -> list[dict]:
        """Every record of instance ``name``'s runs, the first's (events.jsonl) first."""
        folder = self.state / "instances" / name
        files = sorted(folder.glob("events*.jsonl"), key=lambda p: (len(p.name), p.name))
        return [r for f in files for r in records(f)]

    def wait(self, test, what: str, timeout: float = 10.0) -> float:
        began = time.monotonic()
        while not test():
            assert time.monotonic() - began < timeout, f"timed out waiting for {what}"
            time.sleep(0.02)
        return time.monotonic() - began


def start_agent(home: Path, tmp_path: Path) -> Agent:
    """An agent on the test's folders (its own bpffs pins folder too); waits for its socket."""
    sock, state, manifests = tmp_path / "agent.sock", tmp_path / "state", tmp_path / "manifests.d"
    port = free_port()
    pins = f"/sys/fs/bpf/bpfdepot-test-{tmp_path.name.replace('.', '_')}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder.cli", "agent", "--socket", str(sock), "--state",
         str(state), "--manifests", str(manifests), "--metrics", f"127.0.0.1:{port}",
         "--pins", pins],
        cwd=ROOT, env=cli_env(home), stderr=subprocess.PIPE, text=True)
    made = Agent(home, proc, sock, state, manifests)
    made.metrics_url = f"http://127.0.0.1:{port}/metrics"
    made.pins = pins
    made.wait(lambda: (sock.exists() and _listening(sock)) or proc.poll() is not None,
              "the agent's socket", timeout=60)
    assert proc.poll() is None, proc.stderr.read()
    return made


def _listening(sock: Path) -> bool:
    import socket

    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(sock))
        return True
    except OSError:
        return False
    finally:
        s.close()


def stop_agent(made: Agent) -> str:
    made.proc.send_signal(signal.SIGTERM)
    _, err = made.proc.communicate(timeout=60)
    assert made.proc.returncode == 0, err
    assert "stopped; unloaded" in err
    return err


@pytest.fixture
def agent(home: Path, tmp_path: Path) -> Iterator[Agent]:
    made = start_agent(home, tmp_path)
    try:
        yield made
    finally:
        stop_agent(made)
    assert not Path(made.pins).exists()  # nothing left pinned, not even the folder


def _calls(events: list[dict], pid: int) -> list[int]:
    return [e["nr"] for e in events if e["pid"] == pid]


def test_instances_load_and_unload_without_touching_each_other(agent: Agent) -> None:
    with workers("/dev/null", 2, ops="def getpgrp(n):\n    [os.getpgrp() for _ in range(n)]\n") \
            as (a, b):
        agent.ok("load", str(CALLS), "--name", "a", "--set", f"target_tgid={a.pid}")
        alone = held_prog_ids(agent.proc.pid)
        agent.ok("load", str(CALLS), "--name", "b", "--set", f"target_tgid={b.pid}")
        both = held_prog_ids(agent.proc.pid)
        assert len(alone) == 2 and len(both - alone) == 2
        rows = agent.ps()
        assert {r["state"] for r in rows.values()} == {"running"} and set(rows) == {"a", "b"}
        assert rows["a"]["set"] == {"target_tgid": str(a.pid)} and rows["a"]["programs"] == 2

        a.do("getppid", 5)
        b.do("getppid", 7)
        agent.wait(lambda: len(agent.events("a")) == 5 and len(agent.events("b")) == 7, "events")
        out = agent.ok("unload", "a")
        assert "unloaded a in" in out
        assert held_prog_ids(agent.proc.pid) == both - alone  # b's programs, and only b's
        b.do("getpgrp", 3)
        a.do("getppid", 4)  # a is gone: nobody records these
        agent.wait(lambda: len(agent.events("b")) == 10, "b's events after a's unload")
        time.sleep(0.3)
    assert _calls(agent.events("a"), a.pid) == [110] * 5
    assert _calls(agent.events("b"), b.pid) == [110] * 7 + [111] * 3
    assert [e["seq"] for e in agent.events("b")] == list(range(10))  # nothing lost or doubled
    row = agent.ps()["b"]
    assert row["channels"] == [{"program": "agent_calls", "channel": "events", "received": 10,
                                "lost": 0}]
    text = urllib.request.urlopen(agent.metrics_url, timeout=10).read().decode()
    assert ('bpfdepot_events_received_total{instance="b",program="agent_calls",channel="events"}'
            ' 10') in text
    assert 'instance="a"' not in text  # unloaded: its series are gone
    assert 'bpfdepot_agent_instances{state="running"} 1' in text
    assert "unknown" not in agent.ok("logs", "b")


def test_a_bad_load_says_why_and_leaves_the_others_alone(agent: Agent) -> None:
    agent.ok("load", str(CALLS), "--name", "a", "--set", f"target_tgid={os.getpid()}")
    held = held_prog_ids(agent.proc.pid)
    out = agent.cli("load", str(BROKEN))
    assert out.returncode != 0
    assert "verifier" in out.stderr.lower(), out.stderr
    out = agent.cli("load", str(CALLS), "--name", "a")
    assert out.returncode == 2 and "instance 'a' is already loaded" in out.stderr
    assert "bpfdepot replace a" in out.stderr
    out = agent.cli("unload", "nope")
    assert out.returncode == 2 and "no instance named 'nope'" in out.stderr
    out = agent.cli("load", str(CALLS), "--name", "../x")
    assert out.returncode == 2 and "is not a plain name" in out.stderr
    assert set(agent.ps()) == {"a"} and held_prog_ids(agent.proc.pid) == held
    for _ in range(3):
        os.getppid()
    agent.wait(lambda: len(agent.events("a")) == 3, "a's events after the failed loads")


def test_replace_attaches_the_new_one_before_the_old_one_stops(agent: Agent) -> None:
    with workers("/dev/null", 2) as (a, b):
        agent.ok("load", str(CALLS), "--name", "x", "--set", f"target_tgid={a.pid}")
        old = held_prog_ids(agent.proc.pid)
        a.do("getppid", 2)
        agent.wait(lambda: len(agent.events("x")) == 2, "the first instance's events")
        out = agent.ok("replace", "x", str(CALLS), "--set", f"target_tgid={b.pid}")
        assert "new one attached" in out
        new = held_prog_ids(agent.proc.pid)
        assert len(new) == 2 and not new & old
        a.do("getppid", 3)  # the old one's target: no longer traced
        b.do("getppid", 4)
        agent.wait(lambda: len(agent.events("x")) == 6, "the new instance's events")
        time.sleep(0.3)
    assert [e["pid"] for e in agent.events("x")] == [a.pid] * 2 + [b.pid] * 4
    row = agent.ps()["x"]
    assert row["set"] == {"target_tgid": str(b.pid)} and row["generation"] == 2
    assert row["output"].endswith("instances/x/events-2.jsonl")


def test_the_watched_folder_loads_replaces_and_unloads(agent: Agent) -> None:
    bundle = agent.manifests / "calls"
    shutil.copytree(CALLS, agent.manifests / ".calls.tmp")
    (agent.manifests / ".calls.tmp").rename(bundle)  # appears whole, as a deploy tool does
    took = agent.wait(lambda: agent.ps().get("calls", {}).get("state") == "running",
                      "the folder's instance", timeout=60)
    print(f"folder add → running in {took:.2f} s")
    held = held_prog_ids(agent.proc.pid)
    assert len(held) == 2
    manifest = bundle / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("test fixture;", "test fixture (v2);"))
    agent.wait(lambda: held_prog_ids(agent.proc.pid) not in (held, set()), "the replacement")
    assert agent.ps()["calls"]["state"] == "running"
    shutil.rmtree(bundle)
    took = agent.wait(lambda: "calls" not in agent.ps(), "the folder's unload")
    print(f"folder remove → unloaded in {took:.2f} s")
    assert held_prog_ids(agent.proc.pid) == set()
    (agent.manifests / "broken.yaml").write_text("kind: ebpfprogram\nname: [\n")
    agent.wait(lambda: "broken.yaml: load failed" in _log(agent), "the broken manifest's error")
    row = agent.ps()["broken"]
    assert row["state"] == "failed" and "broken.yaml" in row["target"], row


def _log(agent: Agent) -> str:
    """What the agent said so far (its stderr, read without blocking)."""
    import select

    text = getattr(agent, "_said", "")
    while select.select([agent.proc.stderr], [], [], 0)[0]:
        line = agent.proc.stderr.readline()
        if not line:
            break
        text += line
    agent._said = text
    return text


def test_clients_without_an_agent_are_told_how_to_start_one(home: Path, tmp_path: Path) -> None:
    out = bpfdepot(home, "ps", "--socket", str(tmp_path / "none.sock"))
    assert out.returncode == 3
    assert "no bpfdepot agent listens on" in out.stderr and "sudo bpfdepot agent" in out.stderr


def _loaded(ids: set[int]) -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                         check=True)
    return ids & {p["id"] for p in json.loads(out.stdout or "[]")}


def _links_of(ids: set[int]) -> list[int]:
    out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True,
                         check=True)
    return sorted(link["prog_id"] for link in json.loads(out.stdout or "[]")
                  if link.get("prog_id") in ids)


def test_a_killed_agent_is_adopted_without_attaching_twice(home: Path, tmp_path: Path) -> None:
    first = start_agent(home, tmp_path)
    with workers("/dev/null", 1) as (w,):
        first.ok("load", str(CALLS), "--name", "a", "--set", f"target_tgid={w.pid}")
        w.do("getppid", 3)
        first.wait(lambda: len(first.events("a")) == 3, "events before the kill")
        progs = held_prog_ids(first.proc.pid)
        links = _links_of(progs)
        assert len(progs) == 2 and len(links) == 2
        first.proc.kill()  # kill -9: no clean-up at all
        first.proc.wait()
        assert _loaded(progs) == progs and _links_of(progs) == links  # pinned: still attached
        w.do("getppid", 4)  # traced while no agent runs: kept in the pinned ring buffer
        second = start_agent(home, tmp_path)
        try:
            row = second.ps()["a"]
            assert row["state"] == "running" and row.get("adopted") and row["pinned"], row
            assert row["set"] == {"target_tgid": str(w.pid)}
            second.wait(lambda: len(second.events("a")) == 7, "the events made meanwhile")
            assert held_prog_ids(second.proc.pid) == progs  # the same programs, held by link
            assert _links_of(progs) == links  # and attached once
            w.do("getppid", 2)
            second.wait(lambda: len(second.events("a")) == 9, "events after the adoption")
            assert [e["seq"] for e in second.events("a")] == list(range(9))
            second.ok("unload", "a")
            assert _loaded(progs) == set() and _links_of(progs) == []
        finally:
            stop_agent(second)


FLOOD = ROOT / "tests" / "kernel" / "bundles" / "perf_lost"  # a 1-page perf buffer: it overflows


def test_a_flooding_instance_loses_nothing_uncounted_across_anothers_load_and_unload(
        agent: Agent) -> None:
    """B floods (getppid in a tight loop through a 1-page perf buffer, for longer than A's lives)
    while A is loaded and unloaded beside it: every call of B's is either delivered or counted
    lost by the kernel at B's channel — A's coming and going costs B nothing uncounted."""
    import threading

    calls = 1_000_000
    out_b = agent.state / "instances" / "b" / "events.jsonl"
    with workers("/dev/null", 2) as (a, b):
        agent.ok("load", str(FLOOD), "--name", "b", "--set", f"target_tgid={b.pid}")
        flood = threading.Thread(target=b.do, args=("getppid", calls))
        flood.start()
        rounds = 0
        while flood.is_alive() or rounds == 0:
            agent.ok("load", str(CALLS), "--name", "a", "--set", f"target_tgid={a.pid}")
            a.do("getppid", 5)
            agent.ok("unload", "a")
            rounds += 1
        flood.join()

        time.sleep(0.5)
        out = agent.ok("unload", "b")  # its final counts, read after detach
    received, lost = (int(x) for x in re.search(
        r"perf_lost/perf_lost_events received (\d+) lost (\d+)", out).groups())
    print(f"flood: {received} delivered, {lost} lost of {calls}; A loaded and unloaded "
          f"{rounds} time(s) meanwhile")
    assert received + lost == calls and lost > 0
    lines = out_b.read_text().splitlines()
    assert len(lines) == received
    assert {json.loads(line)["pid"] for line in lines[:1000]} == {b.pid}
    assert len(agent.events("a")) == 5 * rounds  # each of A's lives got its own 5
