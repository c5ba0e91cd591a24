// SPDX-License-Identifier: GPL-2.0
/* Two programs: a raw tracepoint the VM attaches, and a socket filter it can only load. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

u64 switches = 0;

SEC("raw_tp/sched_switch")
int on_switch(void *ctx)
{
	__sync_fetch_and_add(&switches, 1);
	return 0;
}

SEC("socket")
int keep_all(struct __sk_buff *skb)
{
	return skb->len;
}

char LICENSE[] SEC("license") = "GPL";
