/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* tcp_rtt.h: the keys and value of the `rtt_hists` and `rtt_cgroup_hists` maps, the single
 * source of their layout.
 * Needs __u32 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __TCP_RTT_H
#define __TCP_RTT_H

#define RTT_SLOTS 26 /* log2 slots of microseconds: the last holds 2^25 us (33 s) and above */

/* 24 bytes, no implicit padding: the hash compares every byte, so every byte is set. */
struct rtt_key {
	__u8 daddr[16];         /* remote address, network order; AF_INET: first 4 bytes, rest 0 */
	__u16 family;           /* AF_INET or AF_INET6: tells the loader how to print daddr */
	__u16 dport;            /* remote port, host byte order */
	__u32 __pad;            /* zero */
};

/* The `rtt_cgroup_hists` key: the cgroup2 id of the socket (its directory's inode number, as
 * bpf_get_current_cgroup_id() gives for a task). 8 bytes. */
struct rtt_cgroup_key {
	__u64 cgroup;           /* 0 when the socket carries no cgroup */
};

/* 112 bytes: the sum first keeps the slots 4-aligned with no tail padding. */
struct rtt_hist {
	__u64 sum;              /* of every sample, us: Prometheus' _sum */
	__u32 slots[RTT_SLOTS]; /* slot i: samples with srtt in [2^i, 2^(i+1)) us; slot 0: 0-1 us */
};

#endif /* __TCP_RTT_H */
