/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* switch_count.h: one context switch away from a task, the single source of its layout. */
#ifndef __SWITCH_COUNT_H
#define __SWITCH_COUNT_H

#define TASK_COMM_LEN 16

/* 36 bytes, no implicit padding: every byte is a named field. */
struct switch_event {
	__u32 pid;                  /* thread switched out */
	__u32 tgid;                 /* its process */
	__u32 prev_state;           /* 0 preempted (running), 1 TASK_INTERRUPTIBLE, 2 UNINTERRUPTIBLE, ... */
	__u32 form;                 /* which program saw it: 1 tp_btf, 2 raw_tp */
	char comm[TASK_COMM_LEN];
	__u32 label;                /* label id of the filter target that matched (0: no filter) */
};

_Static_assert(sizeof(struct switch_event) == 36, "switch_event layout changed");

#endif /* __SWITCH_COUNT_H */
