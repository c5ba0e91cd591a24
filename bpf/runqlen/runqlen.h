/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* runqlen.h: the key and value of the `runqlen_hists` map, the single source of their layout.
 * Needs __u32 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __RUNQLEN_H
#define __RUNQLEN_H

#define MAX_SLOTS 32 /* queue lengths 0..30 one slot each; the last holds 31 and above */

struct runqlen_key {
	__u32 cpu;      /* the CPU sampled */
};

struct runqlen_hist {
	__u32 slots[MAX_SLOTS]; /* slot i: samples that saw i tasks waiting behind the running one */
};

#endif /* __RUNQLEN_H */
