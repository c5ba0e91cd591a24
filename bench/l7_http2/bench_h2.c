/* bench_h2.c: time l7_h2_frame() (bpf/l7/l7_http2.h) over events read from stdin, in memory.
 *
 * Input: the lines of tests/unit/l7_h2_harness.c (CONN DIR TS_NS REQ_SIZE HEX). All events are
 * parsed first; then the parser runs over them ROUNDS times (argv[1]; a round after the first
 * starts again from each connection's preface, so the tables are rebuilt). Prints one JSON line:
 * {"frames": N, "calls": N, "rejected": N, "seconds": S} for the timed rounds. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef uint64_t __u64;
typedef uint32_t __u32;
typedef uint16_t __u16;
typedef uint8_t __u8;
typedef __u8 bpfdepot_ip[16];

#include "l7.h"
#include "l7_http2.h"

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 1;
	size_t cap = 1024, n = 0, i, k, linecap = 0;
	struct l7_event *ev = calloc(cap, sizeof(*ev));
	char *line = NULL, hex[2 * L7_REQ_MAX + 8];
	uint64_t calls = 0, rejected = 0;
	struct timespec t0, t1;

	while (getline(&line, &linecap, stdin) > 0) {
		unsigned long long conn, ts;
		unsigned int dir, size;

		if (sscanf(line, "%llu %u %llu %u %1031s", &conn, &dir, &ts, &size, hex) != 5)
			return 2;
		if (n == cap && !(ev = realloc(ev, (cap *= 2) * sizeof(*ev))))
			return 3;
		memset(&ev[n], 0, sizeof(ev[n]));
		ev[n].kind = L7_FRAME;
		ev[n].conn = conn;
		ev[n].dir = (__u8)dir;
		ev[n].ts_ns = ts;
		ev[n].req_size = size;
		for (k = 0; hex[0] != '-' && hex[2 * k] && k < L7_REQ_MAX; k++)
			sscanf(hex + 2 * k, "%2hhx", &ev[n].req[k]);
		ev[n].req_len = (__u16)k;
		n++;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int r = 0; r < rounds; r++)
		for (i = 0; i < n; i++) {
			struct l7_h2_call call;
			const char *why;
			int rc = l7_h2_frame(&ev[i], &call, &why);

			calls += rc == 1;
			rejected += rc < 0;
		}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("{\"frames\": %zu, \"calls\": %llu, \"rejected\": %llu, \"seconds\": %.6f}\n", n * rounds,
	       (unsigned long long)calls, (unsigned long long)rejected,
	       (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	l7_h2_reset_all();
	free(ev);
	free(line);
	return 0;
}
