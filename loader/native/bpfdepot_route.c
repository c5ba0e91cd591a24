/* bpfdepot_route.c: events to user_so processors and their records back, in C.
 *
 * The loader side (bpfdepot_channel_sample) runs inside libbpf's ring-buffer callback: each
 * event of a channel with processor routes is framed into the input buffer of one worker per
 * route, chosen by a hash of the route's key field, so one key always meets the same worker and
 * keeps its order. Python moves whole buffers to the workers' pipes.
 *
 * The worker side (bpfdepot_host_run) is the main loop of a processor host process
 * (loader/processors/host.py): it reads input frames from a pipe, calls the library's pre/process/post,
 * and writes one output frame per event (rc, key, record) to another pipe. A shared page tells
 * the loader how many events were handled and whether user code is running, so that after a
 * crash or a hang the loader knows exactly which event killed the worker and which to resend.
 * On a fatal signal the host writes out the records it already has before it dies.
 *
 * Frames, little-endian, unaligned:
 *   in:  u32 size, u16 route, u16 key_len, u64 ts_ns, key_len bytes of key, size bytes of event
 *   out: u32 marker (BPFDEPOT_OUT_MARKER), u32 seq (the input event's ordinal in this host, from
 *        0), u32 len, u16 key_len, u8 route, s8 rc, key_len bytes of key, len bytes of record
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "bpfdepot_native.h"

/* ---- loader side: dispatch ------------------------------------------------------------- */

static int wbuf_reserve(struct bpfdepot_wbuf *w, size_t need)
{
	size_t cap = w->cap ? w->cap : 1u << 18;
	char *buf;

	if (w->len + need <= w->cap)
		return 0;
	while (cap < w->len + need)
		cap *= 2;
	buf = realloc(w->buf, cap);
	if (!buf)
		return -ENOMEM;
	w->buf = buf;
	w->cap = cap;
	return 0;
}

void bpfdepot_wbuf_free(struct bpfdepot_wbuf *w)
{
	free(w->buf);
	w->buf = NULL;
	w->len = w->cap = 0;
}

static inline uint64_t fnv1a(const unsigned char *p, unsigned int n)
{
	uint64_t h = 1469598103934665603ull;

	for (unsigned int i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ull;
	return h;
}

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The key as text: the field through the JSON encoder, without the quotes of strings. */
static unsigned int key_text(const struct bpfdepot_route *r, const unsigned char *d, char *out)
{
	char *end = bpfdepot_encode_fields(&r->key, d, (size_t)-1, out); /* key_end was checked */
	unsigned int n = (unsigned int)(end - out);

	if (n >= 2 && out[0] == '"') {
		memmove(out, out + 1, n - 2);
		n -= 2;
	}
	return n;
}

/* libbpf ring_buffer_sample_fn for a channel with processor routes (or none: default decoding). */
int bpfdepot_channel_sample(void *ctx, void *data, size_t size)
{
	struct bpfdepot_channel *ch = ctx;
	uint64_t ts = 0;

	ch->events++;
	if (ch->enc)
		return bpfdepot_encode_sample(ch->enc, data, size);
	if (size < ch->event_size)
		ch->short_events++; /* handed on all the same: the processor checks ev->size */
	for (unsigned int i = 0; i < ch->nroutes; i++) {
		struct bpfdepot_route *r = &ch->routes[i];
		struct bpfdepot_wbuf *w;
		char key[BPFDEPOT_KEY_MAX];
		unsigned int key_len = 0, worker;
		char *p;

		if (r->key.nops && size >= r->key_end) {
			const struct bpfdepot_op *op = &r->key.ops[0];

			if (r->key_text) /* else nothing reads it: no encoding, no bytes in the pipes */
				key_len = key_text(r, data, key);
			worker = (unsigned int)(fnv1a((const unsigned char *)data + op->offset,
						      r->key_bytes) % r->nworkers);
		} else {
			worker = r->next++ % r->nworkers;
		}
		w = r->workers[worker];
		if (!ts)
			ts = now_ns();
		if (wbuf_reserve(w, 16 + key_len + size))
			return -ENOMEM;
		p = w->buf + w->len;
		uint32_t size32 = (uint32_t)size;
		uint16_t route16 = (uint16_t)r->index, key16 = (uint16_t)key_len;
		memcpy(p, &size32, 4);
		memcpy(p + 4, &route16, 2);
		memcpy(p + 6, &key16, 2);
		memcpy(p + 8, &ts, 8);
		memcpy(p + 16, key, key_len);
		memcpy(p + 16 + key_len, data, size);
		w->len += 16 + key_len + size;
		w->events++;
		r->sent++;
	}
	return 0;
}

struct ring_buffer *bpfdepot_ring_add_channel(struct ring_buffer *rb, int map_fd,
					      struct bpfdepot_channel *ch)
{
	if (!rb)
		return ring_buffer__new(map_fd, bpfdepot_channel_sample, ch, NULL);
	if (ring_buffer__add(rb, map_fd, bpfdepot_channel_sample, ch))
		return NULL;
	return rb;
}

/* The longest run of whole input frames at `data` within `max_bytes` and `max_frames`:
 * returns its bytes and sets *frames. */
size_t bpfdepot_frames_span(const char *data, size_t len, size_t max_bytes, uint64_t max_frames,
			    uint64_t *frames)
{
	size_t at = 0;
	uint64_t n = 0;

	if (max_bytes > len)
		max_bytes = len;
	while (n < max_frames && max_bytes - at >= 16) {
		uint32_t size;
		uint16_t key_len;

		memcpy(&size, data + at, 4);
		memcpy(&key_len, data + at + 6, 2);
		if (max_bytes - at < 16u + key_len + size)
			break;
		at += 16u + key_len + size;
		n++;
	}
	*frames = n;
	return at;
}

/* Stop parsing a worker's output at the frame `at` bytes into this call's data: say why and
 * where in the stream. */
static size_t violation(struct bpfdepot_results *res, size_t at, int why, uint64_t value)
{
	res->violation = why;
	res->violation_at = res->offset + at;
	res->violation_value = value;
	res->offset += at;
	return at;
}

/* Split a worker's output into, per route, records as lines and keys as lines. Whole frames
 * only; returns the bytes consumed. A record or key holding a newline cannot be framed as a
 * line: it is counted in `bad` and left out.
 *
 * The user code runs in the host process and can write into this pipe itself, so every header
 * is held to what the host writes: the marker, the next sequence number, lengths within the
 * host's buffers, a route of this worker and rc -1, 0 or 1. The first frame that fails stops
 * parsing for good (res->violation; nothing after it can be trusted): the loader kills the
 * worker. The header is checked before the body is waited for, so a huge length cannot stall. */
size_t bpfdepot_results_feed(struct bpfdepot_results *res, const char *data, size_t len)
{
	size_t at = 0;

	if (res->violation)
		return 0;
	while (len - at >= BPFDEPOT_OUT_HEADER) {
		uint32_t marker, seq, vlen;
		uint16_t klen;
		uint8_t route;
		int8_t rc;
		const char *key, *value;

		memcpy(&marker, data + at, 4);
		memcpy(&seq, data + at + 4, 4);
		memcpy(&vlen, data + at + 8, 4);
		memcpy(&klen, data + at + 12, 2);
		route = (uint8_t)data[at + 14];
		rc = (int8_t)data[at + 15];
		if (marker != BPFDEPOT_OUT_MARKER)
			return violation(res, at, BPFDEPOT_FRAME_MARKER, marker);
		if (seq != (uint32_t)res->frames)
			return violation(res, at, BPFDEPOT_FRAME_SEQ, seq);
		if (vlen > BPFDEPOT_RESULT_CAP)
			return violation(res, at, BPFDEPOT_FRAME_LEN, vlen);
		if (klen > BPFDEPOT_KEY_MAX)
			return violation(res, at, BPFDEPOT_FRAME_KEY_LEN, klen);
		if (route >= res->nroutes)
			return violation(res, at, BPFDEPOT_FRAME_ROUTE, route);
		if (rc < -1 || rc > 1)
			return violation(res, at, BPFDEPOT_FRAME_RC, (uint64_t)(int64_t)rc);
		if (len - at - BPFDEPOT_OUT_HEADER < (size_t)klen + vlen)
			break;
		key = data + at + BPFDEPOT_OUT_HEADER;
		value = key + klen;
		at += BPFDEPOT_OUT_HEADER + (size_t)klen + vlen;
		res->frames++;
		struct bpfdepot_route_out *o = &res->routes[route];

		if (rc == 1) {
			o->dropped++;
		} else if (rc != 0) {
			o->errors++;
		} else if (memchr(value, '\n', vlen) || memchr(key, '\n', klen) || !vlen) {
			o->bad++;
		} else {
			if (wbuf_reserve(&o->lines, (size_t)vlen + 1) ||
			    (res->keys && wbuf_reserve(&o->keys, (size_t)klen + 1)))
				return (size_t)-1;
			memcpy(o->lines.buf + o->lines.len, value, vlen);
			o->lines.len += vlen;
			o->lines.buf[o->lines.len++] = '\n';
			if (res->keys) {
				memcpy(o->keys.buf + o->keys.len, key, klen);
				o->keys.len += klen;
				o->keys.buf[o->keys.len++] = '\n';
			}
			o->kept++;
		}
	}
	res->offset += at;
	return at;
}

/* ---- worker side: the processor host loop --------------------------------------------- */

#define IN_CAP (4u << 20)   /* bytes of input read at a time (and the largest event) */
#define OUT_FLUSH (1u << 18) /* write the output when this much has gathered */

static char *out_buf;
static volatile size_t out_len; /* bytes of whole frames in out_buf */
static int out_fd = -1;
static struct bpfdepot_progress *progress;

static void write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

static void flush_out(void)
{
	write_all(out_fd, out_buf, out_len);
	out_len = 0;
}

/* A fatal signal or the loader's hang signal: hand over the finished records, then die of it.
 * out_len only counts whole frames, so this never writes half of one. */
static void on_fatal(int sig)
{
	if (out_len)
		write_all(out_fd, out_buf, out_len);
	signal(sig, SIG_DFL);
	raise(sig);
}

static void install_handlers(void)
{
	static const int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGUSR1};
	static char alt[1 << 16]; /* a stack overflow still reaches the handler */
	stack_t ss = {.ss_sp = alt, .ss_size = sizeof(alt)};
	struct sigaction sa;

	sigaltstack(&ss, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_fatal;
	sa.sa_flags = SA_ONSTACK | SA_NODEFER;
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
}

static int fail(const char *fmt, const char *a, const char *b)
{
	fprintf(stderr, fmt, a, b);
	fputc('\n', stderr);
	return BPFDEPOT_HOST_SETUP;
}

int bpfdepot_host_run(const struct bpfdepot_host_args *args)
{
	bpfdepot_process_fn_t *process[256];
	bpfdepot_pre_fn_t *pre = NULL;
	bpfdepot_post_fn_t *post = NULL;
	uint32_t (*version)(void);
	int (*init)(const char *);
	static char key[BPFDEPOT_KEY_MAX];
	char *in, *result;
	size_t have = 0;
	uint32_t seq = 0; /* events answered: the next output frame's sequence number */
	void *lib;

	if (args->nroutes > 256)
		return fail("%s: %s", args->label, "more than 256 routes");
	progress = mmap(NULL, sizeof(*progress), PROT_READ | PROT_WRITE, MAP_SHARED, args->shm_fd, 0);
	if (progress == MAP_FAILED)
		return fail("%s: cannot map the progress page: %s", args->label, strerror(errno));
	out_fd = args->out_fd;
	install_handlers(); /* before dlopen: a Go runtime chains to handlers it finds installed */
	lib = dlopen(args->so_path, RTLD_NOW | RTLD_LOCAL);
	if (!lib)
		return fail("%s: cannot load the library: %s", args->label, dlerror());
	version = (uint32_t(*)(void))dlsym(lib, "bpfdepot_abi_version");
	if (!version)
		return fail("%s: %s", args->label, "no bpfdepot_abi_version(): not a bpfdepot processor");
	progress->abi = version();
	if (progress->abi != args->abi) {
		char text[64];

		snprintf(text, sizeof(text), "%u, the host speaks %u", progress->abi, args->abi);
		return fail("%s: processor ABI %s", args->label, text);
	}
	init = (int (*)(const char *))dlsym(lib, args->init);
	if (!init)
		return fail("%s: no init function %s", args->label, args->init);
	for (unsigned int i = 0; i < args->nroutes; i++) {
		process[i] = (bpfdepot_process_fn_t *)dlsym(lib, args->process[i]);
		if (!process[i])
			return fail("%s: no function %s", args->label, args->process[i]);
	}
	if (args->pre && !(pre = (bpfdepot_pre_fn_t *)dlsym(lib, args->pre)))
		return fail("%s: no pre function %s", args->label, args->pre);
	if (args->post && !(post = (bpfdepot_post_fn_t *)dlsym(lib, args->post)))
		return fail("%s: no post function %s", args->label, args->post);
	progress->in_user = 1;
	int rc = init(args->initfile);
	progress->in_user = 0;
	if (rc != 0) {
		char text[32];

		snprintf(text, sizeof(text), "%d", rc);
		fprintf(stderr, "%s: init(%s) returned %s\n", args->label,
			args->initfile ? args->initfile : "NULL", text);
		return BPFDEPOT_HOST_INIT;
	}
	in = malloc(IN_CAP);
	out_buf = malloc(OUT_FLUSH + BPFDEPOT_RESULT_CAP + BPFDEPOT_KEY_MAX + 64);
	result = malloc(BPFDEPOT_RESULT_CAP);
	if (!in || !out_buf || !result)
		return fail("%s: %s", args->label, "out of memory");
	__atomic_store_n(&progress->ready, 1, __ATOMIC_RELEASE);

	for (;;) {
		ssize_t n = read(args->in_fd, in + have, IN_CAP - have);
		size_t at = 0;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break; /* the loader closed the pipe: done */
		have += (size_t)n;
		while (have - at >= 16) {
			uint32_t size;
			uint16_t route, key_len;
			uint64_t ts;

			memcpy(&size, in + at, 4);
			memcpy(&route, in + at + 4, 2);
			memcpy(&key_len, in + at + 6, 2);
			memcpy(&ts, in + at + 8, 8);
			if (16u + key_len + size > IN_CAP || route >= args->nroutes) {
				fprintf(stderr, "%s: corrupt input frame\n", args->label);
				flush_out();
				return BPFDEPOT_HOST_PROTOCOL;
			}
			if (have - at < 16u + key_len + size)
				break;
			struct bpfdepot_event ev = {
				.data = in + at + 16 + key_len, .channel = args->channels[route],
				.ts_ns = ts, .size = size, .cpu = UINT32_MAX,
			};
			struct bpfdepot_result res = {
				.data = result, .key = key, .cap = BPFDEPOT_RESULT_CAP, .key_cap = sizeof(key),
			};
			progress->in_user = 1;
			rc = pre ? pre(&ev) : 0;
			if (rc == 0)
				rc = process[route](&ev, &res);
			if (post)
				rc = post(&ev, &res, rc);
			progress->in_user = 0;
			if (rc != 0 || res.len > res.cap || res.key_len > res.key_cap) {
				res.len = 0;
				res.key_len = 0;
				if (rc == 0)
					rc = -1; /* wrote past the buffer: an error, never a cut record */
			} else if (!res.key_len && key_len) {
				memcpy(key, in + at + 16, key_len); /* the route's hash field */
				res.key_len = key_len;
			}
			char *p = out_buf + out_len;
			uint32_t marker = BPFDEPOT_OUT_MARKER, vlen = res.len;
			uint16_t klen = (uint16_t)res.key_len;

			memcpy(p, &marker, 4);
			memcpy(p + 4, &seq, 4);
			memcpy(p + 8, &vlen, 4);
			memcpy(p + 12, &klen, 2);
			p[14] = (char)route;
			p[15] = (char)(rc == 0 ? 0 : rc == 1 ? 1 : -1);
			memcpy(p + BPFDEPOT_OUT_HEADER, key, klen);
			memcpy(p + BPFDEPOT_OUT_HEADER + klen, result, vlen);
			/* one store: the frame is whole from here on */
			out_len += BPFDEPOT_OUT_HEADER + klen + vlen;
			seq++;
			progress->handled++;
			at += 16u + key_len + size;
			if (out_len >= OUT_FLUSH)
				flush_out();
		}
		memmove(in, in + at, have - at);
		have -= at;
		flush_out(); /* before waiting for more: the loader sees records promptly */
	}
	flush_out();
	return 0;
}
