// SPDX-License-Identifier: GPL-2.0
/* Flavoured types, as libbpf-tools' core_fixes.bpf.h declares them. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

/* only the fields read: CO-RE matches task_struct___x to the kernel's task_struct */
struct task_struct___x {
	int pid;
	int tgid;
} __attribute__((preserve_access_index));

/* before 5.14 (commit 2f064a59a11f) the state field was 'state' */
struct task_struct___o {
	volatile long state;
} __attribute__((preserve_access_index));

__u32 seen_pid, seen_tgid;
__u64 seen_state;

SEC("tp/sched/sched_process_exec")
int flavoured_pid(void *ctx)
{
	struct task_struct___x *task = (void *)bpf_get_current_task();

	seen_pid = BPF_CORE_READ(task, pid);
	seen_tgid = BPF_CORE_READ(task, tgid);
	return 0;
}

SEC("tp/sched/sched_process_exec")
int state_either_way(void *ctx)
{
	struct task_struct *task = (void *)bpf_get_current_task();

	if (bpf_core_field_exists(task->__state))
		seen_state = BPF_CORE_READ(task, __state);
	else
		seen_state = BPF_CORE_READ((struct task_struct___o *)task, state);
	return 0;
}

SEC("tp/sched/sched_process_exec")
int old_state_only(void *ctx)
{
	struct task_struct___o *task = (void *)bpf_get_current_task();

	seen_state = BPF_CORE_READ(task, state);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
