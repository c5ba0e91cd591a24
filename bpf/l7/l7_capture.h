/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* l7_capture.h: the kernel half of L7 capture, shared by l7.bpf.c (syscall tracepoints) and
 * l7_tls.bpf.c (OpenSSL uprobes). Include it after vmlinux.h, bpf_helpers.h, bpf_core_read.h,
 * bpfdepot.h and l7.h. It defines, in the including object:
 *
 *   l7_events   the channel (ring buffer of struct l7_event) and l7_events_lost, its lost counter
 *   l7_stats    per-CPU counters keyed by enum l7_stat (a hash_map channel in the manifests)
 *   l7_conns    LRU: per connection, the pending request and the HTTP/2 frame cursor
 *   l7_heap     per-CPU scratch the bytes of one syscall are gathered into
 *   capture_server, targ_pid   knobs (const volatile): server-side records on/off, one tgid only
 *
 * The one entry point, stable:
 *
 *   l7_capture(conn, dir, buf, iovcnt, size, ts, tls, peer)
 *     conn    the connection key: (tgid << 32 | fd) on syscalls, the SSL * for TLS
 *     dir     L7_EGRESS (this process wrote the bytes) or L7_INGRESS (it read them)
 *     buf     user address of the bytes (iovcnt 0), or of a struct iovec array (iovcnt > 0)
 *     size    bytes the call moved (its return value; > 0)
 *     ts      bpf_ktime_get_ns() when the bytes moved: at entry for writes (the request leaves),
 *             at return for reads (the bytes arrived), so idle waits never count as latency
 *     tls     1 for plaintext seen through the OpenSSL uprobes
 *     peer    the socket's addresses (struct l7_peer; family 0 when not known, as for TLS
 *             before its socket is seen) and the process filter's label of the call, which
 *             the event carries: the caller judges the call (bpfdepot_monitored) at its entry
 *
 * It detects HTTP/1, MongoDB (OP_MSG, OP_COMPRESSED) and DNS (UDP) requests and responses and
 * pairs them per connection: the side that writes a request is the client, the side that reads
 * it the server; the first matching response in the other direction completes the call and one
 * L7_CALL event goes out. An HTTP/2 connection (the client preface seen either way) sends its
 * preface and then every HEADERS / CONTINUATION frame, both ways, as L7_FRAME events. Nothing
 * is lost silently: a request that replaces an unanswered one, a response with no request, and
 * HTTP/2 frames the bounded walk could not reach are counted in l7_stats; a full ring buffer in
 * l7_events_lost. l7_forget(conn) drops a connection's state (close()).
 */
#ifndef __L7_CAPTURE_H
#define __L7_CAPTURE_H

#define L7_GATHER 4096     /* bytes of one call gathered into scratch (a power of 2) */
#define L7_IOV_MAX 32      /* iovecs gathered from: grpc-core writes a request in 24 */
#define L7_H2_FRAMES 16    /* HTTP/2 frame headers walked per call */
#define L7_MONGO_MAX (48 * 1024 * 1024) /* MongoDB's maxMessageSizeBytes */

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* Server-side records (this process read the request): 0 turns them off. */
const volatile __u8 capture_server = 1;
/* Only this tgid (0: every process). Checked by the including program's hooks. */
const volatile __u32 targ_pid = 0;

/* What l7_stats counts (one per-CPU slot each). */
enum l7_stat {
	L7_STAT_REPLACED = 0,    /* a request arrived while the previous one had no response */
	L7_STAT_UNMATCHED = 1,   /* a response with no pending request, or another id */
	L7_STAT_H2_UNSYNCED = 2, /* HTTP/2 frames past the walk's reach (frame cursor reset) */
	L7_STAT_MAX = 3,
};

/* The peer of a socket, from its struct sock (or the call's sockaddr for unconnected UDP). */
struct l7_peer {
	__u16 family;      /* AF_INET, AF_INET6; 0 unknown */
	__u16 rport;       /* host byte order */
	__u16 lport;       /* host byte order */
	__u8 udp;          /* 1: a datagram socket (DNS is looked for only there) */
	__u8 is_sock;      /* 0: the fd is not a socket (cached so it is not looked up again) */
	bpfdepot_ip raddr; /* network byte order */
	__u32 label;       /* the filter's label of the call in hand; 0 in the caches */
};

/* Syscall tracepoint records are not in BTF: 8 bytes of common header, __syscall_nr (int, then
 * 4 bytes of padding), then every argument as an 8-byte long. */
struct l7_sys_enter {
	__u64 common;
	__s32 nr;
	__u32 __pad;
	__u64 args[6];
};

struct l7_sys_exit {
	__u64 common;
	__s32 nr;
	__u32 __pad;
	__s64 ret;
};

#define L7_S_IFMT 00170000
#define L7_S_IFSOCK 0140000
#define L7_SOCK_DGRAM 2

/* The socket behind the current task's fd and its peer, read from the task's file table with
 * CO-RE (no OpenSSL or libc offsets): 1 and *p filled for a socket (family 0 for AF_UNIX and
 * others: no address to show), 0 for any other file, -1 for an fd that is not open. */
static __always_inline int l7_fd_peer(__u32 fd, struct l7_peer *p)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file **fds, *f;
	struct socket *sock;
	struct sock *sk;

	if (fd >= BPF_CORE_READ(task, files, fdt, max_fds))
		return -1;
	fds = BPF_CORE_READ(task, files, fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return -1;
	if ((BPF_CORE_READ(f, f_inode, i_mode) & L7_S_IFMT) != L7_S_IFSOCK)
		return 0;
	sock = BPF_CORE_READ(f, private_data);
	sk = BPF_CORE_READ(sock, sk);
	p->is_sock = 1;
	p->udp = BPF_CORE_READ(sock, type) == L7_SOCK_DGRAM;
	p->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	p->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	p->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (p->family == AF_INET)
		bpf_core_read(p->raddr, 4, &sk->__sk_common.skc_daddr);
	else if (p->family == AF_INET6)
		bpf_core_read(p->raddr, 16, &sk->__sk_common.skc_v6_daddr);
	else
		p->family = p->udp = 0;
	return 1;
}

/* Per connection: the pending request (protocol 0: none) and the HTTP/2 frame cursor. */
struct l7_conn {
	__u64 req_ts;        /* when the pending request moved */
	__u64 resp_ts;       /* MongoDB: when a response header arrived without its body */
	__u32 req_size;      /* bytes of the request call(s) */
	__u32 req_id;        /* MongoDB request_id, DNS id */
	__u32 resp_size;     /* MongoDB: bytes of the header-only response read */
	__u32 h2_skip[2];    /* HTTP/2, per dir - 1: bytes of the current frame still to pass */
	__u16 req_len;       /* bytes in req */
	__u8 protocol;       /* enum l7_protocol of the pending request; 0: none */
	__u8 role;           /* enum l7_role of the pending request */
	__u8 h2;             /* 1: an HTTP/2 connection */
	__u8 resp_wait;      /* MongoDB: 1 when resp_hdr holds a response header waiting for its body */
	__u8 h2_lost;        /* HTTP/2: frames were missed; the next frame sent carries `missed` */
	__u8 __pad;
	__u8 resp_hdr[16];
	__u8 req[L7_REQ_MAX];
};

struct l7_scratch {
	__u8 buf[2 * L7_GATHER]; /* twice the gather size: a masked offset plus a bounded length fit */
};

/* 16 MiB: ~19,000 events, 0.3 s of a 30k-calls/s loopback load at full speed while the
 * reader is busy; resize with the manifest's maps: {l7_events: {max_entries: N}}. */
BPFDEPOT_CHANNEL(l7_events, struct l7_event, 16 * 1024 * 1024);

/* Wake the reader only when this much waits: a wakeup per event costs the traced process a
 * context switch per call, and the loader drains every ring on each pass of its loop anyway
 * (at least every 100 ms), so a quiet ring is still read within that time. */
#define L7_WAKEUP_BYTES (1024 * 1024)

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, L7_STAT_MAX);
	__type(key, enum l7_stat);
	__type(value, __u64);
} l7_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct l7_conn);
} l7_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct l7_scratch);
} l7_heap SEC(".maps");

static const struct l7_conn l7_zero_conn; /* the value a new connection starts from */

/* v = min(v, max) where the verifier sees it: clang may compare a copy of a register and pass
 * the unbounded original to a helper, so the clamp is one asm block on the register used. */
#define L7_CLAMP(v, max) asm volatile("if %0 <= %1 goto +1; %0 = %1" : "+r"(v) : "i"(max))

static __always_inline void l7_count(enum l7_stat what)
{
	__u64 *n = bpf_map_lookup_elem(&l7_stats, &what);

	if (n)
		*n += 1; /* per-CPU slot: no atomic needed */
}

static __always_inline void l7_submit(struct l7_event *e)
{
	__u64 flags = bpf_ringbuf_query(&l7_events, BPF_RB_AVAIL_DATA) >= L7_WAKEUP_BYTES ?
			      BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;

	bpf_ringbuf_submit(e, flags);
}

static __always_inline void l7_forget(__u64 conn)
{
	bpf_map_delete_elem(&l7_conns, &conn);
}

/* Copy the first bytes of the call (at most L7_GATHER) into scratch; returns how many. */
static __always_inline __u32 l7_gather(struct l7_scratch *s, const void *buf, __u32 iovcnt,
				       __u32 size)
{
	__u32 total = 0, len, at;
	struct iovec iov;

	if (!iovcnt) {
		len = size < L7_GATHER ? size : L7_GATHER;
		if (bpf_probe_read_user(s->buf, len, buf))
			return 0;
		return len;
	}
	for (int i = 0; i < L7_IOV_MAX; i++) {
		if (i >= iovcnt || total >= size || total >= L7_GATHER)
			break;
		if (bpf_probe_read_user(&iov, sizeof(iov), (const struct iovec *)buf + i))
			break;
		len = iov.iov_len < L7_GATHER ? iov.iov_len : L7_GATHER;
		if (len > size - total)
			len = size - total;
		if (len > L7_GATHER - total)
			len = L7_GATHER - total;
		L7_CLAMP(len, L7_GATHER);
		at = total;
		asm volatile("%0 &= %1" : "+r"(at) : "i"(L7_GATHER - 1)); /* total < L7_GATHER here */
		if (bpf_probe_read_user(s->buf + at, len, iov.iov_base))
			break;
		total += len;
	}
	return total;
}

/* Little-endian 32-bit at p (MongoDB). */
static __always_inline __u32 l7_le32(const __u8 *p)
{
	return p[0] | (p[1] << 8) | (p[2] << 16) | ((__u32)p[3] << 24);
}

static __always_inline int l7_is_http_request(const __u8 *p, __u32 n)
{
	if (n < 16)
		return 0;
	switch (p[0]) {
	case 'G': return p[1] == 'E' && p[2] == 'T' && p[3] == ' ';
	case 'P':
		return (p[1] == 'O' && p[2] == 'S' && p[3] == 'T' && p[4] == ' ') ||
		       (p[1] == 'U' && p[2] == 'T' && p[3] == ' ') ||
		       (p[1] == 'A' && p[2] == 'T' && p[3] == 'C' && p[4] == 'H' && p[5] == ' ');
	case 'D': return p[1] == 'E' && p[2] == 'L' && p[3] == 'E' && p[4] == 'T' && p[5] == 'E' &&
			 p[6] == ' ';
	case 'H': return p[1] == 'E' && p[2] == 'A' && p[3] == 'D' && p[4] == ' ';
	case 'O': return p[1] == 'P' && p[2] == 'T' && p[3] == 'I' && p[4] == 'O' && p[5] == 'N' &&
			 p[6] == 'S' && p[7] == ' ';
	case 'C': return p[1] == 'O' && p[2] == 'N' && p[3] == 'N' && p[4] == 'E' && p[5] == 'C' &&
			 p[6] == 'T' && p[7] == ' ';
	case 'T': return p[1] == 'R' && p[2] == 'A' && p[3] == 'C' && p[4] == 'E' && p[5] == ' ';
	}
	return 0;
}

static __always_inline int l7_is_http_response(const __u8 *p, __u32 n)
{
	return n >= 12 && p[0] == 'H' && p[1] == 'T' && p[2] == 'T' && p[3] == 'P' && p[4] == '/' &&
	       p[5] == '1' && p[6] == '.';
}

/* A MongoDB message header: OP_MSG (2013) or OP_COMPRESSED (2012), a sane length. */
static __always_inline int l7_is_mongo(const __u8 *p, __u32 n)
{
	__u32 len, op;

	if (n < 16)
		return 0;
	len = l7_le32(p);
	op = l7_le32(p + 12);
	return (op == 2013 || op == 2012) && len >= 16 + 5 && len <= L7_MONGO_MAX;
}

/* A DNS query: QR 0, opcode 0 (QUERY), exactly one question. */
static __always_inline int l7_is_dns_query(const __u8 *p, __u32 n)
{
	return n >= 12 && !(p[2] & 0x80) && !(p[2] & 0x78) && p[4] == 0 && p[5] == 1;
}

/* Detect a request in the gathered bytes: its protocol (0: none) and id. */
static __always_inline __u8 l7_request(const __u8 *p, __u32 n, const struct l7_peer *peer,
				       __u32 *id)
{
	if (l7_is_http_request(p, n))
		return L7_HTTP1;
	if (l7_is_mongo(p, n) && l7_le32(p + 8) == 0) {
		*id = l7_le32(p + 4);
		return L7_MONGO;
	}
	if (peer && peer->udp && l7_is_dns_query(p, n)) {
		*id = (p[0] << 8) | p[1];
		return L7_DNS;
	}
	return L7_UNKNOWN;
}

/* 1: the bytes answer the pending request of c; -1: a response of another request; 0: neither. */
static __always_inline int l7_response(const struct l7_conn *c, const __u8 *p, __u32 n,
				       const struct l7_peer *peer)
{
	switch (c->protocol) {
	case L7_HTTP1:
		return l7_is_http_response(p, n) ? 1 : 0;
	case L7_MONGO:
		if (!l7_is_mongo(p, n) || l7_le32(p + 8) == 0)
			return 0;
		return l7_le32(p + 8) == c->req_id ? 1 : -1;
	case L7_DNS:
		if (n < 12 || !(p[2] & 0x80) || (p[2] & 0x78))
			return 0;
		return ((p[0] << 8) | p[1]) == c->req_id ? 1 : -1;
	}
	return 0;
}

/* Reserve an event and fill what every kind carries; NULL (counted as lost) when full. */
static __always_inline struct l7_event *l7_event_new(__u64 conn, __u8 kind, __u8 protocol,
						     __u8 role, __u8 dir, __u8 tls, __u64 ts,
						     const struct l7_peer *peer)
{
	struct l7_event *e = bpfdepot_reserve(l7_events);

	if (!e)
		return NULL;
	e->ts_ns = ts;
	e->latency_ns = 0;
	e->conn = conn;
	e->cgroup = bpf_get_current_cgroup_id();
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->req_size = 0;
	e->resp_size = 0;
	e->req_len = 0;
	e->resp_len = 0;
	e->protocol = protocol;
	e->kind = kind;
	e->role = role;
	e->dir = dir;
	e->tls = tls;
	e->missed = 0;
	e->__pad[0] = e->__pad[1] = 0;
	e->__pad2 = 0;
	e->__pad3 = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	if (peer) {
		e->family = peer->family;
		e->rport = peer->rport;
		e->lport = peer->lport;
		e->label = peer->label;
		__builtin_memcpy(e->raddr, peer->raddr, sizeof(e->raddr));
	} else {
		e->family = e->rport = e->lport = 0;
		e->label = 0;
		__builtin_memset(e->raddr, 0, sizeof(e->raddr));
	}
	return e;
}

/* Copy len bytes at offset off of the call into dst (L7_REQ_MAX bytes): from scratch when
 * gathered, else from the user buffer directly (plain buffers only). Returns the bytes copied. */
static __always_inline __u32 l7_bytes(__u8 *dst, __u32 len, const struct l7_scratch *s, __u32 n,
				      __u32 off, const void *buf, __u32 iovcnt)
{
	L7_CLAMP(len, L7_REQ_MAX); /* callers pass at most L7_REQ_MAX */
	if (off + len <= n) {
		if (bpf_probe_read_kernel(dst, len, s->buf + (off & (L7_GATHER - 1))))
			return 0;
		return len;
	}
	if (!iovcnt) {
		if (bpf_probe_read_user(dst, len, (const __u8 *)buf + off))
			return 0;
		return len;
	}
	if (off >= n)
		return 0;
	if (len > n - off)
		len = n - off; /* an iovec call: what was gathered */
	L7_CLAMP(len, L7_REQ_MAX);
	if (bpf_probe_read_kernel(dst, len, s->buf + (off & (L7_GATHER - 1))))
		return 0;
	return len;
}

/* One HTTP/2 frame (or the preface: len 24, type 0xff) at offset off as an L7_FRAME event,
 * `missed` when frames of the connection were missed before it: 0 when the ring was full. */
static __always_inline int l7_h2_emit(__u64 conn, __u8 dir, __u8 tls, __u64 ts,
				      const struct l7_peer *peer, const struct l7_scratch *s,
				      __u32 n, __u32 off, __u32 frame, const void *buf,
				      __u32 iovcnt, __u8 missed)
{
	struct l7_event *e = l7_event_new(conn, L7_FRAME, L7_HTTP2, 0, dir, tls, ts, peer);
	__u32 len = frame < L7_REQ_MAX ? frame : L7_REQ_MAX;

	if (!e)
		return 0;
	e->missed = missed;
	e->req_size = frame;
	e->req_len = l7_bytes(e->req, len, s, n, off, buf, iovcnt);
	l7_submit(e);
	return 1;
}

/* The state of one HTTP/2 walk, handed to each bpf_loop step. */
struct l7_h2_walk {
	const struct l7_scratch *s;
	const struct l7_peer *peer;
	const void *buf;
	__u64 conn;
	__u64 ts;
	__u32 n;       /* bytes gathered */
	__u32 size;    /* bytes of the call */
	__u32 off;     /* the next frame header */
	__u32 iovcnt;
	__u8 dir;
	__u8 tls;
	__u8 state;    /* 0: walking, 1: the call ends inside a frame (off - size to skip), 2: lost */
	__u8 missed;   /* frames of the connection went unsent: the next one says so */
};

/* One frame: HEADERS (1) and CONTINUATION (9) go out, the rest is passed by its length. One
 * bpf_loop step, so the verifier sees the body once, whatever the frame count. */
static long l7_h2_step(__u32 i, void *ctx)
{
	struct l7_h2_walk *w = ctx;
	__u32 off = w->off, flen;
	__u8 hdr[9];

	if (w->size - off < 9)
		goto lost;
	if (off + 9 <= w->n) {
		if (bpf_probe_read_kernel(hdr, 9, w->s->buf + (off & (L7_GATHER - 1))))
			goto lost;
	} else if (w->iovcnt || bpf_probe_read_user(hdr, 9, (const __u8 *)w->buf + off)) {
		goto lost; /* past the gathered iovecs */
	}
	flen = 9 + ((hdr[0] << 16) | (hdr[1] << 8) | hdr[2]);
	if (hdr[3] == 1 || hdr[3] == 9)
		w->missed = !l7_h2_emit(w->conn, w->dir, w->tls, w->ts, w->peer, w->s, w->n, off,
					flen, w->buf, w->iovcnt, w->missed);
	w->off = off + flen;
	if (w->off >= w->size) {
		w->state = 1;
		return 1;
	}
	return 0;
lost:
	w->state = 2;
	return 1;
}

/* Walk the HTTP/2 frames of one call from offset off; a frame that runs past the call is
 * carried in h2_skip to the next call in the same direction. */
static __always_inline void l7_h2_walk(struct l7_conn *c, __u64 conn, __u8 dir, __u8 tls,
				       __u64 ts, const struct l7_peer *peer,
				       const struct l7_scratch *s, __u32 n, __u32 off,
				       const void *buf, __u32 iovcnt, __u32 size)
{
	struct l7_h2_walk w = {.s = s, .peer = peer, .buf = buf, .conn = conn, .ts = ts, .n = n,
			       .size = size, .iovcnt = iovcnt, .dir = dir, .tls = tls,
			       .missed = c->h2_lost};
	__u32 d = (dir - 1) & 1, skip = c->h2_skip[d];

	if (off >= size)
		return;
	if (skip >= size - off) {
		c->h2_skip[d] = skip - (size - off);
		return;
	}
	w.off = off + skip;
	bpf_loop(L7_H2_FRAMES, l7_h2_step, &w, 0);
	c->h2_lost = w.missed;
	if (w.state == 1) {
		c->h2_skip[d] = w.off - size;
		return;
	}
	/* a header beyond what was gathered, cut by the call, or too many frames: assume the
	 * call ended on a frame boundary (writers such as gRPC write whole frames) and count it */
	c->h2_skip[d] = 0;
	c->h2_lost = 1; /* a HEADERS frame among the missed ones would put the tables out of step */
	l7_count(L7_STAT_H2_UNSYNCED);
}

static __always_inline int l7_is_preface(const __u8 *p, __u32 n)
{
	/* "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" */
	return n >= 24 && p[0] == 'P' && p[1] == 'R' && p[2] == 'I' && p[3] == ' ' && p[4] == '*' &&
	       p[5] == ' ' && p[6] == 'H' && p[7] == 'T' && p[8] == 'T' && p[9] == 'P' &&
	       p[10] == '/' && p[11] == '2' && p[12] == '.' && p[13] == '0' && p[16] == '\r' &&
	       p[18] == 'S' && p[19] == 'M';
}

static __always_inline struct l7_conn *l7_conn_get(__u64 conn)
{
	struct l7_conn *c = bpf_map_lookup_elem(&l7_conns, &conn);

	if (c)
		return c;
	bpf_map_update_elem(&l7_conns, &conn, &l7_zero_conn, BPF_NOEXIST);
	return bpf_map_lookup_elem(&l7_conns, &conn);
}

/* The pending request of c and this response make one L7_CALL event. */
static __always_inline void l7_call(struct l7_conn *c, __u64 conn, __u8 tls, __u64 ts,
				    const struct l7_peer *peer, const __u8 *hdr, __u32 hdr_len,
				    const struct l7_scratch *s, __u32 n, __u32 size)
{
	struct l7_event *e = l7_event_new(conn, L7_CALL, c->protocol, c->role, 0, tls, ts, peer);
	__u32 len;

	c->protocol = L7_UNKNOWN;
	c->resp_wait = 0;
	if (!e)
		return;
	e->latency_ns = ts > c->req_ts ? ts - c->req_ts : 0;
	e->req_size = c->req_size;
	e->resp_size = size;
	len = c->req_len;
	L7_CLAMP(len, L7_REQ_MAX);
	if (len && !bpf_probe_read_kernel(e->req, len, c->req))
		e->req_len = len;
	len = 0;
	if (hdr_len == 16) { /* a MongoDB header read on its own, then its body */
		__builtin_memcpy(e->resp, hdr, 16);
		len = 16;
	}
	if (n > L7_RESP_MAX - len)
		n = L7_RESP_MAX - len;
	if (len == 16) {
		L7_CLAMP(n, L7_RESP_MAX - 16);
		if (!bpf_probe_read_kernel(e->resp + 16, n, s->buf))
			len += n;
	} else {
		L7_CLAMP(n, L7_RESP_MAX);
		if (!bpf_probe_read_kernel(e->resp, n, s->buf))
			len = n;
	}
	e->resp_len = len;
	l7_submit(e);
}

/* Look at one read or write of a connection (see the top of this file). */
static __always_inline void l7_capture(__u64 conn, __u8 dir, const void *buf, __u32 iovcnt,
				       __u32 size, __u64 ts, __u8 tls, const struct l7_peer *peer)
{
	__u32 zero = 0, n, id = 0, len;
	struct l7_scratch *s;
	struct l7_conn *c;
	__u8 proto, role;
	int r;

	s = bpf_map_lookup_elem(&l7_heap, &zero);
	if (!s || !size)
		return;
	n = l7_gather(s, buf, iovcnt, size);
	if (!n)
		return;
	c = bpf_map_lookup_elem(&l7_conns, &conn);
	if (c && c->h2) {
		l7_h2_walk(c, conn, dir, tls, ts, peer, s, n, 0, buf, iovcnt, size);
		return;
	}
	if (l7_is_preface(s->buf, n)) {
		c = l7_conn_get(conn);
		if (!c)
			return;
		c->h2 = 1;
		c->protocol = L7_UNKNOWN;
		c->h2_skip[0] = c->h2_skip[1] = 0;
		c->h2_lost = !l7_h2_emit(conn, dir, tls, ts, peer, s, n, 0, 24, buf, iovcnt, 0);
		l7_h2_walk(c, conn, dir, tls, ts, peer, s, n, 24, buf, iovcnt, size);
		return;
	}

	/* a response completing the pending request: read by a client, written by a server */
	if (c && c->protocol) {
		if (c->resp_wait && dir == (c->role == L7_CLIENT ? L7_INGRESS : L7_EGRESS)) {
			/* the body after a MongoDB header read alone: latency ends at the header */
			c->resp_size += size;
			l7_call(c, conn, tls, c->resp_ts, peer, c->resp_hdr, 16, s, n, c->resp_size);
			return;
		}
		if (c->protocol == L7_MONGO && c->req_len == 16 && c->req_size == 16 &&
		    dir == (c->role == L7_CLIENT ? L7_EGRESS : L7_INGRESS)) {
			/* the body after a MongoDB request header moved alone */
			len = n < L7_REQ_MAX - 16 ? n : L7_REQ_MAX - 16;
			L7_CLAMP(len, L7_REQ_MAX - 16);
			if (!bpf_probe_read_kernel(c->req + 16, len, s->buf))
				c->req_len = 16 + len;
			c->req_size += size;
			return;
		}
		if (dir == (c->role == L7_CLIENT ? L7_INGRESS : L7_EGRESS)) {
			r = l7_response(c, s->buf, n, peer);
			if (r > 0) {
				if (c->protocol == L7_MONGO && n == 16) {
					__builtin_memcpy(c->resp_hdr, s->buf, 16);
					c->resp_ts = ts;
					c->resp_size = size;
					c->resp_wait = 1;
					return;
				}
				l7_call(c, conn, tls, ts, peer, NULL, 0, s, n, size);
				return;
			}
			if (r < 0) {
				l7_count(L7_STAT_UNMATCHED);
				return;
			}
		}
	}

	proto = l7_request(s->buf, n, peer, &id);
	if (!proto && c && c->protocol && dir == (c->role == L7_CLIENT ? L7_EGRESS : L7_INGRESS)) {
		c->req_size += size; /* more of the pending request (a body written on its own) */
		return;
	}
	if (!proto) {
		/* a response nobody asked for (capture started mid-call, or a lost request); a
		 * server's answers are not looked for when capture_server is off */
		if (dir == L7_EGRESS && !capture_server)
			return;
		if (l7_is_http_response(s->buf, n) ||
		    (l7_is_mongo(s->buf, n) && l7_le32(s->buf + 8) != 0))
			l7_count(L7_STAT_UNMATCHED);
		return;
	}
	role = dir == L7_EGRESS ? L7_CLIENT : L7_SERVER;
	if (role == L7_SERVER && !capture_server)
		return;
	if (!c)
		c = l7_conn_get(conn);
	if (!c)
		return;
	if (c->protocol)
		l7_count(L7_STAT_REPLACED);
	c->protocol = proto;
	c->role = role;
	c->req_id = id;
	c->req_ts = ts;
	c->req_size = size;
	c->resp_wait = 0;
	len = n < L7_REQ_MAX ? n : L7_REQ_MAX;
	L7_CLAMP(len, L7_REQ_MAX);
	if (!bpf_probe_read_kernel(c->req, len, s->buf))
		c->req_len = len;
	else
		c->req_len = 0;
}

#endif /* __L7_CAPTURE_H */
