/* bpfdepot_btf.c: index a BTF type section (see bpfdepot_btf.h).
 *
 * A type record is three u32 words (name_off, info, size/type) and then kind-specific words:
 * a fixed number plus a number per vlen item (info's low 16 bits), as in the kernel's
 * btf_type_size(). The tables are those of loader/kernel/btf.py (_EXTRA_FIXED, _EXTRA_PER_VLEN),
 * indexed by kind (info bits 24-28). */
#include <stdlib.h>

#include "bpfdepot_btf.h"

static const unsigned char fixed[] = {0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0};
static const unsigned char per_vlen[] = {0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3};
#define NKINDS (sizeof(fixed) / sizeof(fixed[0]))

/* The word index of each type record into `out` (at most `cap`); the number of types, or -1
 * when a record is cut off, has an unknown kind, or there are more than `cap` (the caller's own
 * loop then says which). */
long bpfdepot_btf_starts(const uint32_t *words, size_t nwords, uint32_t *out, size_t cap)
{
	size_t i = 0, n = 0;

	while (i < nwords) {
		uint32_t kind;

		if (i + 3 > nwords || n == cap)
			return -1;
		kind = words[i + 1] >> 24 & 0x1f;
		if (kind == 0 || kind >= NKINDS)
			return -1;
		out[n++] = (uint32_t)i;
		i += 3 + fixed[kind] + (size_t)per_vlen[kind] * (words[i + 1] & 0xffff);
	}
	return i == nwords ? (long)n : -1;
}

static int by_value(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* (name_off << 32 | type id) of every named type into `out` (room for `ntypes`), sorted: the
 * types of one name offset are then together, lowest id first. Returns how many. */
long bpfdepot_btf_names(const uint32_t *words, const uint32_t *starts, size_t ntypes,
			uint64_t *out)
{
	size_t n = 0;

	for (size_t t = 0; t < ntypes; t++) {
		uint32_t name_off = words[starts[t]];

		if (name_off)
			out[n++] = (uint64_t)name_off << 32 | (uint64_t)(t + 1);
	}
	qsort(out, n, sizeof(*out), by_value);
	return (long)n;
}
