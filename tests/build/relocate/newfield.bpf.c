// SPDX-License-Identifier: GPL-2.0
/* task_struct.throttled came with 6.18's task-based CFS throttling: absent on 6.1 and 6.12. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

__u32 seen_pid;
bool seen_throttled;

SEC("tp/sched/sched_process_exec")
int read_throttled(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	seen_pid = BPF_CORE_READ(task, pid);
	seen_throttled = BPF_CORE_READ(task, throttled);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
