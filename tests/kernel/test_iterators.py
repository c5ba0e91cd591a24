"""Iterators in the running kernel: sockets and threads that exist before the run are listed,
as JSON objects or as text lines, read at start and every interval."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from tests.kernel.conftest import ROOT, Running, bpfdepot, prog_names

TCP_LISTEN, TCP_ESTABLISHED = 10, 1


def _copy(src: Path, tmp_path: Path, manifest: str) -> Path:
    dest = tmp_path / src.name
    shutil.copytree(src, dest)
    (dest / "manifest.yaml").write_text(manifest)
    return dest


def _summary(stderr: str, channel: str) -> tuple[int, int]:
    line = next(x for x in stderr.splitlines() if channel in x)
    received, lost = (int(x) for x in line.split()[1:3])
    return received, lost


def test_tcp_iterator_lists_sockets_opened_before_the_run(home: Path, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                cport = client.getsockname()[1]
                done = Running(home, "bpf/tcp_socks", tmp_path / "socks.jsonl").stop()
    assert done.rc == 0, done.stderr
    def ours(e: dict) -> bool:
        return port in (e["lport"], e["rport"])
    def key(e: dict) -> tuple[int, int]:
        return e["state"], e["lport"]
    mine = sorted((e for e in done.events if ours(e)), key=key)
    base = {"family": 2, "laddr": "127.0.0.1", "uid": os.geteuid(), "label": 0}
    assert mine == sorted([  # read once, at start: each socket exactly once
        {**base, "state": TCP_ESTABLISHED, "lport": port, "rport": cport, "raddr": "127.0.0.1"},
        {**base, "state": TCP_ESTABLISHED, "lport": cport, "rport": port, "raddr": "127.0.0.1"},
        {**base, "state": TCP_LISTEN, "lport": port, "rport": 0, "raddr": "0.0.0.0"},
    ], key=key)
    assert _summary(done.stderr, "tcp_socks/dump_tcp") == (len(done.events), 0)
    assert "dump_tcp" not in prog_names()


def test_text_lines_with_auto_attach_read_every_interval(home: Path, tmp_path: Path) -> None:
    """No attach: (libbpf attaches iter/tcp itself), no format: (text), interval: 200ms."""
    bundle = _copy(ROOT / "bpf" / "tcp_socks", tmp_path, """kind: ebpfprogram
name: tcp_socks
spec:
  programs:
    - {name: tcp_socks, path: file://./tcp_socks.bpf.c, type: ebpf_object}
  channels:
    dump_tcp: {type: iterator, interval: 200ms}
""")
    out = tmp_path / "lines.jsonl"
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        done = bpfdepot(home, "run", str(bundle), "--duration", "1.1", "--output", str(out),
                        "--set", f"targ_lport={port}")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    expect = {"family": 2, "state": TCP_LISTEN, "lport": port, "rport": 0,
              "laddr": "127.0.0.1", "raddr": "0.0.0.0", "uid": os.geteuid(), "label": 0}
    # the knob keeps only our listener: one line per read, at start and then every 200 ms
    assert len(records) >= 3, records
    assert all(set(r) == {"line"} and json.loads(r["line"]) == expect for r in records)
    assert _summary(done.stderr, "tcp_socks/dump_tcp") == (len(records), 0)


THREADS = r"""
import sys, threading
go = threading.Event()
for n in range(2):
    threading.Thread(target=go.wait, name=f"t{n}").start()
print("ready", flush=True)
sys.stdin.readline()
go.set()
"""


def _task_manifest(pid: int, fmt: str) -> str:
    return f"""kind: ebpfprogram
name: task_iter
spec:
  programs:
    - name: task_iter
      path: file://./task_iter.bpf.c
      type: ebpf_object
      attach:
        dump_task: {{iter: {{pid: {pid}}}}}
  channels:
    dump_task: {{type: iterator, format: {fmt}}}
"""


def test_task_iterator_of_one_process_and_lines_that_are_not_json(home: Path,
                                                                   tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", THREADS], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        task = Path(f"/proc/{child.pid}/task")
        expect = sorted(f"{child.pid} {tid} {(task / tid / 'comm').read_text().strip()}"
                        for tid in os.listdir(task))
        assert len(expect) == 3
        source = ROOT / "tests" / "kernel" / "bundles" / "task_iter"
        text = _copy(source, tmp_path / "text", _task_manifest(child.pid, "text"))
        as_json = _copy(source, tmp_path / "json", _task_manifest(child.pid, "json"))
        done = Running(home, str(text), tmp_path / "text.jsonl").stop()
        refused = Running(home, str(as_json), tmp_path / "json.jsonl").stop()
    finally:
        child.stdin.write("\n")
        child.stdin.close()
        child.wait(timeout=30)
    assert done.rc == 0, done.stderr
    assert sorted(e["line"] for e in done.events) == expect  # the threads of that pid only
    assert refused.rc == 0, refused.stderr
    assert refused.events == []  # each line counted, none passed off as a record
    assert _summary(refused.stderr, "task_iter/dump_task") == (0, 0)
    assert "(3 lines that are not JSON objects)" in refused.stderr
    assert "dump_task" not in prog_names()
