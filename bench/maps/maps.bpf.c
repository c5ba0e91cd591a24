// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* maps: two maps for bench/bench_maps.py, which fills them from user space (a 10,000-entry
 * hash map and a 64-key histogram map); the program only exists so the object loads. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "maps.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct entry_key);
	__type(value, struct entry_value);
} entries SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct hist);
} hists SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int maps_touch(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
