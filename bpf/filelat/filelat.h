/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* filelat.h: the histogram key and value and the slow-operation event of filelat, the single
 * source of their layout. Needs __u32 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __FILELAT_H
#define __FILELAT_H

#define FILELAT_SLOTS 27   /* log2 slots of microseconds: the last holds 2^26 us (67 s) and above */
#define FILELAT_NAME_LEN 64 /* bytes of the file name (dentry d_name) kept in an event */

/* The key of the `filelat_hists` map: 48 bytes, no implicit padding (the hash compares every
 * byte, so every byte is set). Text fields are NUL-padded. */
struct filelat_hist_key {
	char op[16];            /* the syscall: "read", "pwrite64", "fdatasync", ... */
	char ftype[8];          /* "regular"; with all_types: "fifo" (named FIFOs and anonymous
	                         * pipes: fs "pipefs"), "socket", "char", "block", "dir",
	                         * "link", "unknown" */
	char fs[16];            /* the filesystem type (super_block s_type->name): "ext4",
	                         * "tmpfs", "pipefs" (anonymous pipes), "sockfs" */
	__u32 dev_major;        /* the filesystem's device (s_dev): tells two mounts of one */
	__u32 dev_minor;        /* type apart; anonymous (0:N) for tmpfs, pipes, sockets */
};

_Static_assert(sizeof(struct filelat_hist_key) == 48, "filelat_hist_key layout changed");

/* Latency of the calls of one key, whatever they returned (errors and EAGAIN included). */
struct filelat_hist {
	__u64 sum;                      /* of every latency, us: Prometheus' _sum */
	__u32 slots[FILELAT_SLOTS];     /* slot i: latencies in [2^i, 2^(i+1)) us; slot 0: 0-1 us */
};

/* One call that took min_us or longer: 160 bytes, 8-aligned, no implicit padding. */
struct filelat_event {
	__u64 latency_us;       /* syscall entry to exit, us (time blocked or preempted included) */
	__s64 bytes;            /* what the call returned: bytes read or written (0 for fsync);
	                         * negative: -errno, shown by name */
	__u32 pid;              /* tgid of the caller */
	__u32 tid;              /* its thread id */
	__s32 fd;               /* the file descriptor the call was given */
	__u32 label;            /* label id of the filter target that matched (0: no filter) */
	__u32 dev_major;        /* the filesystem's device (s_dev) */
	__u32 dev_minor;
	char comm[16];          /* of the calling thread (TASK_COMM_LEN) */
	char op[16];            /* as in the histogram key */
	char ftype[8];
	char fs[16];
	char file[FILELAT_NAME_LEN]; /* the file's name (its dentry's: the last path component);
	                              * empty for anonymous pipes, the protocol for sockets
	                              * ("TCP", "UNIX-STREAM") */
};

_Static_assert(sizeof(struct filelat_event) == 160, "filelat_event layout changed");

#endif /* __FILELAT_H */
