/* bpfdepot_maps.h: reading whole BPF maps (hash, LRU, array, per-CPU) into records, for the
 * map snapshot and histogram channels (loader/outputs/hash_map.py, histogram.py).
 * loader/_libbpf_build.py hands these declarations to cffi as they are (keep them plain C). */
#ifndef BPFDEPOT_MAPS_H
#define BPFDEPOT_MAPS_H

#include <stddef.h>
#include <stdint.h>

struct bpfdepot_channel; /* bpfdepot_native.h */
struct bpfdepot_wbuf;

#define BPFDEPOT_MAP_RESET 1    /* delete what was read (arrays: zero it) */
#define BPFDEPOT_MAP_KEEP_CPU 2 /* per-CPU values: one record per CPU, a u32 cpu after the value */
#define BPFDEPOT_MAP_DELTA 4    /* integer fields: the change since the last read; 0 changes dropped */
#define BPFDEPOT_MAP_SKIP_ZERO 8 /* leave out entries whose value is all zero bytes (arrays) */

struct bpfdepot_span { /* an integer field of the value: summed across CPUs, subtracted by delta */
	unsigned int offset;
	unsigned int size;   /* 1, 2, 4 or 8 bytes */
	unsigned int is_signed;
};

struct bpfdepot_mapread {
	int fd;
	unsigned int key_size;
	unsigned int value_size;   /* one CPU's value */
	unsigned int max_entries;
	unsigned int ncpu;         /* possible CPUs for a per-CPU map, else 1 */
	unsigned int percpu;
	unsigned int is_array;
	unsigned int flags;        /* BPFDEPOT_MAP_* */
	const struct bpfdepot_span *spans;
	unsigned int nspans;
	int sort_span;             /* spans[i] orders the records (largest first); -1: map order */
	unsigned int top;          /* keep this many records (0: all) */
	/* what the reads did, for the channel's stats */
	uint64_t entries;          /* entries read */
	uint64_t lost;             /* entries that could not be read */
	uint64_t records;          /* records made */
	uint64_t last_entries;     /* entries of the last read */
	int batch;                 /* 1: batch ops work here; 0: per key (the kernel refused them) */
	int delete_batch;          /* 1: lookup_and_delete_batch works for this map; 0: it does not */
	int last_error;            /* errno of a failure that stopped a read, else 0 */
	/* owned by C; bpfdepot_map_free releases them */
	char *keys, *values, *recs, *scratch;
	size_t cap, recs_cap;
	void *prev;                /* delta: the values of the last read, by key */
};

/* Read every entry and hand one record (key bytes, then the value bytes, then a u32 cpu when
 * BPFDEPOT_MAP_KEEP_CPU) to `ch` (decoding or processor frames), or, when `ch` is NULL, append
 * the records to `raw`. Returns the records made, or -errno when the map could not be read. */
long bpfdepot_map_read(struct bpfdepot_mapread *m, struct bpfdepot_channel *ch,
		       struct bpfdepot_wbuf *raw);
unsigned int bpfdepot_map_record_size(const struct bpfdepot_mapread *m);
void bpfdepot_map_free(struct bpfdepot_mapread *m);

#endif
