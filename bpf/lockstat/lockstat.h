/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* lockstat.h: the event of `futex_events` and the keys and values of `futex_hists` and
 * `kernel_lock_hists`, the single source of their layout. Needs __u32 etc. (vmlinux.h or
 * linux/types.h) first. */
#ifndef __LOCKSTAT_H
#define __LOCKSTAT_H

#define FUTEX_SLOTS 27 /* log2 slots of microseconds: the last holds 2^26 us (67 s) and above */
#define LOCK_SLOTS 32  /* log2 slots of nanoseconds: the last holds 2^31 ns (2.1 s) and above */

/* The futex operations that sleep until another thread lets go (FUTEX_PRIVATE_FLAG and
 * FUTEX_CLOCK_REALTIME masked off): what pthread mutexes, condition variables, semaphores
 * and Python's locks wait in. */
enum futex_wait_op {
	FUTEX_WAIT = 0,
	FUTEX_LOCK_PI = 6,
	FUTEX_WAIT_BITSET = 9,
	FUTEX_WAIT_REQUEUE_PI = 11,
	FUTEX_LOCK_PI2 = 13,
};

/* One futex wait that took at least `futex_min_us`, sent when it returns. 48 bytes. */
struct futex_event {
	__u64 uaddr;              /* the futex word (user address in the process) */
	__u64 wait_ns;            /* time asleep in the futex call */
	__u32 pid;                /* tgid */
	__u32 tid;                /* the waiting thread */
	enum futex_wait_op op;
	__u32 label;              /* label id of the filter target that matched (0: no filter) */
	char comm[16];            /* of the waiting thread */
};

_Static_assert(sizeof(struct futex_event) == 48, "futex_event layout changed");

struct futex_hist_key {
	__u32 pid;                /* tgid */
	__u32 label;              /* label id of the filter target that matched (0: no filter) */
	__u64 uaddr;              /* the futex word */
};

struct futex_hist {
	__u32 slots[FUTEX_SLOTS]; /* slot i: waits of [2^i, 2^(i+1)) us; slot 0: 0-1 us */
	__u32 __pad;
	__u64 sum;                /* total wait in us (Prometheus _sum) */
};

/* What kind of kernel lock was contended: lock:contention_begin's flags (LCB_F_SPIN 1,
 * LCB_F_READ 2, LCB_F_WRITE 4, LCB_F_RT 8, LCB_F_PERCPU 16, LCB_F_MUTEX 32 in
 * include/trace/events/lock.h, macros, so named here) in the combinations the kernel uses. */
enum lock_kind {
	SPINLOCK = 1,
	RWSEM_READ = 2,
	RWLOCK_READ = 3,
	RWSEM_WRITE = 4,
	RWLOCK_WRITE = 5,
	RT_MUTEX = 8,
	RT_READ = 10,
	RT_WRITE = 12,
	PERCPU_RWSEM_READ = 18,
	PERCPU_RWSEM_WRITE = 20,
	MUTEX = 32,
	MUTEX_SPIN = 33,          /* a mutex waiter spinning on the owner before it sleeps */
};

struct lock_hist_key {
	__u64 lock;               /* the lock's kernel address (`decoders: {lock: hex}` prints
	                           * it as ffff8881...) */
	__u64 caller;             /* the first kernel frame outside the locking code: who took it */
	enum lock_kind flags;
	__u32 __pad;
};

struct lock_hist {
	__u32 slots[LOCK_SLOTS];  /* slot i: waits of [2^i, 2^(i+1)) ns; slot 0: 0-1 ns */
	__u64 sum;                /* total wait in ns (Prometheus _sum) */
};

#endif /* __LOCKSTAT_H */
