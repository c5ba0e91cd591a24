// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* exits: one event when a child of targ_ppid exits (a second program and channel for the
 * routing tests: one processor consuming two channels). */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include "bpfdepot.h"
#include "procs.h"

const volatile __u32 targ_ppid = 0;

BPFDEPOT_CHANNEL(exits_events, struct exits_event, 64 * 1024);

SEC("tp/sched/sched_process_exit")
int exits(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 id = bpf_get_current_pid_tgid();
	struct exits_event *e;

	if (BPF_CORE_READ(task, real_parent, tgid) != targ_ppid || (__u32)id != id >> 32)
		return 0; /* children of the test only, and their main thread */
	e = bpfdepot_reserve(exits_events);
	if (!e)
		return 0;
	e->pid = id >> 32;
	e->code = BPF_CORE_READ(task, exit_code) >> 8;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
