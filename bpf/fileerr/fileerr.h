/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* fileerr.h: the counter key and value and the event of fileerr, the single source of their
 * layout. Needs __u32 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __FILEERR_H
#define __FILEERR_H

#define FILEERR_PATH_LEN 256    /* bytes of a path kept in an event (longer ones are cut) */

/* The key of the `fileerr_counts` map: 40 bytes, no implicit padding (the hash compares every
 * byte, so every byte is set). Text fields are NUL-padded. */
struct fileerr_key {
	char syscall[16];       /* "openat", "write", "renameat2", ... */
	__s32 error;            /* -errno the call returned, shown by name ("ENOENT") */
	char comm[16];          /* of the calling thread (TASK_COMM_LEN) */
	__u32 label;            /* label id of the filter target that matched (0: no filter) */
};

_Static_assert(sizeof(struct fileerr_key) == 40, "fileerr_key layout changed");

struct fileerr_value {
	__u64 count;            /* failed calls since the entry was made */
};

/* One failed call (with emit_events): 568 bytes, 8-aligned, no implicit padding. */
struct fileerr_event {
	__u32 pid;              /* tgid of the caller */
	__u32 tid;              /* its thread id */
	__s32 error;            /* -errno, shown by name */
	__s32 fd;               /* the fd the call was given (the directory fd of *at calls:
	                         * -100 is AT_FDCWD); -100 for open, unlink, rename, mkdir */
	char comm[16];
	char syscall[16];
	char path[FILEERR_PATH_LEN];  /* the path as the caller gave it (path-taking calls only;
	                               * renames: the old name) */
	char path2[FILEERR_PATH_LEN]; /* renames: the new name; otherwise empty */
	__u32 label;            /* label id of the filter target that matched (0: no filter) */
	__u32 __pad;
};

_Static_assert(sizeof(struct fileerr_event) == 568, "fileerr_event layout changed");

#endif /* __FILEERR_H */
