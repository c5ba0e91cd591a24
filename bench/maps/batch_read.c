// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* batch_read: the baseline of bench/bench_maps.py. Reads a pinned map whole with
 * bpf_map_lookup_batch into buffers (what any C agent does), REPS times, and prints the
 * median nanoseconds of one read and the entries it got:  "ns ENTRIES". No decoding. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <bpf/bpf.h>

static int cmp(const void *a, const void *b)
{
	long x = *(const long *)a, y = *(const long *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	int fd, reps = argc > 2 ? atoi(argv[2]) : 20;
	struct bpf_map_info info = {};
	__u32 len = sizeof(info), total = 0;
	long *ns = calloc(reps, sizeof(long));
	char *keys, *values;

	if (argc < 2 || (fd = bpf_obj_get(argv[1])) < 0) {
		fprintf(stderr, "usage: batch_read PINNED_MAP [REPS] (%s)\n", strerror(errno));
		return 1;
	}
	bpf_obj_get_info_by_fd(fd, &info, &len);
	keys = malloc((size_t)info.max_entries * info.key_size);
	values = malloc((size_t)info.max_entries * info.value_size);
	for (int r = 0; r < reps; r++) {
		LIBBPF_OPTS(bpf_map_batch_opts, opts);
		struct timespec t0, t1;
		__u32 cursor, count;
		void *in = NULL;
		int err = 0;

		total = 0;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		while (!err) {
			count = info.max_entries - total;
			err = bpf_map_lookup_batch(fd, in, &cursor, keys + total * info.key_size,
						   values + total * info.value_size, &count, &opts);
			total += count;
			in = &cursor;
		}
		clock_gettime(CLOCK_MONOTONIC, &t1);
		if (err != -ENOENT) {
			fprintf(stderr, "bpf_map_lookup_batch: %s\n", strerror(-err));
			return 1;
		}
		ns[r] = (t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec);
	}
	qsort(ns, reps, sizeof(long), cmp);
	printf("%ld %u\n", ns[reps / 2], total);
	return 0;
}
