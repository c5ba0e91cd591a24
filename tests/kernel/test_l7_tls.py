"""bpf/l7/tls.yaml in the running kernel: HTTP/1 inside TLS seen as plaintext through OpenSSL's
uprobes and parsed by the L7 processor — Python's ``ssl`` (SSL_write_ex / SSL_read_ex), openssl
s_client / s_server (SSL_write / SSL_read), and an s_client whose libssl.so.3 is a copy made
after the run started (the uprobe attach kind's ``follow``). Certificates are made here with
``openssl req -x509``; every exchange is on 127.0.0.1 and records are filtered by its pid."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import ROOT, Running
from tests.kernel.monitor import received, workers
from tests.kernel.test_attach import link_progs_named

TLS = ROOT / "bpf" / "l7" / "tls.yaml"
SSL_LIBS = ("libssl.so.3", "libcrypto.so.3")

if not shutil.which("openssl"):
    pytest.skip("needs the openssl command (Debian openssl)", allow_module_level=True)

# A TLS server thread answering one GET after 50 ms and a client calling it, in one process;
# then the same request in plain HTTP (which l7_tls must not see).
PY_TLS = r"""
import socket, ssl, sys, threading, time
cert, key = sys.argv[1], sys.argv[2]
def serve(ls, wrap):
    conn, _ = ls.accept()
    s = wrap(conn) if wrap else conn
    s.recv(4096)
    time.sleep(0.05)
    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    s.close()
def call(path, tls):
    ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain(cert, key)
    wrap = (lambda c: sctx.wrap_socket(c, server_side=True)) if tls else None
    t = threading.Thread(target=serve, args=(ls, wrap)); t.start()
    c = socket.create_connection(ls.getsockname())
    if tls:
        c = ssl.create_default_context(cafile=cert).wrap_socket(c, server_hostname="localhost")
    if tls:
        print(ls.getsockname()[1], c.getsockname()[1], flush=True)  # server port, client port
    c.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    reply = b""
    while not reply.endswith(b"ok"):
        reply += c.recv(4096)
    c.close(); t.join(); ls.close()
    assert reply.startswith(b"HTTP/1.1 200 OK"), reply
call("/secret-path", True)
call("/plain-path", False)
"""


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls-cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def records(events: list[dict], pid: int) -> list[dict]:
    return [e for e in events if e.get("pid") == pid]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_links(program: str, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while link_progs_named(program) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{program} has {link_progs_named(program)} links, not {count}")
        time.sleep(0.2)


class SServer:
    """``openssl s_server`` that echoes the client's request to its stdout and answers with
    what the test writes to its stdin (its own SSL_read / SSL_write)."""

    def __init__(self, cert: tuple[Path, Path], port: int) -> None:
        self.proc = subprocess.Popen(
            ["openssl", "s_server", "-quiet", "-accept", f"127.0.0.1:{port}", "-naccept", "1",
             "-cert", str(cert[0]), "-key", str(cert[1])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _in_proc_net(port):
            assert time.monotonic() < deadline, "s_server did not listen"
            time.sleep(0.05)

    def answer_when(self, seen: bytes, reply: bytes, timeout: float = 10) -> None:
        got = b""
        deadline = time.monotonic() + timeout
        os.set_blocking(self.proc.stdout.fileno(), False)
        while seen not in got:
            assert time.monotonic() < deadline, f"s_server never read {seen!r}: {got!r}"
            chunk = self.proc.stdout.read(4096)
            got += chunk or b""
            time.sleep(0.02)
        self.proc.stdin.write(reply)
        self.proc.stdin.flush()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def _in_proc_net(port: int) -> bool:
    """A listening socket on ``port`` (without connecting: s_server takes one connection)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            return True
    return False


def s_client(cert: tuple[Path, Path], port: int, env: dict[str, str] | None = None
             ) -> subprocess.Popen:
    return subprocess.Popen(["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{port}",
                             "-CAfile", str(cert[0]), "-servername", "localhost"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)


REQUEST = b"GET /secret-path HTTP/1.1\r\nHost: localhost\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def exchange(server: SServer, client: subprocess.Popen) -> None:
    """The client's GET, the server's answer, the client reads it; then both end."""
    client.stdin.write(REQUEST)
    client.stdin.flush()
    server.answer_when(b"/secret-path", RESPONSE)
    out = b""
    deadline = time.monotonic() + 10
    os.set_blocking(client.stdout.fileno(), False)
    while not out.endswith(b"ok"):
        assert time.monotonic() < deadline, f"s_client got {out!r}"
        out += client.stdout.read(4096) or b""
        time.sleep(0.02)
    server.stop()
    client.kill()
    client.wait(timeout=10)


def test_python_ssl_client_and_server_records_with_the_plaintext_path(
        home: Path, tmp_path: Path, cert: tuple[Path, Path]) -> None:
    run = Running(home, str(TLS), tmp_path / "calls.jsonl")
    try:
        py = subprocess.Popen([sys.executable, "-c", PY_TLS, str(cert[0]), str(cert[1])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = py.communicate(timeout=60)
        assert py.returncode == 0, err
        server_port, client_port = out.split()
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    pid = py.pid
    by_role = {e["role"]: e for e in records(done.events, pid)}
    assert sorted(by_role) == ["client", "server"], records(done.events, pid)
    for role, e in by_role.items():
        assert (e["protocol"], e["tls"], e["method"], e["path"], e["status"]) == \
            ("http1", True, "GET", "/secret-path", 200), e
        assert "error" not in e
        assert e["resp_size"] == len(RESPONSE)
        assert e["req_size"] == len(b"GET /secret-path HTTP/1.1\r\nHost: localhost\r\n\r\n")
    # the peer from the socket read inside SSL_read_ex (no OpenSSL offsets)
    assert by_role["client"]["peer"] == f"127.0.0.1:{server_port}"
    assert by_role["server"]["peer"] == f"127.0.0.1:{client_port}"
    assert by_role["client"]["latency_us"] >= 50_000  # the server's 50 ms
    assert by_role["client"]["label"] == by_role["server"]["label"] == 0  # no filter asked for
    assert not [e for e in done.events if e.get("path") == "/plain-path"]  # no TLS, not ours


def test_openssl_s_client_and_s_server_use_ssl_write_and_ssl_read(
        home: Path, tmp_path: Path, cert: tuple[Path, Path]) -> None:
    run = Running(home, str(TLS), tmp_path / "calls.jsonl")
    try:
        port = free_port()
        server = SServer(cert, port)
        client = s_client(cert, port)
        exchange(server, client)
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    for pid, role in ((client.pid, "client"), (server.proc.pid, "server")):
        mine = records(done.events, pid)
        assert [(e["protocol"], e["role"], e["tls"], e["path"], e["status"], e["comm"])
                for e in mine] == [("http1", role, True, "/secret-path", 200, "openssl")], mine
        assert mine[0]["peer"].startswith("127.0.0.1:"), mine
    assert records(done.events, client.pid)[0]["peer"] == f"127.0.0.1:{port}"


def test_a_libssl_copy_loaded_after_the_start_is_followed(
        home: Path, tmp_path: Path, cert: tuple[Path, Path]) -> None:
    run = Running(home, str(TLS), tmp_path / "calls.jsonl")
    try:
        before = link_progs_named("ssl_write")
        lib = tmp_path / "lib"  # made after the run attached: no scan at start can know it
        lib.mkdir()
        for name in SSL_LIBS:
            shutil.copy(Path("/usr/lib/x86_64-linux-gnu") / name, lib / name)
        port = free_port()
        server = SServer(cert, port)  # the system libssl
        client = s_client(cert, port, env=dict(os.environ, LD_LIBRARY_PATH=str(lib)))
        maps = Path(f"/proc/{client.pid}/maps").read_text()
        deadline = time.monotonic() + 10
        while f"{lib}/libssl.so.3" not in maps:  # the dynamic loader may not be done yet
            assert time.monotonic() < deadline, maps
            time.sleep(0.05)
            maps = Path(f"/proc/{client.pid}/maps").read_text()
        assert "/usr/lib/x86_64-linux-gnu/libssl.so.3" not in maps
        wait_links("ssl_write", before + 1)  # the watcher's rescan probed the copy
        wait_links("ssl_read_ret", before + 1)
        exchange(server, client)
    finally:
        done = run.stop()
    assert done.rc == 0, done.stderr
    mine = records(done.events, client.pid)
    assert [(e["role"], e["tls"], e["path"], e["status"], e["peer"]) for e in mine] == \
        [("client", True, "/secret-path", 200, f"127.0.0.1:{port}")], mine
    assert f"uprobe l7_tls:ssl_write attached to {lib}/libssl.so.3 (pid {client.pid})" \
        in done.stderr
    assert link_progs_named("ssl_write") == 0 and link_progs_named("ssl_read_ex_ret") == 0


def test_the_filter_keeps_the_units_tls_calls_labelled(home: Path, tmp_path: Path,
                                                       cert: tuple[Path, Path],
                                                       tree: dict[str, Path]) -> None:
    """SSL_write* and SSL_read* judge their caller at entry: the PY_TLS exchange (a client and
    a server in one process) run by a worker in the unit's child cgroup gives its two records,
    labelled 1; the same exchange by a worker in the other service gives none."""
    ops = ("def tls(n):\n"  # PY_TLS's own print (the ports) must not reach the worker's stdout
           "    import contextlib, io, sys\n"
           f"    sys.argv = ['tls', {str(cert[0])!r}, {str(cert[1])!r}]\n"
           "    for _ in range(n):\n"
           "        with contextlib.redirect_stdout(io.StringIO()):\n"
           f"            exec({PY_TLS!r}, {{'__name__': 'tls'}})\n")
    with workers("/dev/null", 2, ops=ops) as (inside, outside):
        inside.move(tree["child"])
        outside.move(tree["other"])
        run = Running(home, str(TLS), tmp_path / "calls.jsonl",
                      extra=["--unit", tree["unit"].name])
        try:
            inside.do("tls", 1)
            outside.do("tls", 1)
        finally:
            done = run.stop()
    assert done.rc == 0, done.stderr
    calls = [e for e in done.events if "protocol" in e]
    assert sorted((e["role"], e["pid"], e["label"], e["path"], e["tls"]) for e in calls) == [
        ("client", inside.pid, 1, "/secret-path", True),
        ("server", inside.pid, 1, "/secret-path", True)], calls
    assert received(done, "l7_tls/l7_events") == (2, 0)
