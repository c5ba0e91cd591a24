// SPDX-License-Identifier: GPL-2.0
/* The same read as newfield.bpf.c, behind bpf_core_field_exists: loads on every kernel. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

bool seen_throttled;
int has_throttled;

SEC("tp/sched/sched_process_exec")
int read_throttled_if_there(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	if (bpf_core_field_exists(task->throttled)) {
		seen_throttled = BPF_CORE_READ(task, throttled);
		has_throttled = 1;
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
