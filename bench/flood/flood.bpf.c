// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* flood: one 64-byte event per getppid() of the target process, for throughput benchmarks. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "bpfdepot.h"
#include "flood.h"

const volatile __u32 target_tgid = 0; /* 0: every process */

BPFDEPOT_CHANNEL(flood_events, struct flood_event, 64 * 1024 * 1024);

__u64 seq = 0;

SEC("tp/syscalls/sys_enter_getppid")
int flood(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct flood_event *e;

	if (target_tgid && (id >> 32) != target_tgid)
		return 0;
	e = bpfdepot_reserve(flood_events);
	if (!e)
		return 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->seq = __sync_fetch_and_add(&seq, 1);
	e->pid = id >> 32;
	e->tid = (__u32)id;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->arg0 = 1;
	e->arg1 = 2;
	e->arg2 = 3;
	bpfdepot_submit(flood_events, e);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
