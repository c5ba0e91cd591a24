/* offcpu.h: the key of the off-CPU time counts (the loader reads it through BTF). */
#ifndef OFFCPU_H
#define OFFCPU_H

#define TASK_COMM_LEN 16
#define MAX_STACK_DEPTH 127

/* Time off CPU per process, command and the stacks the task had when it went off. Stack ids
 * as in cpu_profile.h: an index into `stacks`, or -EFAULT (none), -EEXIST/-ENOMEM (lost). */
struct offcpu_key {
	__u32 pid;		/* tgid */
	__s32 kern_stack_id;
	__s32 user_stack_id;
	char comm[TASK_COMM_LEN];
	__u32 label;		/* label id of the filter target that matched (0: no filter) */
};

/* 32 bytes, no implicit padding: the key is hashed whole. */
_Static_assert(sizeof(struct offcpu_key) == 32, "offcpu_key layout changed");

/* A task off CPU now: when it went, with what stacks. */
struct offcpu_start {
	__u64 ts;		/* bpf_ktime_get_ns() at switch-out */
	struct offcpu_key key;
};

#endif
