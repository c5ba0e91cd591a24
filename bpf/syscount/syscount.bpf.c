// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* syscount: system calls per (process, syscall number), counted in a hash map that the
 * loader reads whole every interval (channel type hash_map). Written the plain libbpf way
 * (libbpf-tools syscount.bpf.c); the bpfdepot header only for the process filter
 * (bpfdepot_monitored: `bpfdepot run --unit/--cgroup/--pid`). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#define BPFDEPOT_FILTER
#include "bpfdepot.h"
#include "syscount.h"

/* Only this process (tgid) when non-zero; set in .rodata before load. */
const volatile __u32 targ_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct syscount_key);
	__type(value, struct syscount_value);
} counts SEC(".maps");

/* raw_syscalls:sys_enter as the tracepoint format file lays it out (the same on every
 * target); our own struct, so the program does not depend on vmlinux.h's name for it. */
struct syscount_sys_enter {
	__u64 common;          /* common_type, flags, preempt_count, pid */
	long id;               /* syscall number */
	unsigned long args[6];
};

SEC("tracepoint/raw_syscalls/sys_enter")
int syscount_enter(struct syscount_sys_enter *ctx)
{
	struct syscount_key key = {};
	struct syscount_value one = { .count = 1 }, *v;

	key.tgid = bpf_get_current_pid_tgid() >> 32;
	if (targ_tgid && key.tgid != targ_tgid)
		return 0;
	if (!bpfdepot_monitored(&key.label))
		return 0;
	key.nr = (__u32)ctx->id;
	v = bpf_map_lookup_elem(&counts, &key);
	if (v) {
		__sync_fetch_and_add(&v->count, 1);
		return 0;
	}
	/* first call of this pair: insert; another CPU may have inserted it meanwhile */
	if (bpf_map_update_elem(&counts, &key, &one, BPF_NOEXIST)) {
		v = bpf_map_lookup_elem(&counts, &key);
		if (v)
			__sync_fetch_and_add(&v->count, 1);
	}
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
