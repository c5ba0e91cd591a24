/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* oomkill.h: the event of oomkill, the single source of its layout.
 * Needs __u64 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __OOMKILL_H
#define __OOMKILL_H

#define OOMKILL_COMM_LEN 16

/* 112 bytes, 8-aligned, no implicit padding. Sizes are kB, as the tracepoint records them. */
struct oomkill_event {
	__u64 total_vm_kb;          /* victim's virtual memory */
	__u64 anon_rss_kb;          /* victim's resident anonymous memory */
	__u64 file_rss_kb;          /* ... file-backed */
	__u64 shmem_rss_kb;         /* ... shared memory */
	__u64 pgtables_kb;          /* its page tables */
	__u64 victim_cgroup;        /* cgroup2 id of the victim (its directory's inode) */
	__u64 trigger_cgroup;       /* cgroup2 id of the task whose allocation hit the limit */
	__u32 victim_pid;           /* the task the OOM killer chose */
	__u32 victim_uid;
	__u32 trigger_pid;          /* tgid of the allocating task (current) */
	__u32 trigger_tid;
	__s16 oom_score_adj;        /* victim's, -1000..1000 */
	__u16 __pad;
	__u32 label;                /* label id of the filter target that matched (0: no filter) */
	char victim_comm[OOMKILL_COMM_LEN];
	char trigger_comm[OOMKILL_COMM_LEN];
};

_Static_assert(sizeof(struct oomkill_event) == 112, "oomkill_event layout changed");

#endif /* __OOMKILL_H */
