// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* consumer: the plain libbpf baseline of the flood and attach benchmarks.
 *
 *   consumer [-i IDLE_S] [-c COMM] [-b MS] OBJ MAP N
 *       open, load, attach OBJ; read ring buffer MAP until N events (of process COMM, if
 *       given) have arrived, or IDLE_S (default 3) seconds passed without one. Without -b
 *       it sleeps in ring_buffer__poll (epoll: the kernel wakes it when data arrives); with
 *       -b it drains with ring_buffer__consume every MS milliseconds and is never woken.
 *   consumer -a OBJ
 *       open, load, attach, print "ready", detach, exit.
 *
 * Prints "ready <t>" once attached (t: CLOCK_MONOTONIC seconds, the clock of Python's
 * time.monotonic()), then one line of "key value" pairs: received (all events), ours (those
 * of COMM), lost (sum of MAP_lost over all possible CPUs), the times of the ready signal, the
 * first and the last event (the batch that brought the N-th event of COMM), and the spans
 * between. The program sees every process's getppid(), so COMM keeps others out of the count.
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
	unsigned long long received;
	unsigned long long ours;
	const char *comm;
	unsigned long long seq_sum; /* reading each event, so the data is really touched */
	double first;
};

static volatile sig_atomic_t stop;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int on_event(void *ctx, void *data, size_t size)
{
	struct counts *c = ctx;
	const struct flood_event *e = data;

	if (!c->received)
		c->first = now();
	c->received++;
	if (size < sizeof(*e))
		return 0;
	c->seq_sum += e->seq;
	if (!c->comm || !strncmp(e->comm, c->comm, sizeof(e->comm)))
		c->ours++;
	return 0;
}

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static unsigned long long lost_sum(struct bpf_object *obj, const char *map)
{
	char name[BPF_OBJ_NAME_LEN * 2];
	int ncpus = libbpf_num_possible_cpus(), fd;
	unsigned long long sum = 0;
	__u64 *values;
	__u32 zero = 0;

	snprintf(name, sizeof(name), "%s_lost", map);
	fd = bpf_object__find_map_fd_by_name(obj, name);
	if (fd < 0 || ncpus <= 0)
		return 0;
	values = calloc(ncpus, sizeof(*values));
	if (values && !bpf_map_lookup_elem(fd, &zero, values))
		for (int i = 0; i < ncpus; i++)
			sum += values[i];
	free(values);
	return sum;
}

int main(int argc, char **argv)
{
	struct bpf_link *links[MAX_LINKS];
	struct ring_buffer *rb = NULL;
	struct counts counts = {0};
	struct bpf_program *prog;
	struct bpf_object *obj;
	int attach_only = 0, batch_ms = 0, nlinks = 0, err = 1, fd, opt;
	unsigned long long want = 0;
	const char *path, *map = NULL;
	double ready, last = 0, idle_s = 3, idle_from;

	while ((opt = getopt(argc, argv, "ab:c:i:")) != -1) {
		switch (opt) {
		case 'a': attach_only = 1; break;
		case 'b': batch_ms = atoi(optarg); break;
		case 'c': counts.comm = optarg; break;
		case 'i': idle_s = atof(optarg); break;
		default: goto usage;
		}
	}
	if (argc - optind != (attach_only ? 1 : 3)) {
usage:
		fprintf(stderr, "usage: %s [-i IDLE_S] [-c COMM] [-b MS] OBJ MAP N | %s -a OBJ\n",
			argv[0], argv[0]);
		return 2;
	}
	path = argv[optind];
	if (!attach_only) {
		map = argv[optind + 1];
		want = strtoull(argv[optind + 2], NULL, 10);
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);

	/* open → load → attach, as libbpf-tools do */
	obj = bpf_object__open_file(path, NULL);
	if (!obj) {
		fprintf(stderr, "consumer: cannot open %s: %s\n", path, strerror(errno));
		return 1;
	}
	if (bpf_object__load(obj)) {
		fprintf(stderr, "consumer: cannot load %s: %s\n", path, strerror(errno));
		goto out;
	}
	bpf_object__for_each_program(prog, obj) {
		if (nlinks == MAX_LINKS)
			break;
		links[nlinks] = bpf_program__attach(prog);
		if (!links[nlinks]) {
			fprintf(stderr, "consumer: cannot attach %s: %s\n", bpf_program__name(prog),
				strerror(errno));
			goto out;
		}
		nlinks++;
	}
	ready = now();
	printf("ready %.6f\n", ready);
	fflush(stdout);
	if (attach_only) {
		err = 0;
		goto out;
	}

	fd = bpf_object__find_map_fd_by_name(obj, map);
	rb = fd < 0 ? NULL : ring_buffer__new(fd, on_event, &counts, NULL);
	if (!rb) {
		fprintf(stderr, "consumer: no ring buffer map '%s' in %s\n", map, path);
		goto out;
	}
	idle_from = ready;
	while (!stop && counts.ours < want) {
		int n = batch_ms ? ring_buffer__consume(rb) : ring_buffer__poll(rb, 100 /* ms */);

		if (n < 0 && n != -EINTR) {
			fprintf(stderr, "consumer: reading %s: %s\n", map, strerror(-n));
			goto out;
		}
		if (n > 0)
			idle_from = last = now(); /* after the batch, as a writer would finish it */
		else if (now() - idle_from > idle_s)
			break;
		if (batch_ms && n >= 0)
			usleep(batch_ms * 1000);
	}
	printf("received %llu ours %llu lost %llu ready %.6f first %.6f last %.6f "
	       "first_to_last %.6f ready_to_last %.6f seq_sum %llu\n",
	       counts.received, counts.ours, lost_sum(obj, map), ready, counts.first, last,
	       counts.received ? last - counts.first : 0.0, counts.received ? last - ready : 0.0,
	       counts.seq_sum);
	err = 0;
out:
	ring_buffer__free(rb);
	while (nlinks--)
		bpf_link__destroy(links[nlinks]);
	bpf_object__close(obj);
	return err;
}
