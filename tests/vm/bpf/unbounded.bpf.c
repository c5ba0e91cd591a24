// SPDX-License-Identifier: GPL-2.0
/* Rejected by every verifier: indexes a map value with a syscall argument, unchecked. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64[64]);
} slots SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_read")
int count_read(struct trace_event_raw_sys_enter *ctx)
{
	u32 key = 0;
	u64 *slot = bpf_map_lookup_elem(&slots, &key);

	if (slot)
		slot[(u32)ctx->args[0]] += 1; /* the fd, unchecked: the verifier says no */
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
