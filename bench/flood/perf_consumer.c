// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* perf_consumer: the plain libbpf baseline of the perf-buffer flood benchmark.
 *
 *   perf_consumer [-i IDLE_S] [-c COMM] [-p PAGES] OBJ MAP N
 *       open, load, attach OBJ; read perf buffer MAP (PAGES pages per CPU, default 64) with
 *       perf_buffer__poll (epoll) until N events (of process COMM, if given) have arrived, or
 *       IDLE_S (default 3) seconds passed without one.
 *
 * Prints "ready <t>" once attached (CLOCK_MONOTONIC seconds), then one line of "key value"
 * pairs as consumer.c does: received, ours, lost (the counts of libbpf's lost callback), the
 * times of the ready signal, the first and the last event, and the spans between.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "flood.h"

#define MAX_LINKS 16

struct counts {
	unsigned long long received, ours, lost, seq_sum;
	const char *comm;
	double first;
};

static volatile sig_atomic_t stop;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_sample(void *ctx, int cpu, void *data, __u32 size)
{
	struct counts *c = ctx;
	const struct flood_event *e = data;

	(void)cpu;
	if (!c->received)
		c->first = now();
	c->received++;
	if (size < sizeof(*e))
		return;
	c->seq_sum += e->seq;
	if (!c->comm || !strncmp(e->comm, c->comm, sizeof(e->comm)))
		c->ours++;
}

static void on_lost(void *ctx, int cpu, __u64 cnt)
{
	(void)cpu;
	((struct counts *)ctx)->lost += cnt;
}

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

int main(int argc, char **argv)
{
	struct bpf_link *links[MAX_LINKS];
	struct perf_buffer *pb = NULL;
	struct counts counts = {0};
	struct bpf_program *prog;
	struct bpf_object *obj;
	int nlinks = 0, err = 1, fd, opt, pages = 64;
	unsigned long long want;
	const char *path, *map;
	double ready, last = 0, idle_s = 3, idle_from;

	while ((opt = getopt(argc, argv, "c:i:p:")) != -1) {
		switch (opt) {
		case 'c': counts.comm = optarg; break;
		case 'i': idle_s = atof(optarg); break;
		case 'p': pages = atoi(optarg); break;
		default: goto usage;
		}
	}
	if (argc - optind != 3) {
usage:
		fprintf(stderr, "usage: %s [-i IDLE_S] [-c COMM] [-p PAGES] OBJ MAP N\n", argv[0]);
		return 2;
	}
	path = argv[optind];
	map = argv[optind + 1];
	want = strtoull(argv[optind + 2], NULL, 10);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);

	obj = bpf_object__open_file(path, NULL);
	if (!obj) {
		fprintf(stderr, "perf_consumer: cannot open %s: %s\n", path, strerror(errno));
		return 1;
	}
	if (bpf_object__load(obj)) {
		fprintf(stderr, "perf_consumer: cannot load %s: %s\n", path, strerror(errno));
		goto out;
	}
	/* the rings first: the kernel drops what is sent to a CPU whose ring is not open */
	fd = bpf_object__find_map_fd_by_name(obj, map);
	pb = fd < 0 ? NULL : perf_buffer__new(fd, pages, on_sample, on_lost, &counts, NULL);
	if (!pb) {
		fprintf(stderr, "perf_consumer: no perf buffer '%s' in %s: %s\n", map, path,
			strerror(errno));
		goto out;
	}
	bpf_object__for_each_program(prog, obj) {
		if (nlinks == MAX_LINKS)
			break;
		links[nlinks] = bpf_program__attach(prog);
		if (!links[nlinks]) {
			fprintf(stderr, "perf_consumer: cannot attach %s: %s\n", bpf_program__name(prog),
				strerror(errno));
			goto out;
		}
		nlinks++;
	}
	ready = now();
	printf("ready %.6f\n", ready);
	fflush(stdout);

	idle_from = ready;
	while (!stop && counts.ours < want) {
		unsigned long long before = counts.received + counts.lost;
		int n = perf_buffer__poll(pb, 100 /* ms */);

		if (n < 0 && n != -EINTR) {
			fprintf(stderr, "perf_consumer: reading %s: %s\n", map, strerror(-n));
			goto out;
		}
		if (counts.received + counts.lost != before)
			idle_from = last = now(); /* after the batch, as a writer would finish it */
		else if (now() - idle_from > idle_s)
			break;
	}
	printf("received %llu ours %llu lost %llu ready %.6f first %.6f last %.6f "
	       "first_to_last %.6f ready_to_last %.6f seq_sum %llu\n",
	       counts.received, counts.ours, counts.lost, ready, counts.first, last,
	       counts.received ? last - counts.first : 0.0, counts.received ? last - ready : 0.0,
	       counts.seq_sum);
	err = 0;
out:
	perf_buffer__free(pb);
	while (nlinks--)
		bpf_link__destroy(links[nlinks]);
	bpf_object__close(obj);
	return err;
}
