// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* l7_user: the C processor of l7 (and of dns_packets and the TLS capture). One l7_event in, one
 * record out, with the keys every L7 program shares:
 *   {"protocol":"http1","role":"client","tls":false,"pid":7795,"comm":"python3","cgroup":1,
 *    "label":0,"peer":"127.0.0.1:8080","latency_us":50123.456,"req_size":73,"resp_size":111,
 *    "method":"GET","path":"/hello","status":200}
 * plus per protocol: mongo "op","collection","db","ok","compressed"; dns "id","qname","qtype",
 * "rcode","answers"; http2 "method","path","status","grpc_status","stream" (l7_http2.h keeps
 * the HPACK state per connection: the route hashes on conn, so one connection meets one worker,
 * in order). "error" only when the call failed. A record that does not fit is an error, never
 * cut; a path cut by the kernel's copy says so ("path_cut":true). */
#include <arpa/inet.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "bpfdepot_processor.h"
#include "l7.h"
#include "l7_http2.h"

BPFDEPOT_PROCESSOR();

int bpfdepot_init(const char *initfile)
{
	(void)initfile;
	return 0;
}

/* A bounded JSON writer: every put checks room; `full` makes the record an error. */
struct out {
	char *p, *end;
	int full;
};

static void put(struct out *o, const char *s, size_t n)
{
	if (o->full || (size_t)(o->end - o->p) < n) {
		o->full = 1;
		return;
	}
	memcpy(o->p, s, n);
	o->p += n;
}

static void puts_(struct out *o, const char *s)
{
	put(o, s, strlen(s));
}

static void putf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(struct out *o, const char *fmt, ...)
{
	char buf[128];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf)) {
		o->full = 1;
		return;
	}
	put(o, buf, n);
}

/* A JSON string of n bytes (stops at NUL): '"' and '\' escaped, control and non-ASCII bytes as
 * \u00XX, as the loader's default decoding writes them. */
static void put_str(struct out *o, const void *v, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *s = v;

	put(o, "\"", 1);
	for (size_t i = 0; i < n && s[i]; i++) {
		unsigned char c = s[i];
		char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};

		if (c == '"' || c == '\\') {
			esc[1] = (char)c;
			put(o, esc, 2);
		} else if (c < 0x20 || c >= 0x7f) {
			put(o, esc, 6);
		} else {
			put(o, (const char *)&c, 1);
		}
	}
	put(o, "\"", 1);
}

static void put_key_str(struct out *o, const char *key, const void *v, size_t n)
{
	putf(o, ",\"%s\":", key);
	put_str(o, v, n);
}

static const char *protocol_name(uint8_t p)
{
	switch (p) {
	case L7_HTTP1: return "http1";
	case L7_MONGO: return "mongo";
	case L7_DNS: return "dns";
	case L7_HTTP2: return "http2";
	}
	return "unknown";
}

/* The keys every record starts with. */
static void put_common(struct out *o, const struct l7_event *e, uint8_t role, uint64_t latency_ns)
{
	char addr[INET6_ADDRSTRLEN];

	putf(o, "{\"protocol\":\"%s\",\"role\":\"%s\",\"tls\":%s,\"pid\":%" PRIu32 ",\"comm\":",
	     protocol_name(e->protocol), role == L7_SERVER ? "server" : "client",
	     e->tls ? "true" : "false", e->pid);
	put_str(o, e->comm, sizeof(e->comm));
	putf(o, ",\"cgroup\":%" PRIu64 ",\"label\":%" PRIu32 ",\"peer\":\"", (uint64_t)e->cgroup,
	     e->label);
	if (e->family == AF_INET && inet_ntop(AF_INET, e->raddr, addr, sizeof(addr)))
		putf(o, "%s:%u", addr, e->rport);
	else if (e->family == AF_INET6 && IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)e->raddr) &&
		 inet_ntop(AF_INET, e->raddr + 12, addr, sizeof(addr)))
		putf(o, "%s:%u", addr, e->rport); /* an IPv4 peer of a dual-stack socket */
	else if (e->family == AF_INET6 && inet_ntop(AF_INET6, e->raddr, addr, sizeof(addr)))
		putf(o, "[%s]:%u", addr, e->rport);
	putf(o, "\",\"latency_us\":%" PRIu64 ".%03" PRIu64 ",\"req_size\":%" PRIu32
	     ",\"resp_size\":%" PRIu32, latency_ns / 1000, latency_ns % 1000, e->req_size,
	     e->resp_size);
}

/* HTTP/1: "METHOD SP PATH SP HTTP/1.x" and "HTTP/1.x SP STATUS SP REASON". */
static int http1(struct out *o, const struct l7_event *e)
{
	const char *req = (const char *)e->req, *resp = (const char *)e->resp;
	size_t n = e->req_len, m = e->resp_len, i = 0, path, plen = 0, r;
	int status = 0, cut;

	while (i < n && req[i] != ' ')
		i++;
	if (i == 0 || i == n || i > 16)
		return -1;
	put_key_str(o, "method", req, i);
	path = ++i;
	while (i < n && req[i] != ' ' && req[i] != '\r' && req[i] != '\n')
		i++;
	plen = i - path;
	cut = i == n; /* the copy ended inside the path */
	put_key_str(o, "path", req + path, plen);
	if (cut)
		puts_(o, ",\"path_cut\":true");
	if (m >= 12 && resp[8] == ' ' && resp[9] >= '0' && resp[9] <= '9' && resp[10] >= '0' &&
	    resp[10] <= '9' && resp[11] >= '0' && resp[11] <= '9')
		status = (resp[9] - '0') * 100 + (resp[10] - '0') * 10 + (resp[11] - '0');
	putf(o, ",\"status\":%d", status);
	if (status >= 500) {
		for (r = 9; r < m && resp[r] != '\r' && resp[r] != '\n'; r++)
			;
		put_key_str(o, "error", resp + 9, r - 9);
	}
	return 0;
}

static uint32_t le32(const uint8_t *p)
{
	return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Bytes of a BSON value of type t at p (n bytes left): 0 when it does not fit or the type is
 * unknown, (size_t)-1 for the types that have no value bytes. */
static size_t bson_value_size(uint8_t t, const uint8_t *p, size_t n)
{
	size_t s;

	switch (t) {
	case 0x01: case 0x09: case 0x11: case 0x12: s = 8; break;
	case 0x02: case 0x0D: case 0x0E: s = n >= 4 ? 4 + (size_t)le32(p) : 0; break;
	case 0x03: case 0x04: case 0x0F: s = n >= 4 ? le32(p) : 0; break;
	case 0x05: s = n >= 4 ? 5 + (size_t)le32(p) : 0; break;
	case 0x07: s = 12; break;
	case 0x08: s = 1; break;
	case 0x0A: case 0x7F: case 0xFF: return (size_t)-1; /* null, min and max key: no bytes */
	case 0x10: s = 4; break;
	case 0x13: s = 16; break;
	default: return 0;
	}
	return s && s <= n ? s : 0;
}

struct mongo_doc {
	const char *op;       /* the first key: the command name */
	const uint8_t *coll;  /* its string value (the collection), if a string */
	size_t coll_len;
	const uint8_t *db;    /* "$db" */
	size_t db_len;
	const uint8_t *errmsg;
	size_t errmsg_len;
	double ok;
	int has_ok;
	size_t op_len;
};

/* Walk the top-level elements of one BSON document (stops where the copy ends). */
static void bson_walk(const uint8_t *p, size_t n, struct mongo_doc *d)
{
	size_t i = 4, first = 1;

	if (n < 5)
		return;
	while (i < n && p[i] != 0) {
		uint8_t t = p[i++];
		const char *key = (const char *)p + i;
		size_t klen = strnlen(key, n - i), vs;
		const uint8_t *v;

		if (i + klen >= n)
			return; /* cut inside the key */
		i += klen + 1;
		v = p + i;
		vs = bson_value_size(t, v, n - i);
		if (vs == (size_t)-1)
			vs = 0;
		else if (vs == 0)
			vs = (size_t)-2; /* the value runs past the copy: record what it is, then stop */
		if (first) {
			d->op = key;
			d->op_len = klen;
			if (t == 0x02 && vs != (size_t)-2 && vs > 4) {
				d->coll = v + 4;
				d->coll_len = vs - 5;
			}
			first = 0;
		}
		if (t == 0x02 && vs != (size_t)-2 && vs > 4 && strcmp(key, "$db") == 0) {
			d->db = v + 4;
			d->db_len = vs - 5;
		} else if (t == 0x02 && vs != (size_t)-2 && vs > 4 && strcmp(key, "errmsg") == 0) {
			d->errmsg = v + 4;
			d->errmsg_len = vs - 5;
		} else if (strcmp(key, "ok") == 0 && vs != (size_t)-2) {
			d->has_ok = 1;
			if (t == 0x01)
				memcpy(&d->ok, v, 8);
			else if (t == 0x10)
				d->ok = (int32_t)le32(v);
			else if (t == 0x12)
				d->ok = (double)(int64_t)(le32(v) | (uint64_t)le32(v + 4) << 32);
			else if (t == 0x08)
				d->ok = v[0];
			else
				d->has_ok = 0;
		}
		if (vs == (size_t)-2)
			return;
		i += vs;
	}
}

/* An OP_MSG body (after the 16-byte header): flagBits, then sections; kind 0 is the command. */
static int op_msg(const uint8_t *p, size_t n, struct mongo_doc *d)
{
	size_t i = 4;

	for (int s = 0; s < 8 && i < n; s++) {
		if (p[i] == 0) {
			bson_walk(p + i + 1, n - i - 1, d);
			return 0;
		}
		if (p[i] != 1 || i + 5 > n)
			return -1;
		i += 1 + (size_t)le32(p + i + 1); /* a document sequence (kind 1): its size */
	}
	return -1;
}

/* Parse a message (header included): OP_MSG, or OP_COMPRESSED (noop compressor: the inner one). */
static int mongo_msg(const uint8_t *p, size_t n, struct mongo_doc *d, int *compressed)
{
	uint32_t op;

	if (n < 16)
		return -1;
	op = le32(p + 12);
	if (op == 2013)
		return op_msg(p + 16, n - 16, d);
	if (op != 2012 || n < 25)
		return -1;
	*compressed = 1;
	if (p[24] != 0 || le32(p + 16) != 2013)
		return 0; /* snappy, zlib, zstd: the command is compressed, only the flag shows */
	return op_msg(p + 25, n - 25, d);
}

static int mongo(struct out *o, const struct l7_event *e)
{
	struct mongo_doc q = {0}, r = {0};
	int compressed = 0;

	if (mongo_msg(e->req, e->req_len, &q, &compressed) < 0)
		return -1;
	mongo_msg(e->resp, e->resp_len, &r, &compressed);
	if (q.op)
		put_key_str(o, "op", q.op, q.op_len);
	if (q.coll)
		put_key_str(o, "collection", q.coll, q.coll_len);
	if (q.db)
		put_key_str(o, "db", q.db, q.db_len);
	if (r.has_ok)
		putf(o, ",\"ok\":%.17g", r.ok);
	if (compressed)
		puts_(o, ",\"compressed\":true");
	if (r.has_ok && r.ok == 0) {
		if (r.errmsg)
			put_key_str(o, "error", r.errmsg, r.errmsg_len);
		else
			puts_(o, ",\"error\":\"ok: 0\"");
	}
	return 0;
}

static const char *rcode_name(unsigned rc)
{
	static const char *names[] = {"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP",
				      "REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH",
				      "NOTZONE"};

	return rc < sizeof(names) / sizeof(names[0]) ? names[rc] : NULL;
}

static void put_qtype(struct out *o, unsigned t)
{
	switch (t) {
	case 1: puts_(o, "\"A\""); return;
	case 2: puts_(o, "\"NS\""); return;
	case 5: puts_(o, "\"CNAME\""); return;
	case 6: puts_(o, "\"SOA\""); return;
	case 12: puts_(o, "\"PTR\""); return;
	case 15: puts_(o, "\"MX\""); return;
	case 16: puts_(o, "\"TXT\""); return;
	case 28: puts_(o, "\"AAAA\""); return;
	case 33: puts_(o, "\"SRV\""); return;
	case 65: puts_(o, "\"HTTPS\""); return;
	case 255: puts_(o, "\"ANY\""); return;
	}
	putf(o, "\"TYPE%u\"", t);
}

/* A DNS name at *i of the message p[n] into name (dotted, no trailing dot); follows at most 16
 * compression pointers; *i moves past the name where it sits. -1 when malformed or cut. */
static int dns_name(const uint8_t *p, size_t n, size_t *i, char *name, size_t cap)
{
	size_t at = *i, len = 0, jumps = 0;
	int moved = 0;

	while (at < n) {
		uint8_t l = p[at];

		if (l == 0) {
			if (!moved)
				*i = at + 1;
			name[len] = '\0';
			return 0;
		}
		if ((l & 0xC0) == 0xC0) {
			if (at + 1 >= n || ++jumps > 16)
				return -1;
			if (!moved)
				*i = at + 2;
			moved = 1;
			at = ((l & 0x3F) << 8) | p[at + 1];
			continue;
		}
		if (l > 63 || at + 1 + l > n || len + l + 2 > cap)
			return -1;
		if (len)
			name[len++] = '.';
		memcpy(name + len, p + at + 1, l);
		len += l;
		at += 1 + l;
	}
	return -1;
}

static int dns(struct out *o, const struct l7_event *e)
{
	const uint8_t *q = e->req, *r = e->resp;
	size_t qn = e->req_len, rn = e->resp_len, i = 12;
	char name[256];
	unsigned rcode, an;
	const char *rc;

	if (qn < 12 || dns_name(q, qn, &i, name, sizeof(name)) < 0 || i + 4 > qn)
		return -1;
	putf(o, ",\"id\":%u", (q[0] << 8) | q[1]);
	put_key_str(o, "qname", name, sizeof(name));
	puts_(o, ",\"qtype\":");
	put_qtype(o, (q[i] << 8) | q[i + 1]);
	if (rn < 12)
		return 0; /* no answer copied */
	rcode = r[3] & 0x0F;
	rc = rcode_name(rcode);
	if (rc)
		putf(o, ",\"rcode\":\"%s\"", rc);
	else
		putf(o, ",\"rcode\":\"RCODE%u\"", rcode);
	puts_(o, ",\"answers\":[");
	an = (r[6] << 8) | r[7];
	i = 12;
	if (((r[4] << 8) | r[5]) == 1 && dns_name(r, rn, &i, name, sizeof(name)) == 0) {
		i += 4; /* the question's type and class */
		for (unsigned a = 0, first = 1; a < an && a < 32; a++) {
			char text[INET6_ADDRSTRLEN];
			unsigned type, rdlen;

			if (dns_name(r, rn, &i, name, sizeof(name)) < 0 || i + 10 > rn)
				break; /* cut by the copy: the answers shown are the ones that fit */
			type = (r[i] << 8) | r[i + 1];
			rdlen = (r[i + 8] << 8) | r[i + 9];
			i += 10;
			if (i + rdlen > rn)
				break;
			if (type == 1 && rdlen == 4 && inet_ntop(AF_INET, r + i, text, sizeof(text))) {
				putf(o, "%s\"%s\"", first ? "" : ",", text);
				first = 0;
			} else if (type == 28 && rdlen == 16 &&
				   inet_ntop(AF_INET6, r + i, text, sizeof(text))) {
				putf(o, "%s\"%s\"", first ? "" : ",", text);
				first = 0;
			} else if (type == 5 || type == 12) {
				size_t at = i;

				if (dns_name(r, rn, &at, name, sizeof(name)) == 0) {
					puts_(o, first ? "" : ",");
					put_str(o, name, sizeof(name));
					first = 0;
				}
			}
			i += rdlen;
		}
	}
	puts_(o, "]");
	if (rcode != 0) {
		if (rc)
			putf(o, ",\"error\":\"%s\"", rc);
		else
			putf(o, ",\"error\":\"RCODE%u\"", rcode);
	}
	return 0;
}

static int http2(struct out *o, const struct l7_event *e, struct l7_h2_call *call)
{
	put_key_str(o, "method", call->method, sizeof(call->method));
	put_key_str(o, "path", call->path, sizeof(call->path));
	if (call->path_cut)
		puts_(o, ",\"path_cut\":true");
	putf(o, ",\"status\":%d,\"stream\":%" PRIu32, call->status, call->stream);
	if (call->grpc_status >= 0)
		putf(o, ",\"grpc_status\":%d", call->grpc_status);
	if (call->status >= 500) {
		putf(o, ",\"error\":\"HTTP %d\"", call->status);
	} else if (call->grpc_status > 0) {
		char text[sizeof(call->grpc_message) + 32];

		snprintf(text, sizeof(text), call->grpc_message[0] ? "grpc-status %d: %s" :
			 "grpc-status %d", call->grpc_status, call->grpc_message);
		put_key_str(o, "error", text, sizeof(text));
	}
	(void)e;
	return 0;
}

bpfdepot_process_fn process;

int process(const struct bpfdepot_event *ev, struct bpfdepot_result *res)
{
	static struct l7_event e; /* 864 bytes: one worker is one thread */
	struct out o = {.p = res->data, .end = res->data + res->cap};
	struct l7_h2_call call;
	const char *why = NULL;
	int rc, klen;

	if (ev->size < sizeof(e))
		return BPFDEPOT_ERROR;
	memcpy(&e, ev->data, sizeof(e)); /* the ring buffer gives no alignment promise */
	if (e.req_len > L7_REQ_MAX || e.resp_len > L7_RESP_MAX)
		return BPFDEPOT_ERROR;
	if (e.kind == L7_FRAME) {
		memset(&call, 0, sizeof(call));
		rc = l7_h2_frame(&e, &call, &why);
		/* 0: state only; -1: a frame refused (not HTTP/2 after all, or a connection whose
		 * HPACK state is lost): dropped, counted by the host and in l7_h2_stats, not an
		 * error of this processor */
		if (rc <= 0)
			return BPFDEPOT_DROP;
		e.protocol = L7_HTTP2;
		e.req_size = call.req_size;   /* the header blocks, not the frame that ended it */
		e.resp_size = call.resp_size;
		put_common(&o, &e, call.role, call.latency_ns);
		rc = http2(&o, &e, &call);
	} else if (e.kind == L7_CALL) {
		put_common(&o, &e, e.role, e.latency_ns);
		switch (e.protocol) {
		case L7_HTTP1: rc = http1(&o, &e); break;
		case L7_MONGO: rc = mongo(&o, &e); break;
		case L7_DNS: rc = dns(&o, &e); break;
		default: rc = -1;
		}
	} else {
		return BPFDEPOT_ERROR;
	}
	put(&o, "}", 1);
	if (rc < 0 || o.full)
		return BPFDEPOT_ERROR; /* not what the kernel said it was, or too long: never cut */
	res->len = o.p - res->data;
	klen = snprintf(res->key, res->key_cap, "%" PRIu64, (uint64_t)e.conn);
	if (klen > 0 && (uint32_t)klen < res->key_cap)
		res->key_len = klen;
	return BPFDEPOT_KEEP;
}
