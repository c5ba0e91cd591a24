/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* tcp_connlat.h: the event of tcp_connlat, the single source of its layout.
 * Needs __u64 etc. (vmlinux.h or linux/types.h) and bpfdepot_ip (bpfdepot.h) first. */
#ifndef __TCP_CONNLAT_H
#define __TCP_CONNLAT_H

#define CONNLAT_SLOTS 26 /* log2 slots of microseconds: the last holds 2^25 us (33 s) and above */

/* 72 bytes, 8-aligned, no implicit padding: every byte is a named field. */
struct connlat_event {
	__u64 delta_ns;         /* SYN_SENT -> ESTABLISHED, ns */
	__u32 pid;              /* tgid of the task that called connect() */
	__u16 family;           /* AF_INET or AF_INET6 */
	__u16 sport;            /* host byte order */
	__u16 dport;            /* host byte order */
	__u16 __pad;            /* zero */
	__u32 label;            /* label id of the filter target the caller matched (0: no filter) */
	char comm[16];          /* of the connecting task (TASK_COMM_LEN) */
	bpfdepot_ip saddr;      /* AF_INET: first 4 bytes, rest zero */
	bpfdepot_ip daddr;
};

_Static_assert(sizeof(struct connlat_event) == 72, "connlat_event layout changed");

/* A connect that failed (SYN_SENT -> CLOSE), on its own channel: it has no latency to give.
 * 72 bytes, 8-aligned, no implicit padding. */
struct connfail_event {
	__u64 elapsed_ns;       /* SYN_SENT -> CLOSE: how long the attempt lasted, not a latency */
	__u32 pid;              /* tgid of the task that called connect() */
	__s32 error;            /* -sk_err: -ECONNREFUSED (RST), -ETIMEDOUT, ...; 0: the caller
	                         * closed the socket before any answer */
	__u16 family;           /* AF_INET or AF_INET6 */
	__u16 sport;            /* host byte order */
	__u16 dport;            /* host byte order */
	__u16 __pad;            /* zero */
	__u32 label;            /* label id of the filter target the caller matched (0: no filter) */
	__u32 __pad2;           /* zero */
	char comm[16];          /* of the connecting task (TASK_COMM_LEN) */
	bpfdepot_ip saddr;      /* AF_INET: first 4 bytes, rest zero */
	bpfdepot_ip daddr;
};

_Static_assert(sizeof(struct connfail_event) == 80, "connfail_event layout changed");

/* The key of the `connlat_hists` map: 24 bytes, no implicit padding (the hash compares every
 * byte, so every byte is set). */
struct connlat_hist_key {
	bpfdepot_ip daddr;      /* remote address; AF_INET: first 4 bytes, rest zero */
	__u16 family;           /* AF_INET or AF_INET6: tells the loader how to print daddr */
	__u16 dport;            /* host byte order */
	__u32 __pad;            /* zero */
};

/* Connect latency of the completed handshakes to one remote; failures are not counted here. */
struct connlat_hist {
	__u64 sum;                      /* of every latency, us: Prometheus' _sum */
	__u32 slots[CONNLAT_SLOTS];     /* slot i: latencies in [2^i, 2^(i+1)) us; slot 0: 0-1 us */
};

#endif /* __TCP_CONNLAT_H */
