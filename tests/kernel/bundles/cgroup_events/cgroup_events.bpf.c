// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Test fixture: one event per getppid() of one process, carrying the caller's cgroup2 id, so
 * the label resolver can be checked against the ids the kernel really reports (tests/kernel/
 * test_labels.py moves the process between cgroups mid-run). Plain libbpf style. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct cgroup_event {
	__u64 cgroup_id;
	__u64 seq;
	__u32 pid;
};

const volatile __u32 target_tgid = 0; /* 0: every process */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} cgroup_events SEC(".maps");

__u64 seq = 0; /* 64-bit: clang 14 (-mcpu=v1) cannot use a 32-bit XADD's result */

SEC("tp/syscalls/sys_enter_getppid")
int cgroup_event(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct cgroup_event *e;

	if (target_tgid && tgid != target_tgid)
		return 0;
	e = bpf_ringbuf_reserve(&cgroup_events, sizeof(*e), 0);
	if (!e)
		return 0;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->pid = tgid;
	e->seq = __sync_fetch_and_add(&seq, 1);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
