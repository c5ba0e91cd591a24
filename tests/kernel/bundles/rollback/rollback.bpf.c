// SPDX-License-Identifier: GPL-2.0
/* Two programs: the first attaches, the second names a tracepoint no kernel has. A syscall
 * tracepoint, because those are not in BTF: the build cannot tell it is missing (it names a
 * missing tracepoint of any other system), so the failure comes at attach, after the first
 * program attached, which is what the rollback test needs. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("tp/syscalls/sys_enter_getppid")
int rbk_first(void *ctx)
{
	return 0;
}

SEC("tp/syscalls/sys_enter_bpfdepot_none")
int rbk_second(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
