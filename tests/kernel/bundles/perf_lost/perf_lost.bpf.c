// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Test fixture: one 64-byte event per getppid() of one process through a perf buffer, built on
 * the stack as plain libbpf programs do, so `struct perf_lost_event` is in no BTF unless the
 * builder anchors it (the manifest names it with `event:`). With a 1-page ring a burst of
 * calls overflows it: the kernel's lost counts must make up the difference exactly. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct perf_lost_event {
	__u64 ts_ns;
	__u64 seq;
	__u32 pid;
	__u32 tid;
	char comm[16];
	__u64 arg0;
	__u64 arg1;
	__u64 arg2;
};

const volatile __u32 target_tgid = 0; /* 0: every process */

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} perf_lost_events SEC(".maps");

__u64 seq = 0;

SEC("tp/syscalls/sys_enter_getppid")
int perf_lost(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct perf_lost_event e = {};

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
	bpf_perf_event_output(ctx, &perf_lost_events, BPF_F_CURRENT_CPU, &e, sizeof(e));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
