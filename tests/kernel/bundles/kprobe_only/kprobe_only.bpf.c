// SPDX-License-Identifier: GPL-2.0
/* A kprobe with no tracepoint form: refused before loading on kernels without kprobes. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("kprobe/do_nanosleep")
int kpo_nanosleep(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
