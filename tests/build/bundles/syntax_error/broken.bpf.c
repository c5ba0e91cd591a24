// SPDX-License-Identifier: GPL-2.0
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("tp/syscalls/sys_enter_getppid")
int broken(void *ctx)
{
	return 0 /* the semicolon is missing on purpose */
}

char LICENSE[] SEC("license") = "GPL";
