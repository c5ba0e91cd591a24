// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* perf_flood: one 64-byte event per getppid() through a perf buffer, for throughput benchmarks.
 * Written as plain libbpf programs are (a stack event handed to bpf_perf_event_output, no
 * bpfdepot.h), so perf.yaml names the event struct with `event:`. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "flood.h"

const volatile __u32 target_tgid = 0; /* 0: every process */

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} perf_flood_events SEC(".maps");

__u64 seq = 0;

SEC("tp/syscalls/sys_enter_getppid")
int perf_flood(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct flood_event e = {};

	if (target_tgid && (id >> 32) != target_tgid)
		return 0;
	e.ts_ns = bpf_ktime_get_ns();
	e.seq = __sync_fetch_and_add(&seq, 1);
	e.pid = id >> 32;
	e.tid = (__u32)id;
	bpf_get_current_comm(e.comm, sizeof(e.comm));
	e.arg0 = 1;
	e.arg1 = 2;
	e.arg2 = 3;
	bpf_perf_event_output(ctx, &perf_flood_events, BPF_F_CURRENT_CPU, &e, sizeof(e));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
