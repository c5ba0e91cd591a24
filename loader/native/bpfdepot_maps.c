/* bpfdepot_maps.c: a whole BPF map → records, for map snapshot and histogram channels.
 *
 * One read: every entry into two buffers with the batch syscalls (BPF_MAP_LOOKUP_BATCH, or
 * BPF_MAP_LOOKUP_AND_DELETE_BATCH to reset a hash map: atomic per bucket, so an increment made
 * while we read is either in this read or the next, never lost); per key when the kernel has
 * no batch ops for the map. Then one record per entry (key bytes, value bytes, and a u32 cpu
 * when per-CPU values are kept apart): per-CPU integer fields summed, deltas against the last
 * read, the N largest by one field. Records go to the channel's C encoder or processor frames
 * (bpfdepot_channel_sample, as ring-buffer events do), or to a buffer Python reads (histograms).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bpfdepot_native.h"
#include "bpfdepot_maps.h"

#define KERNEL_ENOTSUPP 524 /* the kernel's own "operation not supported" (not in errno.h) */
#define TOKEN_MAX 64         /* batch cursor: a u32 bucket for hash maps, the key for arrays */

static unsigned int cpu_stride(const struct bpfdepot_mapread *m)
{
	/* per-CPU values come 8-byte aligned per CPU (kernel bpf_map_value_size) */
	return m->percpu ? (m->value_size + 7) & ~7u : m->value_size;
}

static size_t entry_stride(const struct bpfdepot_mapread *m)
{
	return (size_t)cpu_stride(m) * (m->percpu ? m->ncpu : 1);
}

unsigned int bpfdepot_map_record_size(const struct bpfdepot_mapread *m)
{
	return m->key_size + m->value_size + (m->flags & BPFDEPOT_MAP_KEEP_CPU ? 4 : 0);
}

static int grow(struct bpfdepot_mapread *m, size_t need)
{
	size_t cap = m->cap ? m->cap : (m->max_entries ? m->max_entries : 64);
	char *keys, *values;

	if (need <= m->cap)
		return 0;
	while (cap < need)
		cap *= 2;
	keys = realloc(m->keys, cap * m->key_size);
	if (!keys)
		return -ENOMEM;
	m->keys = keys;
	values = realloc(m->values, cap * entry_stride(m));
	if (!values)
		return -ENOMEM;
	m->values = values;
	m->cap = cap;
	return 0;
}

static int unsupported(int err)
{
	return err == -EINVAL || err == -EOPNOTSUPP || err == -KERNEL_ENOTSUPP || err == -ENOTTY;
}

/* Batch reads until the kernel says ENOENT (the end). */
static int read_batch(struct bpfdepot_mapread *m, size_t *count, int del)
{
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	char in[TOKEN_MAX], out[TOKEN_MAX];
	void *cursor = NULL;

	*count = 0;
	for (;;) {
		__u32 n;
		int err;

		if (grow(m, *count + 16))
			return -ENOMEM;
		n = (__u32)(m->cap - *count);
		if (del)
			err = bpf_map_lookup_and_delete_batch(m->fd, cursor, out,
							      m->keys + *count * m->key_size,
							      m->values + *count * entry_stride(m), &n, &opts);
		else
			err = bpf_map_lookup_batch(m->fd, cursor, out, m->keys + *count * m->key_size,
						   m->values + *count * entry_stride(m), &n, &opts);
		if (err && err != -ENOENT && err != -ENOSPC)
			return err;
		*count += n;
		if (err == -ENOENT)
			return 0;
		if (err == -ENOSPC && grow(m, m->cap * 2)) /* one bucket holds more than the room left */
			return -ENOMEM;
		memcpy(in, out, TOKEN_MAX);
		cursor = in;
	}
}

/* One key at a time: get_next_key + lookup (+ delete behind the cursor). An entry deleted by
 * the program between the two calls is gone, not lost; any other failure is counted lost. */
static int read_per_key(struct bpfdepot_mapread *m, size_t *count, int del)
{
	char *cur = m->scratch, *next = m->scratch + m->key_size;
	int err;

	*count = 0;
	if (m->is_array) {
		for (__u32 i = 0; i < m->max_entries; i++) {
			if (grow(m, *count + 1))
				return -ENOMEM;
			memcpy(m->keys + *count * m->key_size, &i, 4);
			if (bpf_map_lookup_elem(m->fd, &i, m->values + *count * entry_stride(m)) == 0)
				(*count)++;
			else
				m->lost++;
		}
		return 0;
	}
	err = bpf_map_get_next_key(m->fd, NULL, next);
	while (!err) {
		if (grow(m, *count + 1))
			return -ENOMEM;
		memcpy(m->keys + *count * m->key_size, next, m->key_size);
		if (bpf_map_lookup_elem(m->fd, next, m->values + *count * entry_stride(m)) == 0)
			(*count)++;
		else if (errno != ENOENT)
			m->lost++;
		memcpy(cur, next, m->key_size);
		err = bpf_map_get_next_key(m->fd, cur, next);
		if (del)
			bpf_map_delete_elem(m->fd, cur);
	}
	return err == -ENOENT ? 0 : err;
}

/* Arrays cannot lose entries: reset writes zeros over what was read. An increment between
 * the read and the write is lost; the program should use a hash map when that matters. */
static int zero_array(struct bpfdepot_mapread *m, size_t count)
{
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	size_t stride = entry_stride(m);
	char *zeros = calloc(count ? count : 1, stride);
	__u32 n = (__u32)count;
	int err = 0;

	if (!zeros)
		return -ENOMEM;
	if (m->batch && count)
		err = bpf_map_update_batch(m->fd, m->keys, zeros, &n, &opts);
	if (!m->batch || (err && unsupported(err))) {
		err = 0;
		for (size_t i = 0; i < count; i++)
			if (bpf_map_update_elem(m->fd, m->keys + i * m->key_size, zeros, BPF_ANY))
				err = -errno;
	}
	free(zeros);
	return err;
}

static uint64_t load(const char *p, unsigned int size)
{
	uint64_t v = 0;

	memcpy(&v, p, size); /* little-endian host: the low bytes */
	return v;
}

static int64_t load_signed(const char *p, unsigned int size)
{
	uint64_t v = load(p, size);

	if (size < 8 && (v >> (size * 8 - 1)) & 1)
		v |= ~0ull << (size * 8);
	return (int64_t)v;
}

static void store(char *p, uint64_t v, unsigned int size)
{
	memcpy(p, &v, size);
}

static int all_zero(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

/* ---- the last read's values by key, for deltas: open addressing, rebuilt every read ---- */

struct dtab {
	size_t cap; /* a power of two */
	unsigned int key_len, value_len;
	char *slots; /* per slot: a used byte, the key, the value */
};

static uint64_t fnv(const char *p, unsigned int n)
{
	uint64_t h = 1469598103934665603ull;

	for (unsigned int i = 0; i < n; i++)
		h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
	return h;
}

static struct dtab *dtab_new(size_t entries, unsigned int key_len, unsigned int value_len)
{
	struct dtab *t = calloc(1, sizeof(*t));
	size_t cap = 16;

	if (!t)
		return NULL;
	while (cap < entries * 2)
		cap *= 2;
	t->cap = cap;
	t->key_len = key_len;
	t->value_len = value_len;
	t->slots = calloc(cap, 1 + key_len + value_len);
	if (!t->slots) {
		free(t);
		return NULL;
	}
	return t;
}

static void dtab_free(struct dtab *t)
{
	if (t) {
		free(t->slots);
		free(t);
	}
}

/* The slot of `key`: its own, or the empty one where it goes. */
static char *dtab_slot(struct dtab *t, const char *key)
{
	size_t size = 1 + t->key_len + t->value_len;

	for (size_t i = fnv(key, t->key_len) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
		char *s = t->slots + i * size;

		if (!s[0] || !memcmp(s + 1, key, t->key_len))
			return s;
	}
}

/* ---- records ---- */

struct order {
	uint64_t key;
	size_t index;
};

static int by_key_desc(const void *a, const void *b)
{
	const struct order *x = a, *y = b;

	if (x->key != y->key)
		return x->key < y->key ? 1 : -1;
	return x->index < y->index ? -1 : x->index > y->index;
}

static uint64_t sort_key(const struct bpfdepot_mapread *m, const char *rec)
{
	const struct bpfdepot_span *s = &m->spans[m->sort_span];
	const char *p = rec + m->key_size + s->offset;

	/* signed values: flip the sign bit so unsigned order is numeric order */
	return s->is_signed ? (uint64_t)load_signed(p, s->size) ^ (1ull << 63) : load(p, s->size);
}

/* One entry's value for one CPU (or summed over all) into rec's value part. */
static void value_of(const struct bpfdepot_mapread *m, const char *v, int cpu, char *out)
{
	unsigned int cs = cpu_stride(m), base = 0;

	if (!m->percpu) {
		memcpy(out, v, m->value_size);
		return;
	}
	if (cpu >= 0) {
		memcpy(out, v + (size_t)cpu * cs, m->value_size);
		return;
	}
	/* summed: non-integer bytes (a name, a flag) from the first CPU that has any */
	for (unsigned int c = 0; c < m->ncpu; c++)
		if (!all_zero(v + (size_t)c * cs, m->value_size)) {
			base = c;
			break;
		}
	memcpy(out, v + (size_t)base * cs, m->value_size);
	for (unsigned int i = 0; i < m->nspans; i++) {
		const struct bpfdepot_span *s = &m->spans[i];
		uint64_t acc = 0;

		for (unsigned int c = 0; c < m->ncpu; c++)
			acc += load(v + (size_t)c * cs + s->offset, s->size);
		store(out + s->offset, acc, s->size);
	}
}

/* Replace rec's integer fields by their change since the last read; 0 when all are unchanged. */
static int delta(const struct bpfdepot_mapread *m, struct dtab *now, const char *rec,
		 unsigned int dkey_len, char *dkey)
{
	struct dtab *prev = m->prev;
	const char *value = rec + m->key_size;
	const char *old = NULL;
	char *slot = dtab_slot(now, dkey);
	int changed = 0;

	slot[0] = 1;
	memcpy(slot + 1, dkey, dkey_len);
	memcpy(slot + 1 + dkey_len, value, m->value_size);
	if (prev) {
		const char *s = dtab_slot(prev, dkey);

		if (s[0])
			old = s + 1 + dkey_len;
	}
	for (unsigned int i = 0; i < m->nspans; i++) {
		const struct bpfdepot_span *sp = &m->spans[i];
		uint64_t cur = load(value + sp->offset, sp->size), was = 0, d;

		if (old)
			was = load(old + sp->offset, sp->size);
		/* an unsigned counter that went down was reset: all of it is new */
		d = (!sp->is_signed && cur < was) ? cur : cur - was;
		if (sp->size < 8)
			d &= (1ull << (sp->size * 8)) - 1;
		store((char *)value + sp->offset, d, sp->size);
		changed |= d != 0;
	}
	return changed;
}

static int raw_append(struct bpfdepot_wbuf *w, const char *rec, size_t n)
{
	if (w->len + n > w->cap) {
		size_t cap = w->cap ? w->cap : 1u << 16;
		char *buf;

		while (cap < w->len + n)
			cap *= 2;
		buf = realloc(w->buf, cap);
		if (!buf)
			return -ENOMEM;
		w->buf = buf;
		w->cap = cap;
	}
	memcpy(w->buf + w->len, rec, n);
	w->len += n;
	w->events++;
	return 0;
}

static int hand_on(struct bpfdepot_channel *ch, struct bpfdepot_wbuf *raw, char *rec, size_t n)
{
	if (raw)
		return raw_append(raw, rec, n);
	return bpfdepot_channel_sample(ch, rec, n) ? -ENOMEM : 0;
}

static long make_records(struct bpfdepot_mapread *m, size_t count, struct bpfdepot_channel *ch,
			 struct bpfdepot_wbuf *raw)
{
	int keep = m->flags & BPFDEPOT_MAP_KEEP_CPU && m->percpu;
	unsigned int rsize = bpfdepot_map_record_size(m), dkey_len = m->key_size + (keep ? 4 : 0);
	size_t most = count * (keep ? m->ncpu : 1), n = 0;
	struct dtab *now = NULL;
	struct order *order = NULL;
	long err = 0;

	if (most > m->recs_cap) {
		char *recs = realloc(m->recs, most * rsize);

		if (!recs)
			return -ENOMEM;
		m->recs = recs;
		m->recs_cap = most;
	}
	if (m->flags & BPFDEPOT_MAP_DELTA) {
		now = dtab_new(most, dkey_len, m->value_size);
		if (!now)
			return -ENOMEM;
	}
	for (size_t i = 0; i < count; i++) {
		const char *key = m->keys + i * m->key_size, *v = m->values + i * entry_stride(m);

		for (int cpu = keep ? 0 : -1; cpu < (keep ? (int)m->ncpu : 0); cpu++) {
			char *rec = m->recs + n * rsize;
			uint32_t c = (uint32_t)cpu;

			memcpy(rec, key, m->key_size);
			value_of(m, v, cpu, rec + m->key_size);
			if (keep)
				memcpy(rec + m->key_size + m->value_size, &c, 4);
			if ((m->flags & BPFDEPOT_MAP_SKIP_ZERO || keep) &&
			    all_zero(rec + m->key_size, m->value_size))
				continue; /* never written (array slot), or nothing on this CPU */
			if (now) {
				/* the key, plus the cpu when CPUs are kept apart */
				memcpy(m->scratch, key, m->key_size);
				if (keep)
					memcpy(m->scratch + m->key_size, &c, 4);
				if (!delta(m, now, rec, dkey_len, m->scratch))
					continue;
			}
			n++;
		}
	}
	dtab_free(m->prev);
	m->prev = now;

	if (m->sort_span >= 0 && n) {
		order = malloc(n * sizeof(*order));
		if (!order)
			return -ENOMEM;
		for (size_t i = 0; i < n; i++) {
			order[i].key = sort_key(m, m->recs + i * rsize);
			order[i].index = i;
		}
		qsort(order, n, sizeof(*order), by_key_desc);
	}
	if (m->top && n > m->top)
		n = m->top;
	for (size_t i = 0; i < n && !err; i++)
		err = hand_on(ch, raw, m->recs + (order ? order[i].index : i) * rsize, rsize);
	free(order);
	if (err)
		return err;
	m->records += n;
	return (long)n;
}

long bpfdepot_map_read(struct bpfdepot_mapread *m, struct bpfdepot_channel *ch,
		       struct bpfdepot_wbuf *raw)
{
	int reset = m->flags & BPFDEPOT_MAP_RESET;
	int del = reset && !m->is_array && m->delete_batch;
	size_t count = 0;
	int err = -EINVAL;

	m->last_error = 0;
	if (!m->scratch) {
		m->scratch = calloc(2, m->key_size + 8);
		if (!m->scratch)
			return -ENOMEM;
	}
	if (m->batch) {
		err = read_batch(m, &count, del);
		if (err && unsupported(err) && count == 0) {
			if (del) {
				m->delete_batch = 0; /* lookup works, lookup-and-delete does not */
				return bpfdepot_map_read(m, ch, raw);
			}
			m->batch = 0;
		}
	}
	if (!m->batch)
		err = read_per_key(m, &count, reset && !m->is_array);
	if (err) {
		m->last_error = -err;
		return err;
	}
	if (m->batch && reset && !m->is_array && !m->delete_batch) {
		/* batch lookup, then delete what was read, key by key */
		for (size_t i = 0; i < count; i++)
			bpf_map_delete_elem(m->fd, m->keys + i * m->key_size);
	}
	if (reset && m->is_array) {
		err = zero_array(m, count);
		if (err) {
			m->last_error = -err;
			return err;
		}
	}
	m->entries += count;
	m->last_entries = count;
	return make_records(m, count, ch, raw);
}

void bpfdepot_map_free(struct bpfdepot_mapread *m)
{
	free(m->keys);
	free(m->values);
	free(m->recs);
	free(m->scratch);
	dtab_free(m->prev);
	m->keys = m->values = m->recs = m->scratch = NULL;
	m->prev = NULL;
	m->cap = m->recs_cap = 0;
}
