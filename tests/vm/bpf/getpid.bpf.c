// SPDX-License-Identifier: GPL-2.0
/* Counts getpid() calls: a tracepoint program every kernel since 4.7 loads and attaches. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} calls SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getpid")
int count_getpid(struct trace_event_raw_sys_enter *ctx)
{
	u32 key = 0;
	u64 *n = bpf_map_lookup_elem(&calls, &key);

	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
