"""What L7 capture costs: an HTTP/1.1 keep-alive load on loopback (a small C server, a C client
with a few connections, 20,000 requests by default), its throughput untraced, with ``bpf/l7``
capturing (every process, both roles, records parsed by the C processor into a file), and with
the anchor, bpftrace 0.17 running an equivalent syscall-tracepoint script (read/write, request
and response told apart by their first bytes, one printf per call and role). Interleaved per
repetition, baseline first.

    throughput  = requests / the client's own seconds; ratio = traced / untraced (goal ≥ 0.9×)
    records     = l7's records of this load, per role (goal: = requests each, 0 lost)

The bpftrace script is cheaper than l7 in what it checks (no socket check, no peer, no copy,
no parse). A third run attaches l7 with ``targ_pid=1``: every syscall tracepoint fires and each
call is filtered out at entry, so its ratio is what attaching syscall tracepoints alone costs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import harness
from harness import ROOT, Row, median, paired

SERVER_C = r"""
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello";
static void *serve(void *arg) {
	int fd = (int)(long)arg, one = 1;
	char buf[4096];
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	while (read(fd, buf, sizeof(buf)) > 0)
		if (write(fd, resp, sizeof(resp) - 1) < 0)
			break;
	close(fd);
	return NULL;
}
int main(void) {
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
	socklen_t len = sizeof(a);
	int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(s, (void *)&a, sizeof(a)) || listen(s, 64) || getsockname(s, (void *)&a, &len))
		return 1;
	printf("%d\n", ntohs(a.sin_port));
	fflush(stdout);
	for (;;) {
		pthread_t t;
		int c = accept(s, NULL, NULL);
		if (c < 0)
			return 1;
		pthread_create(&t, NULL, serve, (void *)(long)c);
		pthread_detach(t);
	}
}
"""

CLIENT_C = r"""
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static const char req[] = "GET /bench HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: l7bench\r\n\r\n";
#define RESP_LEN 69 /* the server's response, bytes */
static int port, per;
static void *run(void *arg) {
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001),
				.sin_port = htons(port)};
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	char buf[4096];
	(void)arg;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (void *)&a, sizeof(a)))
		exit(2);
	for (int i = 0; i < per; i++) {
		int got = 0;
		if (write(fd, req, sizeof(req) - 1) != sizeof(req) - 1)
			exit(3);
		while (got < RESP_LEN) {
			int n = read(fd, buf, sizeof(buf));
			if (n <= 0)
				exit(4);
			got += n;
		}
	}
	close(fd);
	return NULL;
}
int main(int argc, char **argv) {
	int conns = atoi(argv[2]);
	pthread_t t[64];
	struct timespec s, e;
	port = atoi(argv[1]);
	per = atoi(argv[3]) / conns;
	clock_gettime(CLOCK_MONOTONIC, &s);
	for (int i = 0; i < conns; i++)
		pthread_create(&t[i], NULL, run, NULL);
	for (int i = 0; i < conns; i++)
		pthread_join(t[i], NULL);
	clock_gettime(CLOCK_MONOTONIC, &e);
	printf("%.6f\n", (e.tv_sec - s.tv_sec) + (e.tv_nsec - s.tv_nsec) / 1e9);
	return 0;
}
"""

# The same pairing with bpftrace: a request is a read/write starting "GET /ben", a response one
# starting "HTTP/1.1"; the side that wrote the request is the client. One printf per call.
BPFTRACE = r"""
tracepoint:syscalls:sys_enter_read { @rbuf[tid] = args->buf; @rfd[tid] = args->fd; }
tracepoint:syscalls:sys_exit_read /@rbuf[tid]/ {
	if (args->ret > 0) {
		$p = str(@rbuf[tid], 8);
		$k = ((uint64)pid << 32) | @rfd[tid];
		if ($p == "GET /ben") { @srv[$k] = nsecs; }
		if ($p == "HTTP/1.1" && @cli[$k]) {
			printf("client %d %d %d\n", pid, @rfd[tid], (nsecs - @cli[$k]) / 1000);
			delete(@cli[$k]);
		}
	}
	delete(@rbuf[tid]); delete(@rfd[tid]);
}
tracepoint:syscalls:sys_enter_write {
	$p = str(args->buf, 8);
	$k = ((uint64)pid << 32) | args->fd;
	if ($p == "GET /ben") { @cli[$k] = nsecs; }
	if ($p == "HTTP/1.1" && @srv[$k]) {
		printf("server %d %d %d\n", pid, args->fd, (nsecs - @srv[$k]) / 1000);
		delete(@srv[$k]);
	}
}
END { clear(@rbuf); clear(@rfd); clear(@cli); clear(@srv); }
"""


def load(client: Path, port: int, conns: int, requests: int) -> float:
    """Requests per second of one load run (the client's own clock)."""
    seconds = float(harness.run([str(client), str(port), str(conns), str(requests)],
                                timeout=600).stdout)
    return requests / seconds


def with_l7(home: Path, out: Path, client: Path, port: int, conns: int,
            requests: int, extra: tuple[str, ...] = ()) -> tuple[float, int, int, int]:
    """(req/s, client records, server records, lost) with bpf/l7 capturing every process."""
    out.unlink(missing_ok=True)
    p = subprocess.Popen([*harness.bpfdepot_exe(), "run", "bpf/l7", "-o", str(out), *extra],
                         stderr=subprocess.PIPE, text=True, env=harness.env_for(home), cwd=ROOT)
    harness.wait_for_line(p, p.stderr, "attached", "bpfdepot run bpf/l7")
    rps = load(client, port, conns, requests)
    time.sleep(1.0)  # let the processor drain
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    if p.returncode != 0:
        raise SystemExit(f"bench: bpfdepot run failed ({p.returncode}):\n{err}")
    lost = sum(int(m) for m in re.findall(r"l7_events\s+\d+\s+(\d+)", err))
    roles = {"client": 0, "server": 0}
    for line in out.read_text().splitlines():
        r = json.loads(line)
        if r.get("path") == "/bench":
            roles[r["role"]] += 1
    return rps, roles["client"], roles["server"], lost


def with_bpftrace(script: Path, out: Path, client: Path, port: int, conns: int,
                  requests: int) -> tuple[float, int]:
    """(req/s, printed calls) with the bpftrace script attached."""
    with out.open("w") as f:
        p = subprocess.Popen(["bpftrace", "-B", "full", str(script)], stdout=f,
                             stderr=subprocess.PIPE, text=True)
        for _ in range(600):  # "Attaching N probes..." comes before they are attached
            time.sleep(0.05)
            if out.stat().st_size:
                break
        time.sleep(1.0)
        rps = load(client, port, conns, requests)
        time.sleep(0.5)
        for _ in range(3):  # bpftrace 0.17 here sometimes ignores one SIGINT: ask again
            p.send_signal(signal.SIGINT)
            try:
                p.communicate(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            p.kill()
            p.communicate()
    return rps, sum(1 for line in out.read_text().splitlines()
                    if line.startswith(("client ", "server ")))


def measure(args: argparse.Namespace) -> list[Row]:
    harness.ensure_bpffs()
    have_bpftrace = shutil.which("bpftrace") is not None
    with harness.scratch("l7") as tmp:
        home = tmp / "home"
        (tmp / "server.c").write_text(SERVER_C)
        (tmp / "client.c").write_text(CLIENT_C)
        server_exe = harness.gcc(tmp / "server.c", tmp / "server", "-lpthread")
        client_exe = harness.gcc(tmp / "client.c", tmp / "client", "-lpthread")
        script = tmp / "l7.bt"
        script.write_text(BPFTRACE)
        harness.run([*harness.bpfdepot_exe(), "build", "bpf/l7"], env=harness.env_for(home),
                    cwd=ROOT)
        server = subprocess.Popen([str(server_exe)], stdout=subprocess.PIPE, text=True)
        try:
            port = int(server.stdout.readline())
            load(client_exe, port, args.conns, 2000)  # warm up
            base, l7, bt, floor = [], [], [], []
            counts = []
            for _ in range(args.reps):
                base.append(load(client_exe, port, args.conns, args.requests))
                rps, cli, srv, lost = with_l7(home, tmp / "l7.jsonl", client_exe, port,
                                              args.conns, args.requests)
                l7.append(rps)
                counts.append((cli, srv, lost))
                # the floor: every tracepoint attached, each call filtered out at entry (pid 1
                # makes no socket calls of this load), nothing captured or read
                floor.append(with_l7(home, tmp / "floor.jsonl", client_exe, port, args.conns,
                                     args.requests, ("--set", "targ_pid=1"))[0])
                if have_bpftrace:
                    rps, printed = with_bpftrace(script, tmp / "bt.txt", client_exe, port,
                                                 args.conns, args.requests)
                    bt.append((rps, printed))
        finally:
            server.kill()
            server.wait()
    n = args.requests
    exact = all(c == n and s == n and lost == 0 for c, s, lost in counts)
    shown = ", ".join(f"{c}/{s}" for c, s, _ in counts)
    ratio = paired(l7, base)
    print("per rep, req/s: untraced " + ", ".join(f"{x:,.0f}" for x in base) + "; l7 "
          + ", ".join(f"{x:,.0f}" for x in l7)
          + ("; bpftrace " + ", ".join(f"{r:,.0f}" for r, _ in bt) if bt else ""))
    rows = [Row(metric=f"HTTP/1.1 keep-alive, {n} requests on {args.conns} connections, l7 on",
                value=f"{median(l7):,.0f} req/s", baseline=f"{median(base):,.0f} req/s untraced",
                ratio=ratio, goal="≥ 0.9×", met=ratio >= 0.9),
            Row(metric="same, tracepoints attached but nothing captured (targ_pid=1)",
                value=f"{median(floor):,.0f} req/s", baseline=f"{median(base):,.0f} req/s untraced",
                ratio=paired(floor, base), goal="the floor", met=None),
            Row(metric="l7 records (client/server per rep), lost",
                value=f"{shown}; lost {sum(c[2] for c in counts)}", baseline=f"{n} requests",
                goal="= requests, 0 lost", met=exact)]
    if bt:
        bratio = paired([r for r, _ in bt], base)
        rows.append(Row(metric="same load, bpftrace 0.17 script (printf per call and role)",
                        value=f"{median([r for r, _ in bt]):,.0f} req/s",
                        baseline=f"{median(base):,.0f} req/s untraced", ratio=bratio,
                        goal="anchor", met=None))
        rows.append(Row(metric="bpftrace lines printed per rep",
                        value=", ".join(str(p) for _, p in bt), baseline=f"{2 * n} (2 per request)"))
        rows.append(Row(metric="l7 throughput / bpftrace throughput",
                        value=f"{median(l7):,.0f} req/s", baseline=f"{median([r for r, _ in bt]):,.0f} req/s",
                        ratio=paired(l7, [r for r, _ in bt])))
    else:
        rows.append(Row(metric="bpftrace anchor", value="skipped: bpftrace is not installed"))
    return rows


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=20000, help="requests per run (default 20000)")
    p.add_argument("--conns", type=int, default=4, help="client connections (default 4)")


if __name__ == "__main__":
    raise SystemExit(harness.main("bench_l7", measure, reps=3, add_args=add_args))
