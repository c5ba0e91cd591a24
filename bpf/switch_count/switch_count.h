/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* switch_count.h: one context switch away from a task, the single source of its layout. */
#ifndef __SWITCH_COUNT_H
#define __SWITCH_COUNT_H

#define TASK_COMM_LEN 16

struct switch_event {
	__u32 pid;                  /* thread switched out */
	__u32 tgid;                 /* its process */
	__u32 prev_state;           /* 0 preempted (running), 1 TASK_INTERRUPTIBLE, 2 UNINTERRUPTIBLE, ... */
	__u32 form;                 /* which program saw it: 1 tp_btf, 2 raw_tp */
	char comm[TASK_COMM_LEN];
};

#endif /* __SWITCH_COUNT_H */
