"""What lock tracing costs the traced workload: (1) a futex ping-pong (two threads handing two
semaphores back and forth: every round is 2 futex waits and 2 wakes) under bpf/lockstat, and
(2) a loop of POSIX lock/unlock calls (fcntl F_SETLK) under bpf/filelock (an event per call,
the default), each run untraced, under bpfdepot and under bpftrace 0.17 running the equivalent
script, interleaved in one run. Ratios are against untraced."""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import harness
from bench_probes import start, stop
from harness import ROOT, Row, median, paired

ROUNDS = 100_000
PINGPONG_C = r"""
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <time.h>
static sem_t a, b;
static void *pong(void *arg) {
	for (int i = 0; i < %d; i++) { sem_wait(&b); sem_post(&a); }
	return arg;
}
int main(void) {
	pthread_t t; struct timespec t0, t1;
	sem_init(&a, 0, 0); sem_init(&b, 0, 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	pthread_create(&t, NULL, pong, NULL);
	for (int i = 0; i < %d; i++) { sem_post(&b); sem_wait(&a); }
	pthread_join(t, NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%%.6f\n", (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	return 0;
}
""" % (ROUNDS, ROUNDS)

LOCKS = 100_000
SETLK_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
	struct flock l = { .l_whence = SEEK_SET };
	struct timespec t0, t1;
	int fd = open(argv[1], O_RDWR);
	if (fd < 0) return 1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < %d; i++) {
		l.l_type = F_WRLCK; if (fcntl(fd, F_SETLK, &l)) return 1;
		l.l_type = F_UNLCK; if (fcntl(fd, F_SETLK, &l)) return 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%%.6f\n", (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	return 0;
}
""" % LOCKS

# bpftrace equivalents: the same tracepoints, a start time per thread, the same histograms,
# and the same per-call output (lockstat: futex waits >= 10 ms; filelock: every call)
LOCKSTAT_BT = r"""
tracepoint:syscalls:sys_enter_futex
/ (args->op & ~384) == 0 || (args->op & ~384) == 9 || (args->op & ~384) == 6 ||
  (args->op & ~384) == 13 || (args->op & ~384) == 11 /
{ @start[tid] = nsecs; @uaddr[tid] = args->uaddr; }
tracepoint:syscalls:sys_exit_futex /@start[tid]/ {
  if (args->ret == 0) {
    $us = (nsecs - @start[tid]) / 1000;
    @futex_us[pid, @uaddr[tid]] = hist($us);
    if ($us >= 10000) { printf("%d %d %s %lu %lu\n", pid, tid, comm, @uaddr[tid], $us); }
  }
  delete(@start[tid]); delete(@uaddr[tid]);
}
tracepoint:lock:contention_begin { @lstart[tid] = nsecs; @lock[tid] = args->lock_addr; @lflags[tid] = args->flags; }
tracepoint:lock:contention_end /@lstart[tid]/ {
  @lock_ns[@lock[tid], kstack(6), @lflags[tid]] = hist(nsecs - @lstart[tid]);
  delete(@lstart[tid]); delete(@lock[tid]); delete(@lflags[tid]);
}
"""
FILELOCK_BT = r"""
tracepoint:syscalls:sys_enter_fcntl /args->cmd == 6 || args->cmd == 7 || args->cmd == 37 || args->cmd == 38/
{ @start[tid] = nsecs; }
tracepoint:syscalls:sys_enter_flock { @start[tid] = nsecs; }
tracepoint:filelock:fcntl_setlk /@start[tid]/ { @ino[tid] = args->i_ino; @type[tid] = args->type; }
tracepoint:syscalls:sys_exit_fcntl, tracepoint:syscalls:sys_exit_flock /@start[tid]/ {
  $ns = nsecs - @start[tid];
  printf("%d %d %s %lu %d %d %lu\n", pid, tid, comm, @ino[tid], @type[tid], args->ret, $ns);
  @wait_us = hist($ns / 1000);
  delete(@start[tid]); delete(@ino[tid]); delete(@type[tid]);
}
"""


def loop(cmd: list[str]) -> float:
    return float(harness.run(cmd).stdout)


def with_bpftrace(cmd: list[str], script: Path, out: Path) -> float:
    p = subprocess.Popen(["bpftrace", "-o", str(out), str(script)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while "Attaching" not in (out.read_text() if out.exists() else ""):
        if time.monotonic() > deadline:
            raise SystemExit("bpftrace did not attach")
        time.sleep(0.05)
    time.sleep(0.5)  # bpftrace prints the line before its probes are all attached
    seconds = loop(cmd)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=60)
    return seconds


def one(name: str, cmd: list[str], bundle: Path, bt: str, calls: int, tmp: Path, reps: int,
        home: Path) -> list[Row]:
    script = tmp / f"{name}.bt"
    script.write_text(bt)
    loop(cmd)
    plain, ours, theirs, lost = [], [], [], []
    for i in range(reps):
        plain.append(loop(cmd))
        p = start(home, bundle, tmp / f"{name}-{i}.jsonl")
        ours.append(loop(cmd))
        err = stop(p)
        lost.append(sum(int(x.split()[2]) for x in err.splitlines()
                        if x.strip().startswith(f"{bundle.name}/")))
        theirs.append(with_bpftrace(cmd, script, tmp / f"{name}-{i}.bt.out"))
    ns = lambda xs: (median(xs) - median(plain)) / calls * 1e9  # noqa: E731
    return [Row(metric=f"{name}: {bundle.name} attached", value=f"{median(ours) * 1e3:.0f} ms "
                f"(+{ns(ours):.0f} ns/call, lost {max(lost)})",
                baseline=f"{median(plain) * 1e3:.0f} ms untraced", ratio=paired(ours, plain)),
            *harness.anchor_rows(bundle.name, plain, ours, theirs,
                                 lambda xs: f" (+{ns(xs):.0f} ns/call)")]


def measure(args: argparse.Namespace) -> list[Row]:
    if not shutil.which("bpftrace"):
        return [Row(metric="bpftrace equivalent", value="skipped: bpftrace not installed")]
    with harness.scratch("locks") as tmp:
        home = tmp / "home"
        src = tmp / "pingpong.c"
        src.write_text(PINGPONG_C)
        pp = harness.gcc(src, tmp / "pingpong", "-pthread")
        sl = tmp / "setlk.c"
        sl.write_text(SETLK_C)
        sl_exe = harness.gcc(sl, tmp / "setlk")
        data = tmp / "locked"
        data.write_bytes(b"")
        for b in ("lockstat", "filelock"):
            harness.run([*harness.bpfdepot_exe(), "build", str(ROOT / "bpf" / b)],
                        env=harness.env_for(home), cwd=ROOT)
        rows = one(f"{ROUNDS:,} futex ping-pong rounds (one CPU)", ["taskset", "-c", "1", str(pp)], ROOT / "bpf" / "lockstat",
                   LOCKSTAT_BT, 2 * ROUNDS, tmp, args.reps, home)
        rows += one(f"{LOCKS:,} × F_SETLK lock+unlock", [str(sl_exe), str(data)],
                    ROOT / "bpf" / "filelock", FILELOCK_BT, 2 * LOCKS, tmp, args.reps, home)
    return rows


if __name__ == "__main__":
    sys.exit(harness.main("bench_locks", measure, reps=5))
