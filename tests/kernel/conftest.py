"""Kernel tests: root only; real programs in the running kernel, events triggered here."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

if os.geteuid() != 0:
    pytest.skip("kernel tests load BPF programs: run them as root", allow_module_level=True)
if not shutil.which("clang"):
    pytest.skip("kernel tests build their programs: clang is not installed (scripts/setup)",
                allow_module_level=True)


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the session, so programs are compiled once."""
    return tmp_path_factory.mktemp("bpfdepot-home")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, BPFDEPOT_HOME=str(home))
    env.update(extra)
    return env


def bpfdepot(home: Path, *args: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder.cli", *args], cwd=ROOT,
                          env=env or cli_env(home), capture_output=True, text=True, timeout=timeout)


@dataclass
class Finished:
    rc: int
    stderr: str
    events: list[dict]


class Running:
    """`bpfdepot run` in the background, events to a file, stopped with SIGINT."""

    def __init__(self, home: Path, bundle: str, out: Path, env: dict[str, str] | None = None,
                 extra: list[str] | None = None) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "builder.cli", "run", bundle, "--output", str(out), *(extra or [])],
            cwd=ROOT, env=env or cli_env(home), stderr=subprocess.PIPE, text=True)
        self.stderr = ""
        deadline = time.monotonic() + 120
        while "attached" not in self.stderr:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                rest = self.proc.stderr.read() if self.proc.poll() is not None else ""
                self.proc.kill()
                raise AssertionError(f"bpfdepot run did not attach:\n{self.stderr}{rest}")
            ready, _, _ = select.select([self.proc.stderr], [], [], 1)
            if ready:
                self.stderr += self.proc.stderr.readline()

    def stop(self) -> Finished:
        time.sleep(0.3)  # let the last events reach the ring buffer reader
        self.proc.send_signal(signal.SIGINT)
        _, rest = self.proc.communicate(timeout=30)
        lines = self.out.read_text().splitlines() if self.out.exists() else []
        return Finished(rc=self.proc.returncode, stderr=self.stderr + rest,
                        events=[json.loads(line) for line in lines])


def prog_names() -> set[str]:
    """Names of every BPF program loaded in the kernel now."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True)
    return {p.get("name", "") for p in json.loads(out.stdout or "[]")}


def link_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True, check=True)
    return {link["prog_id"] for link in json.loads(out.stdout or "[]") if "prog_id" in link}


def records(out: Path) -> list[dict]:
    """The complete JSON lines a run has written to ``out`` so far."""
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.endswith("}")]


def wait_for(out: Path, test, what: str, timeout: float = 10.0) -> list[dict]:
    """Poll a run's output file until ``test(records)`` holds; the records then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = records(out)
        if test(found):
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {records(out)[-10:]}")


@contextlib.contextmanager
def cgroup2_dirs(tag: str, count: int = 1) -> Iterator[list[Path]]:
    """``count`` fresh cgroup2 directories under the cgroup2 mount (found in /proc/self/mounts;
    /sys/fs/cgroup/unified on a hybrid host); at the end their processes go back to the root
    and the directories are removed. Skips the test on a host without cgroup2."""
    from loader.attach.cgroup import cgroup2_mounts

    mounts = cgroup2_mounts()
    if not mounts:
        pytest.skip("no cgroup2 mount on this host")
    paths = [mounts[0] / f"bpfdepot-{tag}-{os.getpid()}-{i}" for i in range(count)]
    for path in paths:
        path.mkdir()
    try:
        yield paths
    finally:
        for path in paths:
            for pid in (path / "cgroup.procs").read_text().split():
                (mounts[0] / "cgroup.procs").write_text(pid)
            path.rmdir()


def held_prog_ids(pid: int) -> set[int]:
    """Ids of the BPF programs (and links' programs) process ``pid`` holds open now, from the
    prog_id lines of its fds' fdinfo: a run's own programs, whatever other runs load."""
    ids = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue  # closed meanwhile
        ids |= {int(line.split()[1]) for line in text.splitlines() if line.startswith("prog_id:")}
    return ids


@pytest.fixture
def tree() -> Iterator[dict[str, Path]]:
    """<cgroup2>/bpfdepot-mon-PID.slice/{shop-api-PID.service/worker, other-PID.service}; the
    names carry this test's pid so a unit name matches nothing another run made."""
    from loader.attach.cgroup import cgroup2_mounts

    mounts = cgroup2_mounts()
    if not mounts:
        pytest.skip("no cgroup2 mount on this host")
    tag = f"{os.getpid()}-{time.monotonic_ns() % 100000}"
    slice_ = mounts[0] / f"bpfdepot-mon-{tag}.slice"
    paths = {"unit": slice_ / f"shop-api-{tag}.service", "other": slice_ / f"other-{tag}.service"}
    paths["child"] = paths["unit"] / "worker"
    made = [slice_, paths["unit"], paths["child"], paths["other"]]
    for path in made:
        path.mkdir()
    try:
        yield paths
    finally:
        for path in reversed(made):
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):  # it may have exited meanwhile
                    (mounts[0] / "cgroup.procs").write_text(pid)
            path.rmdir()
