// SPDX-License-Identifier: GPL-2.0
/* Reads fields every 6.x kernel has: passes the relocation check everywhere. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

__u64 seen_state;
__u32 seen_pid;

SEC("tp/sched/sched_process_exec")
int handle_exec(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	seen_state = BPF_CORE_READ(task, __state);
	seen_pid = BPF_CORE_READ(task, pid);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
