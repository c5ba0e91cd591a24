"""Real stores for the web view's kernel and browser tests (root: real catalog programs).

- ``topology_exchange(home, tmp)``: ``bpfdepot run bpf/topology --tsdb DB`` while a client
  process named ``ui_client`` sends exactly UP bytes to a server process named ``ui_server`` on
  loopback and reads DOWN back; returns when the run has stopped (the store is complete).
- ``burn_profile(home, tmp)``: ``bpf/cpu_profile`` on the frame-pointer ``burn`` program
  (tests/kernel/test_stacks.py) into a store; its stacks hold ``burn_leaf``.
- ``ui_server(db)``: ``bpfdepot ui --listen 127.0.0.1:0 --db DB`` as a process; ``.url``,
  ``.get_json(path)`` (status, JSON), stopped with SIGTERM at the end of the ``with``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.kernel.conftest import ROOT, Running, cli_env, records

UP, DOWN = 3000, 5000
CLIENT_COMM, SERVER_COMM = "ui_client", "ui_server"

# each side names itself (prctl PR_SET_NAME) before its socket exists, so its edges carry it
_NAME = "import ctypes; ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)\n"
SERVER = "import socket, sys\n" + _NAME + r"""
from tests.kernel.exchange import answer
up, down = int(sys.argv[2]), int(sys.argv[3])
with socket.create_server(("127.0.0.1", 0)) as srv:
    print(srv.getsockname()[1], flush=True)
    answer(srv.accept()[0], up, down)
"""
CLIENT = "import socket, sys\n" + _NAME + r"""
from tests.kernel.exchange import receive
port, up, down = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with socket.create_connection(("127.0.0.1", port)) as s:
    s.sendall(b"u" * up)
    print(receive(s, down), flush=True)
"""


@dataclass(frozen=True)
class Exchange:
    db: Path
    port: int
    client_pid: int
    server_pid: int
    up: int = UP
    down: int = DOWN
    client_comm: str = CLIENT_COMM
    server_comm: str = SERVER_COMM


def topology_exchange(home: Path, tmp: Path, timeout: float = 30.0) -> Exchange:
    """One loopback exchange of UP / DOWN bytes traced by bpf/topology into ``tmp/events.sqlite``."""
    db = tmp / "events.sqlite"
    out = tmp / "topology.jsonl"
    run = Running(home, str(ROOT / "bpf" / "topology"), out, extra=["--tsdb", str(db)])
    try:
        server = subprocess.Popen([sys.executable, "-c", SERVER, SERVER_COMM, str(UP), str(DOWN)],
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT)
        port = int(server.stdout.readline())
        client = subprocess.run([sys.executable, "-c", CLIENT, CLIENT_COMM, str(port), str(UP), str(DOWN)],
                                capture_output=True, text=True, timeout=timeout, check=True, cwd=ROOT)
        assert int(client.stdout) == DOWN
        assert server.wait(timeout=timeout) == 0
        deadline = time.monotonic() + timeout  # edges are read every 5 s
        while not any(r.get("comm") == CLIENT_COMM and r.get("bytes_tx") == UP and r.get("rport") == port
                      for r in records(out)):
            assert time.monotonic() < deadline, f"no client edge for port {port}: {records(out)[-5:]}"
            time.sleep(0.2)
        client_pid = next(r["pid"] for r in records(out) if r.get("comm") == CLIENT_COMM)
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    return Exchange(db=db, port=port, client_pid=client_pid, server_pid=server.pid)


@dataclass(frozen=True)
class Profile:
    db: Path
    pid: int
    comm: str = "burn"


def burn_profile(home: Path, tmp: Path, seconds: float = 2.0) -> Profile:
    """bpf/cpu_profile on the ``burn`` program (burn_mid → burn_leaf) into ``tmp/events.sqlite``."""
    from tests.kernel.test_stacks import run_burn

    db = tmp / "events.sqlite"
    pid, done = run_burn(home, tmp, ROOT / "bpf" / "cpu_profile", seconds, extra=("--tsdb", str(db)))
    assert done.rc == 0, done.stderr
    return Profile(db=db, pid=pid)


class UiProcess:
    """A running ``bpfdepot ui``."""

    def __init__(self, proc: subprocess.Popen, url: str) -> None:
        self.proc, self.url = proc, url

    def get_json(self, path: str, timeout: float = 60.0) -> tuple[int, dict]:
        """(status, JSON) of ``path``; a 503 "building" (the first summing of the store) is
        retried as a page does, up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + path, timeout=30) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as err:
                answer = json.loads(err.read())
                if err.code != 503 or "building" not in answer or time.monotonic() > deadline:
                    return err.code, answer
            time.sleep(0.2)


@contextlib.contextmanager
def ui_server(db: Path, agent_socket: Path | None = None, home: Path | None = None) -> Iterator[UiProcess]:
    """``bpfdepot ui`` on a free loopback port over ``db``; SIGTERM at the end."""
    args = [sys.executable, "-m", "builder.cli", "ui", "--listen", "127.0.0.1:0", "--db", str(db)]
    if agent_socket is not None:
        args += ["--agent-socket", str(agent_socket)]
    env = cli_env(home or db.parent)
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if "serving http://" not in line:
            proc.kill()
            raise AssertionError(f"bpfdepot ui did not start: {line}{proc.stderr.read()}")
        yield UiProcess(proc, line.split("serving ")[1].split("/ ")[0].rstrip("/"))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@dataclass
class AgentUi:
    """``bpfdepot agent --ui 127.0.0.1:0`` on the test's folders."""

    home: Path
    proc: subprocess.Popen
    socket: Path
    url: str

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "builder.cli", *args, "--socket", str(self.socket)],
                              cwd=ROOT, env=cli_env(self.home), capture_output=True, text=True, timeout=120,
                              check=False)

    def get_json(self, path: str) -> tuple[int, dict]:
        return UiProcess(self.proc, self.url).get_json(path)


@contextlib.contextmanager
def agent_ui(home: Path, tmp: Path, db: Path | None = None) -> Iterator[AgentUi]:
    """An agent serving the web view (its instances in-process); unloads all at the end."""
    import select

    sock, state = tmp / "agent.sock", tmp / "state"
    pins = f"/sys/fs/bpf/bpfdepot-uitest-{tmp.name.replace('.', '_')}"
    proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "agent", "--socket", str(sock),
                             "--state", str(state), "--pins", pins, "--ui", "127.0.0.1:0",
                             "--ui-db", str(db or tmp / "events.sqlite")],
                            cwd=ROOT, env=cli_env(home), stderr=subprocess.PIPE, text=True)
    seen, url = "", None
    deadline = time.monotonic() + 60
    try:
        while url is None or "listening on" not in seen:
            assert proc.poll() is None and time.monotonic() < deadline, f"agent did not start: {seen}"
            if select.select([proc.stderr], [], [], 1)[0]:
                line = proc.stderr.readline()
                seen += line
                if "web view on " in line:
                    url = line.split("web view on ")[1].strip().rstrip("/")
        yield AgentUi(home, proc, sock, url)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
