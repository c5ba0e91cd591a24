/* bpfdepot_perf.h: perf-buffer channels (BPF_MAP_TYPE_PERF_EVENT_ARRAY), in
 * loader/native/bpfdepot_perf.c. loader/_libbpf_build.py hands these declarations to cffi as
 * they are (keep them plain C). */
#ifndef BPFDEPOT_PERF_H
#define BPFDEPOT_PERF_H

#include <stdint.h>

struct perf_buffer;
struct bpfdepot_channel;

struct bpfdepot_perf {
	struct perf_buffer *pb;       /* libbpf's manager: one perf ring per CPU */
	struct bpfdepot_channel *ch;  /* where samples go (default decoding or processor routes) */
	uint64_t lost;                /* samples the kernel could not write (a ring was full) */
	int err;                      /* first error of the sample callback (-ENOMEM), else 0 */
	int map_fd;
	int flushing;                 /* set by bpfdepot_perf_flush: samples now are its own */
};

int bpfdepot_perf_open(struct bpfdepot_perf *p, int map_fd, unsigned int pages,
		       uint32_t wakeup_bytes);
int bpfdepot_perf_consume(struct bpfdepot_perf *p);
int bpfdepot_perf_fd(const struct bpfdepot_perf *p);
int bpfdepot_perf_flush(struct bpfdepot_perf *p);
void bpfdepot_perf_free(struct bpfdepot_perf *p);
void bpfdepot_perf_sample(void *ctx, int cpu, void *data, uint32_t size);
void bpfdepot_perf_lost(void *ctx, int cpu, uint64_t cnt);

#endif
