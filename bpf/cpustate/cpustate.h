/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* cpustate.h: the key and value of the `cpustate` map, the single source of their layout.
 * Needs __u32 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __CPUSTATE_H
#define __CPUSTATE_H

struct cpustate_key {
	__u32 pid;      /* tgid: a process, all its threads together */
};

/* A thread's clock (the `last_switch` map): its last switch, in or out. */
struct cpustate_clock {
	__u64 ts;           /* bpf_ktime_get_ns() */
	__u32 label;        /* the filter's, decided at its switch-out */
	__u32 __pad;
};

/* 56 bytes, 8-aligned, no implicit padding. */
struct cpustate {
	__u64 on_ns;        /* time its threads ran on a CPU */
	__u64 off_ns;       /* time its threads spent switched out (asleep, blocked or waiting
	                     * to run), counted from switch-out to switch-in */
	__u64 voluntary;    /* switch-outs in a sleeping state: the task blocked or slept */
	__u64 involuntary;  /* switch-outs while still runnable: it was preempted */
	char comm[16];      /* of the thread last switched out */
	__u32 label;        /* label id of the filter target that matched (0: no filter) */
	__u32 __pad;        /* zero */
};

_Static_assert(sizeof(struct cpustate) == 56, "cpustate layout changed");

#endif /* __CPUSTATE_H */
