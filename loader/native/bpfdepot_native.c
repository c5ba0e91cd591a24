/* bpfdepot_native.c: the C half of loader/libbpf/, compiled by cffi (loader/_libbpf_build.py).
 *
 * Three jobs that Python cannot do fast or at all:
 *   - capture libbpf's log (a varargs callback) into a bounded buffer that keeps the tail,
 *     so a verifier rejection can show its last lines;
 *   - open objects with options and load probe programs (structs with `sz` fields);
 *   - encode ring-buffer events to JSON lines inside libbpf's sample callback, driven by a
 *     table of field ops built in Python from BTF: Python only ever writes whole buffers.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include "bpfdepot_native.h"

/* ---- libbpf log capture ------------------------------------------------------------- */

#define LOG_KEEP (4u << 20) /* bytes of log tail kept; verifier logs can be megabytes */

static char *log_buf;
static size_t log_len;
static int log_debug;

static int capture_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	char line[4096];
	va_list copy;
	int n;

	if (level == LIBBPF_DEBUG && !log_debug)
		return 0;
	va_copy(copy, args);
	n = vsnprintf(line, sizeof(line), fmt, copy);
	va_end(copy);
	if (n < 0)
		return 0;
	if ((size_t)n >= sizeof(line)) {
		/* a long line (libbpf prints the verifier log as one string): format it whole */
		char *big = malloc((size_t)n + 1);

		if (!big)
			return 0;
		vsnprintf(big, (size_t)n + 1, fmt, args);
		bpfdepot_log_append(big, (size_t)n);
		free(big);
		return n;
	}
	bpfdepot_log_append(line, (size_t)n);
	return n;
}

void bpfdepot_log_append(const char *s, size_t n)
{
	if (!log_buf && !(log_buf = malloc(LOG_KEEP)))
		return;
	if (n >= LOG_KEEP) {
		s += n - LOG_KEEP / 2;
		n = LOG_KEEP / 2;
	}
	if (log_len + n > LOG_KEEP) {
		/* keep the newest half: the end of a verifier log holds the reason */
		size_t keep = LOG_KEEP / 2 > n ? LOG_KEEP / 2 - n : 0;

		memmove(log_buf, log_buf + log_len - keep, keep);
		log_len = keep;
	}
	memcpy(log_buf + log_len, s, n);
	log_len += n;
}

void bpfdepot_log_capture(int debug)
{
	log_debug = debug;
	libbpf_set_print(capture_print);
}

size_t bpfdepot_log_take(char *out, size_t cap)
{
	size_t n = log_len < cap ? log_len : cap;

	if (n)
		memcpy(out, log_buf + log_len - n, n);
	log_len = 0;
	return n;
}

size_t bpfdepot_log_size(void)
{
	return log_len;
}

/* ---- objects and probes -------------------------------------------------------------- */

struct bpf_object *bpfdepot_open(const char *path, const char *btf_custom_path)
{
	LIBBPF_OPTS(bpf_object_open_opts, opts, .btf_custom_path = btf_custom_path);

	return bpf_object__open_file(path, &opts);
}

/* Load `r0 = 0; exit` as the given program type; return 0 or -errno. */
int bpfdepot_probe_prog(int prog_type, int attach_type, int attach_btf_id)
{
	const struct bpf_insn insns[] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = attach_type,
		    .attach_btf_id = attach_btf_id);
	int fd = bpf_prog_load(prog_type, NULL, "GPL", insns, 2, &opts);

	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}

int bpfdepot_probe_map(int map_type, int key_size, int value_size, int max_entries)
{
	int fd = bpf_map_create(map_type, NULL, key_size, value_size, max_entries, NULL);

	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}

/* BTF id of a vmlinux type by name and kind, or -errno. */
int bpfdepot_vmlinux_btf_id(const char *name, int kind)
{
	struct btf *btf = btf__load_vmlinux_btf();
	int id;

	if (!btf)
		return -errno;
	id = btf__find_by_name_kind(btf, name, kind);
	btf__free(btf);
	return id;
}

/* BTF ids of n vmlinux types by name and kind (-ENOENT for one not there), reading the
 * kernel's BTF once for all of them: each read parses ~6 MB, ~10 ms. 0 or -errno. */
int bpfdepot_vmlinux_btf_ids(const char **names, const int *kinds, int *ids, int n)
{
	struct btf *btf = btf__load_vmlinux_btf();
	int i;

	if (!btf)
		return -errno;
	for (i = 0; i < n; i++)
		ids[i] = btf__find_by_name_kind(btf, names[i], kinds[i]);
	btf__free(btf);
	return 0;
}

/* ---- JSON encoder --------------------------------------------------------------------- */

static inline char *put_u64(char *p, uint64_t v)
{
	char tmp[20];
	int n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*p++ = tmp[--n];
	return p;
}

static inline char *put_s64(char *p, int64_t v)
{
	if (v < 0) {
		*p++ = '-';
		return put_u64(p, (uint64_t)0 - (uint64_t)v);
	}
	return put_u64(p, (uint64_t)v);
}

static inline uint64_t load_u(const unsigned char *d, unsigned int size)
{
	uint64_t v = 0;

	memcpy(&v, d, size > 8 ? 8 : size); /* BPF objects here are little-endian */
	return v;
}

static inline int64_t load_s(const unsigned char *d, unsigned int size)
{
	uint64_t v = load_u(d, size);
	unsigned int shift = 64 - 8 * size;

	return size >= 8 ? (int64_t)v : (int64_t)(v << shift) >> shift;
}

static const char hexdig[] = "0123456789abcdef";

static char *put_chars(char *p, const unsigned char *s, unsigned int size)
{
	*p++ = '"';
	for (unsigned int i = 0; i < size && s[i]; i++) {
		unsigned char c = s[i];

		if (c == '"' || c == '\\') {
			*p++ = '\\';
			*p++ = (char)c;
		} else if (c < 0x20 || c >= 0x7f) {
			/* control and non-ASCII bytes as \u00XX: the line stays valid JSON */
			memcpy(p, "\\u00", 4);
			p[4] = hexdig[c >> 4];
			p[5] = hexdig[c & 15];
			p += 6;
		} else {
			*p++ = (char)c;
		}
	}
	*p++ = '"';
	return p;
}

static char *put_ip(char *p, int af, const unsigned char *a)
{
	char text[INET6_ADDRSTRLEN];
	size_t n;

	inet_ntop(af, a, text, sizeof(text));
	n = strlen(text);
	*p++ = '"';
	memcpy(p, text, n);
	p += n;
	*p++ = '"';
	return p;
}

static char *put_double(char *p, double v)
{
	if (v != v || v > 1.7976931348623157e308 || v < -1.7976931348623157e308)
		return memcpy(p, "null", 4), p + 4; /* JSON has no NaN or infinity */
	return p + sprintf(p, "%.17g", v);
}

static char *put_name(char *p, const struct bpfdepot_names *t, const unsigned char *f,
			   unsigned int size)
{
	int64_t v = t->is_signed ? load_s(f, size) : (int64_t)load_u(f, size);
	int64_t want = v;
	unsigned int lo = 0, hi = t->n;

	if (t->flags & BPFDEPOT_NAMES_NEGATED) {
		if (v >= 0)
			return put_s64(p, v);
		want = -v;
	}
	while (lo < hi) { /* the first value >= want */
		unsigned int mid = lo + (hi - lo) / 2;

		if (t->values[mid] < want)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < t->n && t->values[lo] == want) {
		memcpy(p, t->names[lo], t->lens[lo]);
		return p + t->lens[lo];
	}
	return t->is_signed ? put_s64(p, v) : put_u64(p, (uint64_t)v);
}

static char *put_hex64(char *p, uint64_t v)
{
	char tmp[16];
	int n = 0;

	do {
		tmp[n++] = hexdig[v & 15];
		v >>= 4;
	} while (v);
	*p++ = '0';
	*p++ = 'x';
	while (n)
		*p++ = tmp[--n];
	return p;
}

static char *put_ksym(char *p, const struct bpfdepot_syms *t, uint64_t addr)
{
	unsigned int lo = 0, hi = t ? t->n : 0;

	while (lo < hi) { /* the first address > addr */
		unsigned int mid = lo + (hi - lo) / 2;

		if (t->addrs[mid] <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	*p++ = '"';
	if (lo == 0 || !addr) { /* below every symbol (or none loaded): the address itself */
		p = put_hex64(p, addr);
	} else {
		memcpy(p, t->names[lo - 1], t->lens[lo - 1]);
		p += t->lens[lo - 1];
		if (addr != t->addrs[lo - 1]) {
			*p++ = '+';
			p = put_hex64(p, addr - t->addrs[lo - 1]);
		}
	}
	*p++ = '"';
	return p;
}

static char *put_strings(char *p, const unsigned char *s, unsigned int size)
{
	unsigned int at = 0;
	int first = 1;

	while (size && !s[size - 1])
		size--; /* NULs after the last string are padding, not empty strings */
	*p++ = '[';
	while (at < size) {
		unsigned int n = 0;

		while (at + n < size && s[at + n])
			n++;
		if (!first)
			*p++ = ',';
		first = 0;
		p = put_chars(p, s + at, n);
		at += n + 1;
	}
	*p++ = ']';
	return p;
}

static char *put_u128(char *p, const unsigned char *f)
{
	uint64_t lo, hi;

	memcpy(&lo, f, 8);
	memcpy(&hi, f + 8, 8);
	*p++ = '"';
	if (hi) {
		p = put_hex64(p, hi);
		for (int shift = 60; shift >= 0; shift -= 4)
			*p++ = hexdig[(lo >> shift) & 15];
	} else {
		p = put_hex64(p, lo);
	}
	*p++ = '"';
	return p;
}

/* Encode one event of `avail` bytes. A field that lies past what arrived is null; a trailing
 * string, byte array or string list is cut where the sample ends. */
static char *encode_one(const struct bpfdepot_encoder *enc, const unsigned char *d, size_t avail,
			char *p)
{
	for (unsigned int i = 0; i < enc->nops; i++) {
		const struct bpfdepot_op *op = &enc->ops[i];
		const unsigned char *f = d + op->offset;
		unsigned int size = op->size;

		memcpy(p, op->prefix, op->prefix_len);
		p += op->prefix_len;
		if (op->kind == OP_IFNE) {
			if (op->offset + op->aux_size > avail ||
			    load_u(f, op->aux_size) != (uint64_t)op->value)
				i += op->jump;
			continue;
		}
		if (op->kind == OP_GOTO) {
			i += op->jump;
			continue;
		}
		if (op->kind != OP_LIT &&
		    op->offset + (size_t)(op->kind == OP_UBITS || op->kind == OP_SBITS ?
					  op->aux_size : size) > avail) {
			if ((op->kind == OP_CHARS || op->kind == OP_HEX || op->kind == OP_STRINGS) &&
			    op->offset <= avail) {
				size = (unsigned int)(avail - op->offset);
			} else {
				memcpy(p, "null", 4);
				p += 4;
				continue;
			}
		}
		switch (op->kind) {
		case OP_LIT:
			break;
		case OP_U:
			p = put_u64(p, load_u(f, size));
			break;
		case OP_S:
			p = put_s64(p, load_s(f, size));
			break;
		case OP_BE: {
			uint64_t v = 0;

			for (unsigned int b = 0; b < size; b++)
				v = v << 8 | f[b];
			p = put_u64(p, v);
			break;
		}
		case OP_BOOL:
			if (load_u(f, size))
				memcpy(p, "true", 4), p += 4;
			else
				memcpy(p, "false", 5), p += 5;
			break;
		case OP_CHARS:
			p = put_chars(p, f, size);
			break;
		case OP_IPV4:
			p = put_ip(p, AF_INET, f);
			break;
		case OP_IPV6:
			p = put_ip(p, AF_INET6, f);
			break;
		case OP_IPFAM:
			p = put_ip(p, load_u(d + op->aux, op->aux_size) == AF_INET ? AF_INET : AF_INET6, f);
			break;
		case OP_UBITS:
		case OP_SBITS: {
			uint64_t v = load_u(f, op->aux_size) >> op->aux;
			unsigned int bits = op->size;

			if (bits < 64)
				v &= (1ull << bits) - 1;
			if (op->kind == OP_SBITS && bits < 64 && (v >> (bits - 1)) & 1)
				p = put_s64(p, (int64_t)(v | ~((1ull << bits) - 1)));
			else
				p = put_u64(p, v);
			break;
		}
		case OP_F32: {
			float v;

			memcpy(&v, f, 4);
			p = put_double(p, v);
			break;
		}
		case OP_F64: {
			double v;

			memcpy(&v, f, 8);
			p = put_double(p, v);
			break;
		}
		case OP_HEX:
			*p++ = '"';
			for (unsigned int i = 0; i < size; i++) {
				unsigned int b = op->aux ? size - 1 - i : i; /* aux: an integer, MSB first */

				*p++ = hexdig[f[b] >> 4];
				*p++ = hexdig[f[b] & 15];
			}
			*p++ = '"';
			break;
		case OP_NAME:
			p = op->aux < enc->nnames ? put_name(p, &enc->names[op->aux], f, size)
						  : put_u64(p, load_u(f, size));
			break;
		case OP_KSYM:
			p = put_ksym(p, enc->syms, load_u(f, size));
			break;
		case OP_STRINGS:
			p = put_strings(p, f, size);
			break;
		case OP_U128:
			p = put_u128(p, f);
			break;
		}
	}
	return p;
}

char *bpfdepot_encode_fields(const struct bpfdepot_encoder *enc, const void *data, size_t size,
			     char *out)
{
	return encode_one(enc, data, size, out);
}

static int reserve(struct bpfdepot_encoder *enc, size_t need)
{
	size_t cap = enc->cap ? enc->cap : 1u << 20;
	char *out;

	if (enc->len + need <= enc->cap)
		return 0;
	while (cap < enc->len + need)
		cap *= 2;
	out = realloc(enc->out, cap);
	if (!out)
		return -ENOMEM;
	enc->out = out;
	enc->cap = cap;
	return 0;
}

/* libbpf ring_buffer_sample_fn: append one JSON line per event to enc->out. */
int bpfdepot_encode_sample(void *ctx, void *data, size_t size)
{
	struct bpfdepot_encoder *enc = ctx;

	if (size < enc->event_size) {
		enc->short_events++;
		return 0;
	}
	if (reserve(enc, enc->max_record))
		return -ENOMEM;
	enc->len = (size_t)(encode_one(enc, data, size, enc->out + enc->len) - enc->out);
	enc->events++;
	return 0;
}

/* Encode `count` events laid end to end (for tests and files of raw events). */
int bpfdepot_encode_batch(struct bpfdepot_encoder *enc, const void *data, size_t size, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		int err = bpfdepot_encode_sample(enc, (char *)data + i * size, size);

		if (err)
			return err;
	}
	return 0;
}

void bpfdepot_encoder_free(struct bpfdepot_encoder *enc)
{
	free(enc->out);
	enc->out = NULL;
	enc->len = enc->cap = 0;
}

/* Add `map_fd` to a ring-buffer manager (creating it on first use) with the JSON encoder. */
struct ring_buffer *bpfdepot_ring_add(struct ring_buffer *rb, int map_fd, struct bpfdepot_encoder *enc)
{
	if (!rb)
		return ring_buffer__new(map_fd, bpfdepot_encode_sample, enc, NULL);
	if (ring_buffer__add(rb, map_fd, bpfdepot_encode_sample, enc))
		return NULL;
	return rb;
}
