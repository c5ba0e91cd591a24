/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* l7_http2.h: HTTP/2 and gRPC calls from the HEADERS frames of l7_event (kind L7_FRAME), with a
 * per-connection HPACK state. Included once, by l7_user.c (the processor is one translation unit).
 *
 * The kernel side sends, per HTTP/2 connection and in order, the client preface and every HEADERS
 * (type 1) and CONTINUATION (type 9) frame of both directions. Here, per connection:
 *   - the preface starts (or restarts) the connection: fresh HPACK tables, no streams;
 *   - HEADERS + CONTINUATIONs are joined into one header block (RFC 9113 §4.3) and decoded with
 *     the HPACK table of their direction (hpack.h): each direction is one encoder/decoder pair;
 *   - the first block of a stream is its request (role from its direction), later blocks in the
 *     other direction are the response headers and trailers; the call completes at the response
 *     block with END_STREAM or grpc-status, or at a non-gRPC response's first (final) headers.
 * HPACK is stateful: a block that cannot be decoded (a frame the kernel truncated, an encoding
 * error) leaves that direction's table out of step with the peer's encoder, and every later
 * index into it could name the wrong header. Such a connection is marked lost and its frames are
 * rejected until the next preface. Connections whose preface was not seen (they began before
 * capture, or were evicted) are rejected for the same reason.
 *
 * Everything is bounded: L7_H2_CONNS connections (least recently used evicted), L7_H2_STREAMS
 * pending streams per connection (oldest evicted), L7_H2_BLOCK_MAX bytes per header block,
 * L7_H2_LIST_MAX bytes of decoded header list, HPACK tables <= HPACK_TABLE_LIMIT. What is evicted
 * is counted in l7_h2_stats. Single-threaded: the state is process-global. */
#ifndef __L7_HTTP2_H
#define __L7_HTTP2_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "l7.h"
#include "hpack.h"

#define L7_H2_CONNS 4096      /* connections followed at once */
#define L7_H2_STREAMS 128     /* pending (unanswered) streams per connection */
#define L7_H2_BLOCK_MAX 16384 /* bytes of one header block (HEADERS + CONTINUATIONs) */
#define L7_H2_LIST_MAX 16384  /* decoded header list size (name + value + 32 per field, RFC 9113 §6.5.2) */
#define L7_H2_HASH 8192       /* buckets of the connection index (power of two) */

#define L7_H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define L7_H2_PREFACE_LEN 24

/* Frame types and flags used here (RFC 9113 §6.2, §6.10). */
#define L7_H2_HEADERS 1
#define L7_H2_CONTINUATION 9
#define L7_H2_END_STREAM 0x1
#define L7_H2_END_HEADERS 0x4
#define L7_H2_PADDED 0x8
#define L7_H2_PRIORITY 0x20

/* One completed HTTP/2 call (a stream whose response headers ended it). */
struct l7_h2_call {
	char method[16];     /* :method, NUL-terminated */
	char path[256];      /* :path, NUL-terminated, cut at 255 bytes (path_cut says so) */
	char authority[128]; /* :authority, may be empty */
	int status;          /* :status of the response; 0 when none */
	int grpc_status;     /* grpc-status; -1 when the response has none (not gRPC) */
	uint32_t stream;     /* stream id */
	uint64_t latency_ns; /* request HEADERS ts -> the response HEADERS that ended the stream */
	uint8_t role;        /* enum l7_role: L7_CLIENT when this process sent the request */
	uint8_t path_cut;    /* 1: path longer than the buffer */
	uint8_t grpc;        /* 1: content-type application/grpc* on the request or the response */
	uint8_t __pad;
	uint32_t req_size;   /* bytes of the request header block (HEADERS + CONTINUATION frames) */
	uint32_t resp_size;  /* bytes of the response header blocks up to the one that ended the call */
	char grpc_message[128]; /* grpc-message (percent-encoded as sent), may be empty */
};

/* What the parser had to give up, for the processor to report (never dropped silently). */
struct l7_h2_stats {
	uint64_t calls;            /* calls completed */
	uint64_t rejected;         /* frames rejected (l7_h2_frame returned -1) */
	uint64_t conns_lost;       /* connections whose HPACK state was lost (truncated or bad block) */
	uint64_t conns_evicted;    /* connections evicted to make room (LRU) */
	uint64_t streams_evicted;  /* pending requests dropped: too many pending, or their connection evicted/restarted */
};

static struct l7_h2_stats l7_h2_stats __attribute__((unused));

/* A stream whose request was seen. */
struct l7_h2_stream {
	uint32_t id;
	uint8_t state;       /* L7_H2_S_* */
	uint8_t req_dir;     /* enum l7_dir of its request */
	uint8_t grpc;
	uint8_t path_cut;
	int status;
	uint64_t ts_ns;      /* request block's first frame */
	uint64_t seq;        /* arrival order, for evicting the oldest */
	uint32_t req_size;
	uint32_t resp_size;
	char method[16];
	char path[256];
	char authority[128];
};

enum { L7_H2_S_FREE = 0, L7_H2_S_PENDING = 1, L7_H2_S_DONE = 2 /* answered; absorbs trailers */ };

/* A header block being assembled in one direction. */
struct l7_h2_block {
	uint8_t *buf;        /* L7_H2_BLOCK_MAX bytes while a multi-frame block is open, else NULL */
	uint32_t len;
	uint32_t stream;     /* 0: no block open */
	uint32_t wire;       /* frame bytes (headers included) of the block so far */
	uint8_t end_stream;
	uint64_t ts_ns;
};

struct l7_h2_conn {
	uint64_t conn;
	uint64_t used;                /* LRU tick */
	int next;                     /* hash chain: slot + 1 of the next, 0 ends */
	uint8_t live;
	const char *lost;             /* non-NULL: HPACK state lost, why */
	struct hpack_table tab[2];    /* [dir - 1]: the decoder of each direction */
	struct l7_h2_block blk[2];
	struct l7_h2_stream *streams; /* grown by doubling up to L7_H2_STREAMS */
	uint32_t nstreams;            /* slots allocated in streams */
	uint64_t seq;
};

static struct l7_h2_conn *l7_h2_conns; /* L7_H2_CONNS slots, allocated on first use */
static int l7_h2_index[L7_H2_HASH];   /* bucket -> slot + 1 (0: empty) */
static uint64_t l7_h2_tick;
static int l7_h2_nconns;              /* slots handed out so far */

static uint32_t l7_h2_bucket(uint64_t conn)
{
	conn *= 0x9e3779b97f4a7c15ull; /* Fibonacci hashing: pid << 32 | fd keys differ in few bits */
	return (uint32_t)(conn >> 51) & (L7_H2_HASH - 1);
}

static struct l7_h2_conn *l7_h2_find(uint64_t conn)
{
	int i;

	if (!l7_h2_conns)
		return NULL;
	for (i = l7_h2_index[l7_h2_bucket(conn)]; i; i = l7_h2_conns[i - 1].next)
		if (l7_h2_conns[i - 1].conn == conn)
			return &l7_h2_conns[i - 1];
	return NULL;
}

/* Forget a connection's streams and tables (its slot stays indexed). */
static void l7_h2_clear(struct l7_h2_conn *c)
{
	int d;
	uint32_t i;

	for (i = 0; i < c->nstreams; i++)
		if (c->streams[i].state == L7_H2_S_PENDING)
			l7_h2_stats.streams_evicted++;
	free(c->streams);
	c->streams = NULL;
	c->nstreams = 0;
	for (d = 0; d < 2; d++) {
		hpack_table_free(&c->tab[d]);
		free(c->blk[d].buf);
		memset(&c->blk[d], 0, sizeof(c->blk[d]));
	}
	c->lost = NULL;
}

static void l7_h2_unlink(struct l7_h2_conn *c)
{
	int slot = (int)(c - l7_h2_conns), *p = &l7_h2_index[l7_h2_bucket(c->conn)];

	while (*p && *p - 1 != slot)
		p = &l7_h2_conns[*p - 1].next;
	if (*p)
		*p = c->next;
}

/* The connection's state, fresh: reuses its slot, a free slot, or the least recently used. */
static struct l7_h2_conn *l7_h2_start(uint64_t conn)
{
	struct l7_h2_conn *c = l7_h2_find(conn);
	int i, slot = -1;
	uint32_t b;

	if (c) {
		l7_h2_clear(c);
		return c;
	}
	if (!l7_h2_conns) {
		l7_h2_conns = calloc(L7_H2_CONNS, sizeof(*l7_h2_conns));
		if (!l7_h2_conns)
			return NULL;
	}
	if (l7_h2_nconns < L7_H2_CONNS) {
		slot = l7_h2_nconns++; /* slots are never freed, only reused: the next one is free */
	} else {
		for (i = 0; i < L7_H2_CONNS; i++) /* full: evict the least recently used */
			if (slot < 0 || l7_h2_conns[i].used < l7_h2_conns[slot].used)
				slot = i;
	}
	c = &l7_h2_conns[slot];
	if (c->live) {
		l7_h2_stats.conns_evicted++;
		l7_h2_clear(c);
		l7_h2_unlink(c);
	}
	memset(c, 0, sizeof(*c));
	hpack_table_init(&c->tab[0]);
	hpack_table_init(&c->tab[1]);
	c->conn = conn;
	c->live = 1;
	b = l7_h2_bucket(conn);
	c->next = l7_h2_index[b];
	l7_h2_index[b] = slot + 1;
	return c;
}

/* Free every connection (for tests and the processor's exit). */
__attribute__((unused)) static void l7_h2_reset_all(void)
{
	int i;

	for (i = 0; l7_h2_conns && i < L7_H2_CONNS; i++)
		if (l7_h2_conns[i].live)
			l7_h2_clear(&l7_h2_conns[i]);
	free(l7_h2_conns);
	l7_h2_conns = NULL;
	l7_h2_nconns = 0;
	memset(l7_h2_index, 0, sizeof(l7_h2_index));
}

/* The fields of one decoded header block that matter here. */
struct l7_h2_fields {
	char method[16];
	char path[256];
	char authority[128];
	char content_type[64];
	char grpc_message[128];
	int status;         /* -1: absent */
	int grpc_status;    /* -1: absent */
	uint8_t path_cut;
	uint8_t has_method;
	uint8_t has_path;
	uint8_t regular;    /* a regular field was seen: pseudo-fields after it are malformed */
	uint32_t list_size;
	const char *bad;    /* malformed (not an HPACK error: the table is still in step) */
};

/* Copy a value into a NUL-terminated buffer; returns 1 when it was cut. */
static int l7_h2_copy(char *dst, size_t room, const char *src, uint32_t n)
{
	size_t k = n < room - 1 ? n : room - 1;

	memcpy(dst, src, k);
	dst[k] = '\0';
	return k < n;
}

/* A decimal number of 1..3 digits, else -1 (grpc-status and :status are small). */
static int l7_h2_number(const char *s, uint32_t n)
{
	int v = 0;
	uint32_t i;

	if (n == 0 || n > 3)
		return -1;
	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

static int l7_h2_is(const struct hpack_field *f, const char *name)
{
	return f->name_len == strlen(name) && !memcmp(f->name, name, f->name_len);
}

/* hpack_emit_fn: keep the fields of interest. Never stops the walk: the block must be decoded to
 * its end for the table to stay in step, whatever it holds. */
static int l7_h2_collect(void *ctx, const struct hpack_field *f)
{
	struct l7_h2_fields *h = ctx;

	h->list_size += f->name_len + f->value_len + HPACK_ENTRY_OVERHEAD;
	if (h->list_size > L7_H2_LIST_MAX && !h->bad)
		h->bad = "header list larger than 16384 bytes";
	if (f->name_len && f->name[0] == ':') {
		if (h->regular && !h->bad)
			h->bad = "pseudo-header after a regular header (RFC 9113 §8.3)";
	} else {
		h->regular = 1;
	}
	if (l7_h2_is(f, ":method")) {
		if (h->has_method && !h->bad)
			h->bad = "two :method pseudo-headers";
		h->has_method = 1;
		if (l7_h2_copy(h->method, sizeof(h->method), f->value, f->value_len) && !h->bad)
			h->bad = ":method longer than 15 bytes";
	} else if (l7_h2_is(f, ":path")) {
		if (h->has_path && !h->bad)
			h->bad = "two :path pseudo-headers";
		h->has_path = 1;
		h->path_cut = (uint8_t)l7_h2_copy(h->path, sizeof(h->path), f->value, f->value_len);
		if (f->value_len == 0 && !h->bad)
			h->bad = "empty :path";
	} else if (l7_h2_is(f, ":authority")) {
		l7_h2_copy(h->authority, sizeof(h->authority), f->value, f->value_len);
	} else if (l7_h2_is(f, ":status")) {
		h->status = l7_h2_number(f->value, f->value_len);
		if ((h->status < 100 || f->value_len != 3) && !h->bad)
			h->bad = ":status is not a 3-digit code";
	} else if (l7_h2_is(f, "content-type")) {
		l7_h2_copy(h->content_type, sizeof(h->content_type), f->value, f->value_len);
	} else if (l7_h2_is(f, "grpc-status")) {
		h->grpc_status = l7_h2_number(f->value, f->value_len);
		if (h->grpc_status < 0 && !h->bad)
			h->bad = "grpc-status is not a number";
	} else if (l7_h2_is(f, "grpc-message")) {
		l7_h2_copy(h->grpc_message, sizeof(h->grpc_message), f->value, f->value_len);
	}
	return 0;
}

/* RFC 9110 §5.6.2 token characters. */
static int l7_h2_token(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
		      strchr("!#$%&'*+-.^_`|~", *s)))
			return 0;
	return 1;
}

static int l7_h2_is_grpc(const char *content_type)
{
	return !strncmp(content_type, "application/grpc", 16);
}

static struct l7_h2_stream *l7_h2_stream_find(struct l7_h2_conn *c, uint32_t id)
{
	uint32_t i;

	for (i = 0; i < c->nstreams; i++)
		if (c->streams[i].state != L7_H2_S_FREE && c->streams[i].id == id)
			return &c->streams[i];
	return NULL;
}

/* A slot for a new stream: a free one, else the oldest answered, else the oldest pending (counted). */
static struct l7_h2_stream *l7_h2_stream_new(struct l7_h2_conn *c)
{
	struct l7_h2_stream *s = NULL, *done = NULL, *old = NULL;
	uint32_t i;

	for (i = 0; i < c->nstreams && !s; i++) {
		struct l7_h2_stream *t = &c->streams[i];

		if (t->state == L7_H2_S_FREE)
			s = t;
		else if (t->state == L7_H2_S_DONE && (!done || t->seq < done->seq))
			done = t;
		else if (t->state == L7_H2_S_PENDING && (!old || t->seq < old->seq))
			old = t;
	}
	if (!s && c->nstreams < L7_H2_STREAMS) {
		/* most connections have a few streams open at once: start at 4 slots, double */
		uint32_t n = c->nstreams ? 2 * c->nstreams : 4;
		struct l7_h2_stream *grown = realloc(c->streams, n * sizeof(*grown));

		if (!grown)
			return NULL;
		memset(grown + c->nstreams, 0, (n - c->nstreams) * sizeof(*grown));
		s = grown + c->nstreams;
		c->streams = grown;
		c->nstreams = n;
	}
	if (!s && !(s = done)) {
		s = old;
		l7_h2_stats.streams_evicted++;
	}
	memset(s, 0, sizeof(*s));
	s->seq = ++c->seq;
	return s;
}

static char l7_h2_why_buf[160];

/* Mark the connection lost (HPACK state unknown until the next preface) and say why. */
static int l7_h2_lose(struct l7_h2_conn *c, const char *why, const char **out)
{
	if (!c->lost)
		l7_h2_stats.conns_lost++;
	c->lost = why;
	snprintf(l7_h2_why_buf, sizeof(l7_h2_why_buf), "%s: connection's HPACK state lost until the next preface",
		 why);
	*out = l7_h2_why_buf;
	l7_h2_stats.rejected++;
	return -1;
}

static int l7_h2_reject(const char *why, const char **out)
{
	*out = why;
	l7_h2_stats.rejected++;
	return -1;
}

/* A complete header block (bytes, n) of direction dir: a request, a response or trailers. */
static int l7_h2_block_done(struct l7_h2_conn *c, int dir, struct l7_h2_block *blk,
			    const uint8_t *bytes, uint32_t n, struct l7_h2_call *call, const char **why)
{
	struct l7_h2_fields h;
	struct l7_h2_stream *s;
	const char *err = NULL;
	uint32_t id = blk->stream;
	int r;

	memset(&h, 0, sizeof(h));
	h.status = h.grpc_status = -1;
	r = hpack_decode(&c->tab[dir - 1], bytes, n, l7_h2_collect, &h, &err);
	blk->stream = 0;
	free(blk->buf); /* held only while a block spans frames: 16 KiB x 2 x 4096 otherwise */
	blk->buf = NULL;
	if (r)
		return l7_h2_lose(c, err, why);
	s = l7_h2_stream_find(c, id);
	if (!s) {
		/* The first block of a stream is its request. Validate it fully, so that bytes that only
		 * look like frames (OBI PR #932) never become calls. */
		if (h.bad)
			return l7_h2_reject(h.bad, why);
		if (!h.has_method)
			return l7_h2_reject("header block without :method on a new stream: not a request "
					    "(its request was not seen)", why);
		if (!l7_h2_token(h.method))
			return l7_h2_reject(":method is not an HTTP token", why);
		if (h.status >= 0)
			return l7_h2_reject(":status in a request", why);
		if (!h.has_path)
			return l7_h2_reject("request without :path (CONNECT is not followed)", why);
		if (h.path[0] != '/' && !(!strcmp(h.path, "*") && !strcmp(h.method, "OPTIONS")))
			return l7_h2_reject(":path does not start with '/' (nor is '*' for OPTIONS)", why);
		if (!(id & 1))
			return l7_h2_reject("request on an even stream id (clients open odd ones)", why);
		s = l7_h2_stream_new(c);
		if (!s)
			return l7_h2_reject("out of memory", why);
		s->id = id;
		s->state = L7_H2_S_PENDING;
		s->req_dir = (uint8_t)dir;
		s->grpc = (uint8_t)l7_h2_is_grpc(h.content_type);
		s->path_cut = h.path_cut;
		s->ts_ns = blk->ts_ns;
		s->req_size = blk->wire;
		memcpy(s->method, h.method, sizeof(s->method));
		memcpy(s->path, h.path, sizeof(s->path));
		memcpy(s->authority, h.authority, sizeof(s->authority));
		return 0;
	}
	if (dir == s->req_dir)
		return 0; /* request trailers: nothing to report */
	if (s->state == L7_H2_S_DONE) {
		/* trailers of a call already reported at its first response headers */
		if (blk->end_stream)
			s->state = L7_H2_S_FREE;
		return 0;
	}
	if (h.bad)
		return l7_h2_reject(h.bad, why);
	if (h.has_method)
		return l7_h2_reject(":method in a response", why);
	s->resp_size += blk->wire;
	if (h.status >= 0) {
		if (h.status < 200 && !blk->end_stream)
			return 0; /* 1xx: informational, the final headers follow */
		s->status = h.status;
	}
	if (l7_h2_is_grpc(h.content_type))
		s->grpc = 1;
	/* gRPC ends with trailers (grpc-status, END_STREAM); plain HTTP/2 at its final headers. */
	if (!blk->end_stream && h.grpc_status < 0 && s->grpc)
		return 0;
	memset(call, 0, sizeof(*call));
	memcpy(call->method, s->method, sizeof(call->method));
	memcpy(call->path, s->path, sizeof(call->path));
	memcpy(call->authority, s->authority, sizeof(call->authority));
	memcpy(call->grpc_message, h.grpc_message, sizeof(call->grpc_message));
	call->status = s->status;
	call->grpc_status = h.grpc_status;
	call->stream = s->id;
	call->latency_ns = blk->ts_ns > s->ts_ns ? blk->ts_ns - s->ts_ns : 0;
	call->role = s->req_dir == L7_EGRESS ? L7_CLIENT : L7_SERVER;
	call->path_cut = s->path_cut;
	call->grpc = s->grpc;
	call->req_size = s->req_size;
	call->resp_size = s->resp_size;
	s->state = blk->end_stream ? L7_H2_S_FREE : L7_H2_S_DONE;
	l7_h2_stats.calls++;
	return 1;
}

/* Feed one L7_FRAME event (frames of one connection arrive in order).
 * Returns 1 and fills *call when the frame completed a call, 0 when it only updated state,
 * -1 when the frame is rejected (not HTTP/2, HPACK state lost, bad encoding): *why says why. */
static int l7_h2_frame(const struct l7_event *e, struct l7_h2_call *call, const char **why)
{
	uint32_t n = e->req_len < L7_REQ_MAX ? e->req_len : L7_REQ_MAX, len, sid, off = 9, pad = 0, frag_end;
	const uint8_t *f = e->req;
	struct l7_h2_conn *c;
	struct l7_h2_block *blk;
	uint8_t type, flags;

	*why = NULL;
	if (e->kind != L7_FRAME)
		return l7_h2_reject("not an HTTP/2 frame event (kind is not L7_FRAME)", why);
	if (e->dir != L7_EGRESS && e->dir != L7_INGRESS)
		return l7_h2_reject("HTTP/2 frame event without a direction", why);
	if (n >= L7_H2_PREFACE_LEN && !memcmp(f, L7_H2_PREFACE, L7_H2_PREFACE_LEN)) {
		c = l7_h2_start(e->conn);
		if (!c)
			return l7_h2_reject("out of memory", why);
		c->used = ++l7_h2_tick;
		return 0;
	}
	c = l7_h2_find(e->conn);
	if (!c)
		return l7_h2_reject("no client preface seen on this connection (it began before capture, "
				    "or was evicted): HPACK state unknown", why);
	c->used = ++l7_h2_tick;
	if (e->missed && !c->lost)
		return l7_h2_lose(c, "the kernel side missed frames of this connection before this one",
				  why);
	if (c->lost) {
		snprintf(l7_h2_why_buf, sizeof(l7_h2_why_buf),
			 "connection's HPACK state was lost (%s): waiting for the next preface", c->lost);
		*why = l7_h2_why_buf;
		l7_h2_stats.rejected++;
		return -1;
	}
	if (n < 9)
		return l7_h2_lose(c, "frame event shorter than a frame header", why);
	len = (uint32_t)f[0] << 16 | (uint32_t)f[1] << 8 | f[2];
	type = f[3];
	flags = f[4];
	sid = ((uint32_t)f[5] << 24 | (uint32_t)f[6] << 16 | (uint32_t)f[7] << 8 | f[8]) & 0x7fffffff;
	if (type != L7_H2_HEADERS && type != L7_H2_CONTINUATION)
		return l7_h2_lose(c, "frame is neither HEADERS nor CONTINUATION", why);
	if (9 + len != e->req_size)
		return l7_h2_lose(c, "frame length field disagrees with the frame size seen", why);
	if (sid == 0)
		return l7_h2_lose(c, "header frame on stream 0", why);
	blk = &c->blk[e->dir - 1];
	if (type == L7_H2_HEADERS) {
		if (blk->stream)
			return l7_h2_lose(c, "HEADERS while a header block is open (RFC 9113 §6.10)", why);
		if (flags & L7_H2_PADDED) {
			if (n < 10)
				return l7_h2_lose(c, "frame truncated by the capture", why);
			pad = f[9];
			off++;
		}
		if (flags & L7_H2_PRIORITY)
			off += 5;
		if (off + pad > 9 + len)
			return l7_h2_lose(c, "HEADERS padding or priority longer than the frame", why);
		blk->stream = sid;
		blk->len = blk->wire = 0;
		blk->end_stream = flags & L7_H2_END_STREAM;
		blk->ts_ns = e->ts_ns;
	} else if (blk->stream != sid) {
		return l7_h2_lose(c, "CONTINUATION without an open header block on its stream", why);
	}
	frag_end = 9 + len - pad;
	/* Bytes missing from the copy (only padding may be missing) cannot be decoded, and without
	 * them the table of this direction no longer follows the peer's encoder. */
	if (n < frag_end)
		return l7_h2_lose(c, "frame truncated by the capture", why);
	blk->wire += 9 + len;
	if (type == L7_H2_HEADERS && (flags & L7_H2_END_HEADERS)) /* the common case: one frame */
		return l7_h2_block_done(c, e->dir, blk, f + off, frag_end - off, call, why);
	if (blk->len + (frag_end - off) > L7_H2_BLOCK_MAX)
		return l7_h2_lose(c, "header block larger than 16384 bytes", why);
	if (!blk->buf && !(blk->buf = malloc(L7_H2_BLOCK_MAX)))
		return l7_h2_lose(c, "out of memory", why);
	memcpy(blk->buf + blk->len, f + off, frag_end - off);
	blk->len += frag_end - off;
	if (!(flags & L7_H2_END_HEADERS))
		return 0;
	return l7_h2_block_done(c, e->dir, blk, blk->buf, blk->len, call, why);
}

#endif /* __L7_HTTP2_H */
