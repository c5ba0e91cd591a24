/* wakeuptime.h: the key of the wakeup counts (the loader reads it through BTF). */
#ifndef WAKEUPTIME_H
#define WAKEUPTIME_H

#define TASK_COMM_LEN 16
#define MAX_STACK_DEPTH 127

/* The time a task was blocked, charged to the task that woke it: per waker process and
 * command, the woken task's command, and the waker's stacks at the wakeup. Stack ids as in
 * cpu_profile.h: an index into `stacks`, or -EFAULT (none), -EEXIST/-ENOMEM (lost). */
struct wakeuptime_key {
	__u32 pid;		/* the waker's tgid */
	__s32 kern_stack_id;	/* the waker's stacks */
	__s32 user_stack_id;
	char comm[TASK_COMM_LEN];	/* the waker */
	char target[TASK_COMM_LEN];	/* the woken task */
	__u32 label;		/* the waker's: label id of the filter target that matched (0: no filter) */
};

/* 48 bytes, no implicit padding: the key is hashed whole. */
_Static_assert(sizeof(struct wakeuptime_key) == 48, "wakeuptime_key layout changed");

#endif
