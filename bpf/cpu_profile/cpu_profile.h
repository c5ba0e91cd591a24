/* cpu_profile.h: the key of the sample counts (the loader reads it through BTF). */
#ifndef CPU_PROFILE_H
#define CPU_PROFILE_H

#define TASK_COMM_LEN 16
#define MAX_STACK_DEPTH 127	/* PERF_MAX_STACK_DEPTH: frames kept per stack */

/* Samples are counted per process, command and pair of stacks. A stack id is an index into
 * the `stacks` map, or bpf_get_stackid's -errno: -EFAULT no stack of that kind (a user-mode
 * sample has no kernel stack, a kernel thread no user stack), -EEXIST / -ENOMEM lost (a hash
 * collision / the stack map full), which the loader counts and shows as "[lost stack]". */
struct cpu_profile_key {
	__u32 pid;		/* tgid: the process */
	__s32 kern_stack_id;
	__s32 user_stack_id;
	char comm[TASK_COMM_LEN];
	__u32 label;		/* label id of the filter target that matched (0: no filter) */
};

/* 32 bytes, no implicit padding: the key is hashed whole. */
_Static_assert(sizeof(struct cpu_profile_key) == 32, "cpu_profile_key layout changed");

#endif
