// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* procs: one event per getppid() of any child of targ_ppid (the test process). shard.bpf.c
 * builds it again as program 'shard', with a larger ring and batched wakeups (PROCS_*). */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include "bpfdepot.h"
#include "procs.h"

#ifndef PROCS_NAME
#define PROCS_NAME procs
#define PROCS_RING_BYTES (1024 * 1024)
#define procs_submit(e) bpf_ringbuf_submit(e, 0)
#endif

const volatile __u32 targ_ppid = 0;

BPFDEPOT_CHANNEL(procs_events, struct procs_event, PROCS_RING_BYTES);

__u64 seq = 0;

SEC("tp/syscalls/sys_enter_getppid")
int PROCS_NAME(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 id = bpf_get_current_pid_tgid();
	struct procs_event *e;

	if (BPF_CORE_READ(task, real_parent, tgid) != targ_ppid)
		return 0;
	e = bpfdepot_reserve(procs_events);
	if (!e)
		return 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->seq = __sync_fetch_and_add(&seq, 1);
	e->pid = id >> 32;
	e->tid = (__u32)id;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	procs_submit(e);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
