// SPDX-License-Identifier: GPL-2.0
/* Uses a map lookup result without the NULL check the verifier demands. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH); /* an array lookup with a constant key is proven non-NULL on 6.13+ */
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

SEC("tp/syscalls/sys_enter_getppid")
int vrf_reject(void *ctx)
{
	__u32 key = 0;
	__u64 *n = bpf_map_lookup_elem(&counts, &key);

	*n += 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
