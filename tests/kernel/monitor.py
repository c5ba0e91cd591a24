"""Helpers for testing a program under the process filter (`bpfdepot run --unit/--cgroup/--pid`):
a unit-like cgroup2 tree, worker processes that make known numbers of calls on order, and the
channel counts of a finished run (what the filter drops never reaches user space)."""

from __future__ import annotations

import contextlib
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.kernel.conftest import Finished, Running

# A process that waits for orders on stdin ("OP N"), runs OPS[OP](N) and answers "done". It says
# "ready" once Python has started, so the calls of its own start-up happen before the test moves
# it into a cgroup and are never counted. A test adds its own operations as Python source
# defining functions of one argument (the count); their names become operations.
WORKER = """
import os, sys, time
path = sys.argv[1]

def open(n):
    for _ in range(n):
        os.close(os.open(path, os.O_RDONLY))

def getppid(n):
    for _ in range(n):
        os.getppid()

def sleep(n):
    for _ in range(n):
        time.sleep(0.002)

exec(sys.argv[2])
OPS = {k: v for k, v in globals().items() if callable(v) and not k.startswith("_")}
print("ready", flush=True)
for line in sys.stdin:
    op, n = line.split()
    OPS[op](int(n))
    print("done", flush=True)
"""


class Worker:
    """One worker process; ``ops`` is extra Python source defining more operations."""

    def __init__(self, path: Path | str = "/dev/null", ops: str = "") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(path), ops], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline().strip() == "ready"
        self.pid = self.proc.pid

    def do(self, op: str, n: int) -> None:
        self.proc.stdin.write(f"{op} {n}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def move(self, cgroup: Path) -> None:
        (cgroup / "cgroup.procs").write_text(str(self.pid))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def workers(path: Path | str, count: int, ops: str = "") -> Iterator[list[Worker]]:
    made = [Worker(path, ops) for _ in range(count)]
    try:
        yield made
    finally:
        for w in made:
            w.close()


def received(done: Finished, channel: str) -> tuple[int, int]:
    """(received, lost) of ``program/channel`` from the run's summary."""
    line = next(x for x in done.stderr.splitlines() if channel in x)
    got, lost = (int(x) for x in line.split()[1:3])
    return got, lost


def said(run: Running, text: str, timeout: float = 10.0) -> None:
    """Read the run's stderr until a line holds ``text`` (the filter says each change)."""
    deadline = time.monotonic() + timeout
    while text not in run.stderr:
        assert time.monotonic() < deadline, f"the run never said {text!r}:\n{run.stderr}"
        ready, _, _ = select.select([run.proc.stderr], [], [], 0.5)
        if ready:
            run.stderr += run.proc.stderr.readline()


@contextlib.contextmanager
def unit_run(home: Path, tree: dict[str, Path], bundle: str, out: Path,
             path: Path | str = "/dev/null", ops: str = "", where: str = "child",
             extra: tuple[str, ...] | list[str] = ()) -> Iterator[tuple[Worker, Worker, Running]]:
    """Two workers, one in ``tree[where]`` (the unit or its child) and one in the other
    service, and a run of ``bundle`` filtered to the unit; yields (inside, outside, run) and,
    when the block ends, stops the run: its Finished is ``run.done``."""
    with workers(path, 2, ops) as (inside, outside):
        inside.move(tree[where])
        outside.move(tree["other"])
        run = Running(home, bundle, out, extra=["--unit", tree["unit"].name, *extra])
        try:
            yield inside, outside, run
        finally:
            run.done = run.stop()
