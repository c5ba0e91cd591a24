/* memleak.h: what the loader reads of user-space allocations still outstanding (through BTF). */
#ifndef MEMLEAK_H
#define MEMLEAK_H

#define TASK_COMM_LEN 16
#define MAX_STACK_DEPTH 127

/* Outstanding allocations are summed per process, command and the user stack that made them.
 * user_stack_id is an index into `stacks`, or -EFAULT (none), -EEXIST/-ENOMEM (lost). */
struct memleak_key {
	__u32 pid;		/* tgid */
	__s32 user_stack_id;	/* taken at the allocator's return: the caller's stack */
	char comm[TASK_COMM_LEN];
	__u32 label;		/* label id of the filter target that matched (0: no filter) */
	__u32 __pad;		/* zero: the hash compares every byte */
};

/* What is still allocated on one key. ts_ms_sum is the sum of the allocation times (ms of
 * CLOCK_MONOTONIC, bpf_ktime_get_ns() / 1e6) of those allocations, so the mean age is
 * now - ts_ms_sum / count. Milliseconds, not ns: the sum stays exact while count × uptime
 * fits in 64 bits (5.8e8 allocations per key after a year up; in ns only 18,000 after 11 days). */
struct memleak_value {
	__u64 count;		/* allocations not freed */
	__u64 bytes;		/* their requested sizes */
	__u64 ts_ms_sum;
};

/* One live allocation, by {pid, address}: two processes may hold the same address. */
struct memleak_addr {
	__u64 addr;
	__u32 pid;
	__u32 __pad;
};

struct memleak_alloc {
	__u64 size;
	__u64 ts_ms;
	struct memleak_key key;
};

/* An allocator call between its entry and its return, per thread and allocator. */
struct memleak_pending {
	__u64 size;
	__u64 ptr;		/* realloc: the old block; posix_memalign: void **memptr */
	__u32 armed;		/* 1 from entry to return */
	__u32 label;		/* the filter's verdict at entry */
};

#endif
