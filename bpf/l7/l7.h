/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* l7.h: the event of the L7 capture programs (l7.bpf.c on syscall tracepoints, l7_tls.bpf.c on
 * OpenSSL uprobes), the single source of its layout for the kernel side and the C processor.
 * Needs __u64 etc. (vmlinux.h or linux/types.h) and bpfdepot_ip (bpfdepot.h) first.
 *
 * The kernel side detects the protocol from the first bytes of a read or write, pairs a request
 * with its response per connection (HTTP/1, MongoDB, DNS) and copies a bounded prefix of each:
 * one L7_CALL event per answered request. HTTP/2 multiplexes streams and its headers are HPACK
 * state of the connection, so the kernel cannot pair them: it sends every HEADERS frame of an
 * HTTP/2 connection, in order, as one L7_FRAME event, and the processor keeps the per-connection
 * HPACK tables and pairs the streams. */
#ifndef __L7_H
#define __L7_H

#define L7_REQ_MAX 512  /* bytes of a request (or of an HTTP/2 HEADERS frame) copied */
#define L7_RESP_MAX 256 /* bytes of a response copied */

enum l7_protocol {
	L7_UNKNOWN = 0,
	L7_HTTP1 = 1,
	L7_MONGO = 2,
	L7_DNS = 3,
	L7_HTTP2 = 4,
};

enum l7_kind {
	L7_CALL = 1,  /* a request and its response, paired in the kernel: req[] and resp[] */
	L7_FRAME = 2, /* one HTTP/2 frame (9-byte header + payload prefix) in req[]; dir says which way */
};

enum l7_role {
	L7_CLIENT = 1, /* this process wrote the request and read the response */
	L7_SERVER = 2, /* this process read the request and wrote the response */
};

enum l7_dir {
	L7_EGRESS = 1,  /* written (sent) by this process */
	L7_INGRESS = 2, /* read (received) by this process */
};

/* 872 bytes, 8-aligned, no implicit padding: every byte is a named field. */
struct l7_event {
	__u64 ts_ns;        /* bpf_ktime_get_ns() when the event completed (response or frame seen) */
	__u64 latency_ns;   /* L7_CALL: request start -> response; 0 for L7_FRAME */
	__u64 conn;         /* the connection: pid << 32 | fd on syscalls, the SSL * for TLS */
	__u64 cgroup;       /* cgroup2 id of the task (bpf_get_current_cgroup_id) */
	__u32 pid;          /* tgid */
	__u32 req_size;     /* bytes the request (frame) syscall moved; may exceed req_len */
	__u32 resp_size;    /* bytes the response syscall moved; may exceed resp_len */
	__u16 req_len;      /* bytes copied into req */
	__u16 resp_len;     /* bytes copied into resp */
	__u8 protocol;      /* enum l7_protocol */
	__u8 kind;          /* enum l7_kind */
	__u8 role;          /* enum l7_role (L7_CALL; for L7_FRAME the side that started the stream if known, else 0) */
	__u8 dir;           /* enum l7_dir (L7_FRAME); 0 for L7_CALL */
	__u8 tls;           /* 1: plaintext from the OpenSSL uprobes */
	__u8 missed;        /* L7_FRAME: frames of this connection were missed before this one
	                     * (ring full, or past the walk's reach): its HPACK state is lost */
	__u8 __pad[2];      /* zero */
	__u16 family;       /* of raddr: AF_INET, AF_INET6, 0 when unknown */
	__u16 rport;        /* peer port, host byte order; 0 when unknown */
	__u16 lport;        /* local port, host byte order; 0 when unknown */
	__u16 __pad2;       /* zero */
	__u32 label;        /* label id of the filter target that matched (0: no filter); the
	                     * call's that completed the event, judged at its entry */
	__u32 __pad3;       /* zero */
	char comm[16];      /* TASK_COMM_LEN */
	bpfdepot_ip raddr;  /* peer address; AF_INET: first 4 bytes, rest zero */
	__u8 req[L7_REQ_MAX];
	__u8 resp[L7_RESP_MAX];
};

_Static_assert(sizeof(struct l7_event) == 872, "l7_event layout changed");

#endif /* __L7_H */
