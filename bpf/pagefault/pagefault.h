/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* pagefault.h: the event and map layouts of pagefault, the single source of their layout.
 * Needs __u64 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __PAGEFAULT_H
#define __PAGEFAULT_H

#define PAGEFAULT_COMM_LEN 16
#define PAGEFAULT_MAX_STACK_DEPTH 127
/* The address histogram: a fault at address A lands in the 1 GiB window A >> 30 (one key per
 * window and pid: mappings far apart, such as the heap, the libraries and the stack, get
 * their own key), and inside it in slot (A & (1 GiB - 1)) >> 24: 64 slots of 16 MiB. */
#define PAGEFAULT_WINDOW_SHIFT 30
#define PAGEFAULT_SLOT_SHIFT 24
#define PAGEFAULT_SLOTS 64

/* 56 bytes, 8-aligned, no implicit padding: every byte is a named field. */
struct pagefault_event {
	__u64 address;          /* faulting user address (CR2) */
	__u64 ip;               /* user instruction pointer at the fault */
	__u64 error_code;       /* x86 X86_PF_* bits: 1 present, 2 write, 4 user, 16 instr fetch */
	__u32 pid;              /* tgid of the faulting task */
	__u32 tid;              /* its thread id */
	char comm[16];          /* of the faulting thread (TASK_COMM_LEN) */
	__u32 label;            /* label id of the filter target that matched (0: no filter) */
	__u32 __pad;
};

_Static_assert(sizeof(struct pagefault_event) == 56, "pagefault_event layout changed");

/* fault_counts key: per process and cgroup (cgroup2 id of the faulting task). */
struct pagefault_key {
	__u64 cgroup;
	__u32 pid;              /* tgid */
	char comm[PAGEFAULT_COMM_LEN];
	__u32 label;            /* label id of the filter target that matched (0: no filter);
				 * explicit, so a key built on the stack hashes the same */
};

/* fault_counts value: faults since load (the loader reads the map cumulatively). */
struct pagefault_counts {
	__u64 user_faults;      /* exceptions:page_fault_user: faults taken in user mode */
	__u64 kernel_faults;    /* exceptions:page_fault_kernel: in kernel mode (copy_to_user ...) */
	__u64 file_faults;      /* filemap:mm_filemap_fault (6.12+): file-backed faults that
				 * reached filemap_fault, the path of every major fault */
	__u64 cache_fills;      /* 6.1 only, instead of file_faults: pages this task added to the page
				 * cache (filemap:mm_filemap_add_to_page_cache: reads and faults) */
};

/* fault_addrs key: a 1 GiB address window of one process. */
struct pagefault_window {
	__u64 window;           /* the window's first address: A & ~(1 GiB - 1) */
	__u32 pid;
	__u32 label;            /* label id of the filter target that matched (0: no filter) */
};

struct pagefault_hist {
	__u32 slots[PAGEFAULT_SLOTS]; /* slot i: user faults at window + [16 i, 16 (i+1)) MiB */
};

/* fault_stacks key: user stacks of user-mode faults; the value is the count (__u64). */
struct pagefault_stack_key {
	__u32 pid;
	__s32 user_stack_id;    /* id in `stacks`, or -errno (see bpf_get_stackid) */
	char comm[PAGEFAULT_COMM_LEN];
};

#endif /* __PAGEFAULT_H */
