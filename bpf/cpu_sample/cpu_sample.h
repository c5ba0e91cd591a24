/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* cpu_sample.h: one CPU sample, the single source of its layout. */
#ifndef __CPU_SAMPLE_H
#define __CPU_SAMPLE_H

#define TASK_COMM_LEN 16
#define MAX_PIDS 8

/* 32 bytes, no implicit padding: every byte is a named field. */
struct cpu_sample_event {
	__u32 pid;                  /* process (tgid) on the CPU when the sample fired; 0: idle */
	__u32 tid;                  /* its thread */
	__u32 cpu;                  /* the CPU sampled */
	__u32 label;                /* label id of the filter target that matched (0: no filter) */
	char comm[TASK_COMM_LEN];
};

_Static_assert(sizeof(struct cpu_sample_event) == 32, "cpu_sample_event layout changed");

#endif /* __CPU_SAMPLE_H */
