/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* syscount.h: the key and value of the `counts` map, the single source of their layout.
 * Needs __u32 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __SYSCOUNT_H
#define __SYSCOUNT_H

struct syscount_key {
	__u32 tgid;   /* the calling process */
	__u32 nr;     /* syscall number (x86_64: 110 is getppid) */
	__u32 label;  /* label id of the filter target the caller matched (0: no filter) */
};

struct syscount_value {
	__u64 count;  /* calls since the entry was made (or last read, with reset: true) */
};

#endif /* __SYSCOUNT_H */
