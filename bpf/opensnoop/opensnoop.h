/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* opensnoop.h: the event of opensnoop, the single source of its layout.
 * Needs __u64 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __OPENSNOOP_H
#define __OPENSNOOP_H

#define OPENSNOOP_NAME_LEN 256

/* 312 bytes, 8-aligned, no implicit padding: every byte is a named field.
 * flags and mode depend on the form the program was built in (see opensnoop.bpf.c):
 * the tracepoint form reports the syscall's arguments as the caller passed them; the kprobe
 * and fexit forms report the kernel's struct open_how, where a 64-bit openat()/open() has
 * O_LARGEFILE forced on (force_o_largefile()) and mode is 0 unless O_CREAT/O_TMPFILE. */
struct opensnoop_event {
	__u64 ts_ns;            /* bpf_ktime_get_ns() when the open returned */
	__u32 pid;              /* tgid */
	__u32 tid;              /* thread id */
	__u32 uid;              /* real uid */
	__s32 ret;              /* fd, or -errno */
	__s32 flags;            /* O_* flags */
	__u32 mode;             /* permission bits for O_CREAT / O_TMPFILE */
	__u32 label;            /* label id of the filter target that matched (0: no filter) */
	__u32 __pad;
	char comm[16];          /* TASK_COMM_LEN */
	char filename[OPENSNOOP_NAME_LEN]; /* as passed by the caller (relative paths stay relative) */
};

_Static_assert(sizeof(struct opensnoop_event) == 312, "opensnoop_event layout changed");

#endif /* __OPENSNOOP_H */
