/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* runqlat.h: the event of runqlat, the single source of its layout.
 * Needs __u64 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __RUNQLAT_H
#define __RUNQLAT_H

/* 64 bytes, 8-aligned, no implicit padding: every byte is a named field. */
struct runqlat_event {
	__u64 delta_ns;         /* sched_wakeup(_new) -> switched in, ns */
	__u32 pid;              /* tid of the woken task */
	__u32 tgid;             /* its process */
	__u32 prev_pid;         /* tid of the task it replaced on the CPU (0: idle) */
	__u32 cpu;              /* where it was switched in */
	char comm[16];          /* of the woken task (TASK_COMM_LEN) */
	char prev_comm[16];     /* of the task it replaced */
	__u32 label;            /* label id of the filter target that matched (0: no filter) */
	__u32 __pad;
};

_Static_assert(sizeof(struct runqlat_event) == 64, "runqlat_event layout changed");

#endif /* __RUNQLAT_H */
