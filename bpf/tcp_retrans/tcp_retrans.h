/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* tcp_retrans.h: the event and the counter key/value of tcp_retrans, the single source of
 * their layout. Needs __u64 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __TCP_RETRANS_H
#define __TCP_RETRANS_H

/* The kernel's TCP states (include/net/tcp_states.h). The kernel's own enum is anonymous, so
 * the loader could not find it by name: this named copy makes states decode as names
 * (SYN_SENT, ESTABLISHED, ...). The numbers are the same on every kernel since 2.6. */
enum tcp_retrans_state {
	ESTABLISHED = 1,
	SYN_SENT = 2,
	SYN_RECV = 3,
	FIN_WAIT1 = 4,
	FIN_WAIT2 = 5,
	TIME_WAIT = 6,
	CLOSE = 7,
	CLOSE_WAIT = 8,
	LAST_ACK = 9,
	LISTEN = 10,
	CLOSING = 11,
	NEW_SYN_RECV = 12,
};

/* What was retransmitted: a segment of the socket (SYN, data, FIN) or a listener's SYN-ACK. */
enum tcp_retrans_kind {
	SEGMENT = 0,
	SYNACK = 1,
};

/* One retransmission. 80 bytes, 8-aligned, no implicit padding. */
struct tcp_retrans_event {
	__u64 ts_ns;                   /* bpf_ktime_get_ns() at the retransmit */
	__u32 pid;                     /* tgid that called connect() on the socket; 0 when unknown (see .bpf.c) */
	enum tcp_retrans_state state;  /* of the socket at the retransmit (SYN-ACK: SYN_RECV) */
	enum tcp_retrans_kind kind;
	__u16 sport;                   /* host byte order; local port */
	__u16 dport;                   /* host byte order; remote port */
	__u16 family;                  /* AF_INET 2 or AF_INET6 10 */
	__u16 __pad;                   /* zero */
	__u32 label;                   /* label id of the filter target that matched (0: no filter) */
	__u8 saddr[16];                /* AF_INET: first 4 bytes, rest zero */
	__u8 daddr[16];
	char comm[16];                 /* of pid; empty when pid is 0 */
};

_Static_assert(sizeof(struct tcp_retrans_event) == 80, "tcp_retrans_event layout changed");

/* The `retrans_counts` key: one counter per remote endpoint and state. 24 bytes. */
struct tcp_retrans_key {
	__u8 daddr[16];                /* AF_INET: first 4 bytes, rest zero */
	__u16 dport;                   /* host byte order */
	__u16 family;                  /* AF_INET 2 or AF_INET6 10 (names the daddr format) */
	enum tcp_retrans_state state;
};

struct tcp_retrans_value {
	__u64 count;                   /* retransmissions since load */
};

#endif /* __TCP_RETRANS_H */
