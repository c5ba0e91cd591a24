/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* runqlat_hist.h: the key and value of the `hists` map, the single source of their layout.
 * Needs __u32 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __RUNQLAT_HIST_H
#define __RUNQLAT_HIST_H

#define MAX_SLOTS 27 /* log2 slots of microseconds: the last holds 2^26 us (67 s) and above */

struct hist_key {
	__u32 pid;      /* tid of the woken task */
};

/* The key of `cgroup_hists`: the woken task's cgroup2 (its directory's inode number). */
struct cgroup_key {
	__u64 cgroup;
};

struct hist {
	__u32 slots[MAX_SLOTS]; /* slot i: wakeups that waited [2^i, 2^(i+1)) us; slot 0: 0-1 us */
};

#endif /* __RUNQLAT_HIST_H */
