// SPDX-License-Identifier: GPL-2.0
/* Two programs: the first attaches, the second names a tracepoint no kernel has. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("tp/syscalls/sys_enter_getppid")
int rbk_first(void *ctx)
{
	return 0;
}

SEC("tp/bpfdepot_none/no_such_tracepoint")
int rbk_second(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
