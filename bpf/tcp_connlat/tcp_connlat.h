/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* tcp_connlat.h: the event of tcp_connlat, the single source of its layout.
 * Needs __u64 etc. (vmlinux.h or linux/types.h) and bpfdepot_ip (bpfdepot.h) first. */
#ifndef __TCP_CONNLAT_H
#define __TCP_CONNLAT_H

/* 72 bytes, 8-aligned, no implicit padding: every byte is a named field. */
struct connlat_event {
	__u64 delta_ns;         /* SYN_SENT -> ESTABLISHED, ns */
	__u32 pid;              /* tgid of the task that called connect() */
	__u16 family;           /* AF_INET or AF_INET6 */
	__u16 sport;            /* host byte order */
	__u16 dport;            /* host byte order */
	__u8 __pad[6];          /* zero; keeps the addresses 8-aligned */
	char comm[16];          /* of the connecting task (TASK_COMM_LEN) */
	bpfdepot_ip saddr;      /* AF_INET: first 4 bytes, rest zero */
	bpfdepot_ip daddr;
};

_Static_assert(sizeof(struct connlat_event) == 72, "connlat_event layout changed");

#endif /* __TCP_CONNLAT_H */
