// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Test fixture for the agent, written as plain libbpf programs are (no bpfdepot.h): one event
 * per getppid()
 * of one process, through a ring buffer reserved by pointer, so `struct event` is named in the
 * manifest with `event:`. Two programs, one per syscall, so two instances of this bundle can
 * trace different calls of the same process without seeing each other's. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct event {
	__u64 seq;
	__u32 pid;
	__u32 nr;  /* 110 getppid, 111 getpgrp (x86_64) */
};

const volatile __u32 target_tgid = 0; /* 0: every process */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

__u64 seq = 0;

static __always_inline int emit(__u32 nr)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct event *e;

	if (target_tgid && tgid != target_tgid)
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	e->seq = __sync_fetch_and_add(&seq, 1);
	e->pid = tgid;
	e->nr = nr;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
	return emit(110);
}

SEC("tp/syscalls/sys_enter_getpgrp")
int on_getpgrp(void *ctx)
{
	return emit(111);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
