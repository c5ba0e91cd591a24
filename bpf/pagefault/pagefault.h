/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* pagefault.h: the event of pagefault, the single source of its layout.
 * Needs __u64 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __PAGEFAULT_H
#define __PAGEFAULT_H

/* 48 bytes, 8-aligned, no implicit padding: every byte is a named field. */
struct pagefault_event {
	__u64 address;          /* faulting user address (CR2) */
	__u64 ip;               /* user instruction pointer at the fault */
	__u64 error_code;       /* x86 X86_PF_* bits: 1 present, 2 write, 4 user, 16 instr fetch */
	__u32 pid;              /* tgid of the faulting task */
	__u32 tid;              /* its thread id */
	char comm[16];          /* of the faulting thread (TASK_COMM_LEN) */
};

_Static_assert(sizeof(struct pagefault_event) == 48, "pagefault_event layout changed");

#endif /* __PAGEFAULT_H */
