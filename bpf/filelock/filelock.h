/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* filelock.h: the event of `filelock_events` and the key and value of `filelock_hists`, the
 * single source of their layout. Needs __u32 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __FILELOCK_H
#define __FILELOCK_H

#define FILELOCK_SLOTS 27 /* log2 slots of microseconds: the last holds 2^26 us (67 s) and above */

/* Which interface asked for the lock. */
enum filelock_kind {
	POSIX = 1,      /* fcntl F_SETLK/F_SETLKW (and lockf(3), Python's fcntl.lockf) */
	OFD = 2,        /* fcntl F_OFD_SETLK/F_OFD_SETLKW: open-file-description locks */
	FLOCK = 3,      /* flock(2) */
};

/* What was asked: fcntl's l_type for POSIX/OFD (F_* values), flock's operation for FLOCK
 * (the kernel's F_* value + 4, so each name is unique; LOCK_NB is the `blocking` field). */
enum filelock_type {
	F_RDLCK = 0,
	F_WRLCK = 1,
	F_UNLCK = 2,
	LOCK_SH = 4,
	LOCK_EX = 5,
	LOCK_UN = 6,
	TYPE_UNKNOWN = 255, /* the call failed before the kernel read a request (bad fd, bad pointer) */
};

/* One lock or unlock call, sent when it returns. 72 bytes, no implicit padding. */
struct filelock_event {
	__u64 ino;                /* inode number of the locked file (os.stat().st_ino) */
	__u64 wait_ns;            /* time inside the call: the wait for a blocking request */
	__u32 pid;                /* tgid of the caller */
	__u32 tid;                /* its thread */
	__u32 dev;                /* device of the file in stat(2)'s encoding (os.stat().st_dev) */
	__u32 blocker_pid;        /* pid that took the lock the call waited behind (for an OFD
	                           * lock too, though F_GETLK shows -1); 0 when it did not wait */
	__s32 ret;                /* the call's return value: 0, or -errno (-EAGAIN: held) */
	enum filelock_kind kind;
	enum filelock_type type;
	bool blocking;            /* F_SETLKW / F_OFD_SETLKW / flock without LOCK_NB */
	__u8 __pad[3];
	char comm[16];
	__u32 label;              /* label id of the filter target that matched (0: no filter) */
	__u32 __pad2;
};

_Static_assert(sizeof(struct filelock_event) == 72, "filelock_event layout changed");

struct filelock_hist_key {
	enum filelock_kind kind;
};

/* Wait of the blocking lock requests (not unlocks, not LOCK_NB / F_SETLK) that succeeded. */
struct filelock_hist {
	__u32 slots[FILELOCK_SLOTS]; /* slot i: waits of [2^i, 2^(i+1)) us; slot 0: 0-1 us */
	__u32 __pad;
	__u64 sum;                   /* total wait in us (Prometheus _sum) */
};

#endif /* __FILELOCK_H */
