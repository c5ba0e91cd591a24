// SPDX-License-Identifier: GPL-2.0
/* Rejected after a long walk: ~1,600 instructions logged before the unchecked access, a
 * verifier log of ~100 KiB whose last lines are the ones that matter. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64[64]);
} sums SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_write")
int sum_write(struct trace_event_raw_sys_enter *ctx)
{
	u64 acc = ctx->args[2];
	u32 key = 0;
	u64 *slot = bpf_map_lookup_elem(&sums, &key);

	if (!slot)
		return 0;
#pragma clang loop unroll(full)
	for (int i = 0; i < 800; i++) {
		acc = acc * 31 + i;
		asm volatile("" : "+r"(acc)); /* keeps clang from folding the loop away */
	}
	slot[(u32)acc] = acc; /* acc is any u32: the verifier says no */
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
