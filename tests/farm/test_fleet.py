"""Fleet rollout against a real Ceph radosgw store: two agents on this machine with different
node labels follow it; a deployment for one label loads on that agent only, both report back,
`bpfdepot fleet` shows it, and an undeploy unloads it. The bundle is a plain libbpf program
(tests/kernel/bundles/agent_calls)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.farm.conftest import ROOT, _bucket, cli, farm_env

CALLS = ROOT / "tests" / "kernel" / "bundles" / "agent_calls"


def _agent(env: dict[str, str], tmp: Path, node: str, label: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "builder.cli", "agent", "--socket", str(tmp / f"{node}.sock"),
         "--state", str(tmp / f"{node}-state"), "--pins", f"/sys/fs/bpf/bpfdepot-fleet-{node}",
         "--fleet", "--node-name", node, "--node-label", label, "--fleet-interval", "0.5"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def _until(what: str, test, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = test()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _fleet(env: dict[str, str]) -> dict:
    out = cli(env, "fleet", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    return {(s["node"], s["deployment"]): s for s in doc["nodes"]} | {"_": doc["deployments"]}


def _ps(env: dict[str, str], tmp: Path, node: str) -> dict:
    out = cli(env, "ps", "--json", "--socket", str(tmp / f"{node}.sock"))
    assert out.returncode == 0, out.stderr
    return {r["name"]: r for r in json.loads(out.stdout)}


def test_a_deployment_reaches_the_matching_node_only(redis_service, rgw, tmp_path: Path) -> None:
    env = farm_env(redis_service, rgw, tmp_path / "home", prefix=f"fleet-{uuid.uuid4().hex[:6]}")
    _bucket(env)
    agents = [_agent(env, tmp_path, "node-a", "env=prod"), _agent(env, tmp_path, "node-b", "env=dev")]
    try:
        for node in ("node-a", "node-b"):
            _until(f"{node}'s socket", lambda n=node: (tmp_path / f"{n}.sock").exists())
        bad = cli(env, "deploy", str(CALLS), "--nodes", "label.env")
        assert bad.returncode == 2 and "is not label.KEY=VALUE" in bad.stderr, bad.stderr
        out = cli(env, "deploy", str(CALLS), "--nodes", f"release={os.uname().release},label.env=prod")
        assert out.returncode == 0 and "deployed agent_calls v1" in out.stdout, out.stderr
        status = _until("both nodes' status", lambda: (lambda f: f if (
            f.get(("node-a", "agent_calls"), {}).get("state") == "loaded"
            and f.get(("node-b", "agent_calls"), {}).get("state") == "not-selected") else None)(
            _fleet(env)))
        assert status[("node-a", "agent_calls")]["version"] == 1
        assert status[("node-a", "agent_calls")]["labels"] == {"env": "prod"}
        assert _ps(env, tmp_path, "node-a")["agent_calls"]["state"] == "running"
        assert _ps(env, tmp_path, "node-b") == {}
        table = cli(env, "fleet").stdout
        assert "node-a" in table and "loaded" in table and "not-selected" in table

        out = cli(env, "undeploy", "agent_calls")
        assert out.returncode == 0, out.stderr
        _until("the unload", lambda: _ps(env, tmp_path, "node-a") == {})
        _until("node-a's report", lambda: _fleet(env).get(("node-a", "agent_calls"), {}).get(
            "state") == "removed")
    finally:
        for agent in agents:
            agent.send_signal(signal.SIGTERM)
        for agent in agents:
            _, err = agent.communicate(timeout=60)
            assert agent.returncode == 0, err
