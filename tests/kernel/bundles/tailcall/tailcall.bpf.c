// SPDX-License-Identifier: GPL-2.0
/* A user's program written the usual libbpf way: an attached tracepoint program tail-calls a
 * second one through a prog array libbpf fills at load; the second has a bare SEC("tracepoint")
 * (no attach point) and only runs through the tail call. Counts getppid() calls of one process. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

const volatile __u32 targ_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);   /* tgid */
	__type(value, __u64); /* calls counted by the tail-called program */
} calls SEC(".maps");

SEC("tracepoint")
int count_call(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 one = 1, *n;

	n = bpf_map_lookup_elem(&calls, &tgid);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&calls, &tgid, &one, BPF_NOEXIST);
	return 0;
}

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, int(void *));
} next SEC(".maps") = {
	.values = {[0] = (void *)&count_call},
};

SEC("tp/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
	if (targ_tgid && (bpf_get_current_pid_tgid() >> 32) != targ_tgid)
		return 0;
	bpf_tail_call(ctx, &next, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
