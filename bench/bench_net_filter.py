"""What the process filter costs and saves on the network programs: a C loopback TCP ping-pong
(1-byte request, 1-byte answer, one connection, a forked echo child) run untraced, under a
network program unfiltered, and under the same program filtered to a unit the loop is not in
(``--unit``: each socket or call is judged, then dropped in the kernel). Interleaved in one run;
each ratio is against untraced.

- topology: per send/recv the socket's state (unfiltered); under the filter no state exists, so
  every send/recv judges the socket's cgroup ancestors (CO-RE reads, up to 8 lookups);
- l7: per read/write the fd's socket and the capture (unfiltered: detection, no protocol
  matches); under the filter one ancestor-cgroup walk at each syscall entry, then nothing.

The goal (issue 13's, as bench_filter's): the filtered slowdown is at most half the unfiltered one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import harness
from bench_probes import start, stop
from harness import ROOT, Row

ROUNDS = 50_000
PINGPONG_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
int main(void) {
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);
	char b = 'x';
	if (bind(ls, (void *)&a, sizeof(a)) || listen(ls, 1) || getsockname(ls, (void *)&a, &len))
		return 1;
	pid_t child = fork();
	if (child == 0) {  /* the echo side */
		int c = accept(ls, NULL, NULL);
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		while (read(c, &b, 1) == 1 && write(c, &b, 1) == 1)
			;
		return 0;
	}
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(s, (void *)&a, sizeof(a)))
		return 1;
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < @ROUNDS@; i++)
		if (write(s, &b, 1) != 1 || read(s, &b, 1) != 1)
			return 1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	close(s);
	waitpid(child, NULL, 0);
	printf("%.6f\n", (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	return 0;
}
""".replace("@ROUNDS@", str(ROUNDS))

PROGRAMS = {"topology": ROOT / "bpf" / "topology", "l7": ROOT / "bpf" / "l7"}


def loop(exe: Path) -> float:
    return float(harness.run([str(exe)]).stdout)


def measure(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    with harness.empty_unit("netfilter") as unit:
        if unit is None:
            return [Row(metric="filtered ping-pong", value="skipped: no cgroup2 mount")]
        with harness.scratch("net-filter") as tmp:
            home = tmp / "home"
            src = tmp / "pingpong.c"
            src.write_text(PINGPONG_C)
            exe = harness.gcc(src, tmp / "pingpong")
            for bundle in PROGRAMS.values():
                harness.run([*harness.bpfdepot_exe(), "build", str(bundle)],
                            env=harness.env_for(home), cwd=ROOT)
            loop(exe)  # warm the binary
            for name, bundle in PROGRAMS.items():
                plain, unfiltered, filtered = [], [], []
                for i in range(args.reps):
                    plain.append(loop(exe))
                    p = start(home, bundle, tmp / f"{name}-all-{i}.jsonl")
                    unfiltered.append(loop(exe))
                    stop(p)
                    p = start(home, bundle, tmp / f"{name}-filtered-{i}.jsonl",
                              "--unit", unit.name)
                    filtered.append(loop(exe))
                    stop(p)
                rows += harness.filter_rows(
                    loop=f"{ROUNDS:,} loopback TCP round trips", per="round", count=ROUNDS,
                    traced=f"{name} unfiltered",
                    filtered=f"{name} filtered out in the kernel (--unit, loop not in it)",
                    ratio=f"{name}: filtered slowdown / unfiltered slowdown",
                    plain=plain, traced_xs=unfiltered, filtered_xs=filtered)
    return rows


if __name__ == "__main__":
    sys.exit(harness.main("bench_net_filter", measure, reps=5))
