/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* kmemleak.h: the map layouts of kmemleak, the single source of their layout.
 * Needs __u64 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __KMEMLEAK_H
#define __KMEMLEAK_H

#define KMEMLEAK_COMM_LEN 16

/* Who allocated: the outstanding_by_pid key, also kept with every allocation so its free,
 * wherever and by whomever it happens, is taken off the right entry. */
struct kmemleak_owner {
	__u64 cgroup;                   /* cgroup2 id of the allocating task */
	__u32 pid;                      /* its tgid (0: an interrupt on the idle task) */
	char comm[KMEMLEAK_COMM_LEN];
	__u32 label;                    /* label id of the filter target that matched (0: no filter) */
};

/* allocs value, keyed by the object's address: one allocation not freed yet. */
struct kmemleak_alloc {
	__u64 bytes;                    /* bytes_alloc: what the allocator handed out */
	__u64 call_site;                /* kernel address of the allocating call */
	struct kmemleak_owner owner;
};

/* outstanding_by_site key. */
struct kmemleak_site {
	__u64 call_site;
};

/* Value of both outstanding maps: allocations made since load and not freed yet. */
struct kmemleak_totals {
	__s64 bytes;
	__s64 count;
};

#endif /* __KMEMLEAK_H */
