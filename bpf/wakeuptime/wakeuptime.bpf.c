// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* wakeuptime: who wakes blocked tasks up, and after how long. At sched_switch a task going off
 * CPU (not preempted: it blocks) gets its time; at sched_waking, which runs in the waker's
 * context, the time the woken task was blocked is added to {waker pid, waker comm, woken comm,
 * waker kernel stack, waker user stack}, in ns. The usual libbpf way (libbpf-tools
 * wakeuptime.bpf.c, with tp_btf hooks instead of its kprobe).
 * Honours bpfdepot run --unit/--cgroup/--pid: the waker decides (current at sched_waking),
 * since the key and the stacks recorded are the waker's; its label is part of the key. The
 * woken task may be anywhere (the knobs targ_tgid/targ_cgroup select it). A wakeup from an
 * interrupt (a timer) runs in whatever task it interrupted, which the filter then judges, as
 * the key then names that task. */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "bpfdepot.h"
#include "wakeuptime.h"

#define EEXIST 17

/* Only wakeups of tasks of this process (tgid) when non-zero. */
const volatile __u32 targ_tgid = 0;
/* Only wakeups of tasks in this cgroup (cgroup2 directory inode, checked when they block). */
const volatile __u64 targ_cgroup = 0;
/* Count a blocked stretch only when it lasted at least / at most this long (µs). */
const volatile __u64 min_block_us = 1;
const volatile __u64 max_block_us = (__u64)-1;

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));
	__uint(max_entries, 16384);
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);	/* tid */
	__type(value, __u64);	/* bpf_ktime_get_ns() when it blocked */
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct wakeuptime_key);
	__type(value, __u64);	/* ns the woken tasks were blocked */
} counts SEC(".maps");

/* Wakeups not counted because `counts` was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} counts_lost SEC(".maps");

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 pid = BPF_CORE_READ(prev, pid);
	__u64 now;

	if (preempt || !pid)	/* preempted tasks are runnable: nobody wakes them */
		return 0;
	if (targ_tgid && BPF_CORE_READ(prev, tgid) != targ_tgid)
		return 0;
	if (targ_cgroup && bpf_get_current_cgroup_id() != targ_cgroup)
		return 0;
	now = bpf_ktime_get_ns();
	bpf_map_update_elem(&start, &pid, &now, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_waking")
int BPF_PROG(sched_waking, struct task_struct *p)
{
	__u32 pid = BPF_CORE_READ(p, pid), zero = 0;
	struct wakeuptime_key key = {};
	__u64 *ts, delta, *total;

	ts = bpf_map_lookup_elem(&start, &pid);
	if (!ts)
		return 0;
	delta = bpf_ktime_get_ns() - *ts;
	bpf_map_delete_elem(&start, &pid);
	if (delta < min_block_us * 1000 || delta / 1000 > max_block_us)
		return 0;
	if (!bpfdepot_monitored(&key.label))
		return 0;

	key.pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	BPF_CORE_READ_STR_INTO(&key.target, p, comm);
	key.kern_stack_id = bpf_get_stackid(ctx, &stacks, 0);
	key.user_stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);

	total = bpf_map_lookup_elem(&counts, &key);
	if (!total) {
		long err = bpf_map_update_elem(&counts, &key, &delta, BPF_NOEXIST);

		if (!err)
			return 0;
		total = err == -EEXIST ? bpf_map_lookup_elem(&counts, &key) : NULL;
	}
	if (total) {
		__sync_fetch_and_add(total, delta);
	} else {
		__u64 *lost = bpf_map_lookup_elem(&counts_lost, &zero);

		if (lost)
			__sync_fetch_and_add(lost, 1);
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
