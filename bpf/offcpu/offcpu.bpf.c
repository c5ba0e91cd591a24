// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* offcpu: time tasks spend off CPU (blocked, sleeping or preempted), in ns, per {pid, comm,
 * kernel stack, user stack}: the input of an off-CPU flame graph. The usual libbpf way
 * (libbpf-tools offcputime.bpf.c, tp_btf form): at sched_switch the task going off is the
 * current one, so its stacks are taken then and kept with the time per tid; when it is
 * switched back in, the delta is added to its key. The loader reads `counts` every interval
 * with lookup-and-delete and empties `stacks` of the ids it read.
 * Honours bpfdepot run --unit/--cgroup/--pid: the task going off CPU (current) decides, once,
 * at switch-out; its label rides in the key to the switch-in, so a task moved to another
 * cgroup while asleep is counted as it was judged. */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "bpfdepot.h"
#include "offcpu.h"

#define EEXIST 17

/* Only this process (tgid) when non-zero. */
const volatile __u32 targ_tgid = 0;
/* Only tasks in this cgroup (cgroup2 directory inode) when non-zero. */
const volatile __u64 targ_cgroup = 0;
/* Count a stretch off CPU only when it lasted at least / at most this long (µs). */
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
	__type(key, __u32);			/* tid */
	__type(value, struct offcpu_start);
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct offcpu_key);
	__type(value, __u64);			/* ns off CPU */
} counts SEC(".maps");

/* Stretches not counted because `counts` was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} counts_lost SEC(".maps");

static __always_inline void add(struct offcpu_key *key, __u64 delta)
{
	__u64 *total = bpf_map_lookup_elem(&counts, key);
	__u32 zero = 0;

	if (!total) {
		long err = bpf_map_update_elem(&counts, key, &delta, BPF_NOEXIST);

		if (!err)
			return;
		total = err == -EEXIST ? bpf_map_lookup_elem(&counts, key) : NULL;
	}
	if (total) {
		__sync_fetch_and_add(total, delta);
	} else {
		__u64 *lost = bpf_map_lookup_elem(&counts_lost, &zero);

		if (lost)
			__sync_fetch_and_add(lost, 1);
	}
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 prev_tgid = BPF_CORE_READ(prev, tgid), prev_pid = BPF_CORE_READ(prev, pid);
	__u32 next_pid = BPF_CORE_READ(next, pid);
	struct offcpu_start *s, st = {};
	__u64 now = bpf_ktime_get_ns(), delta;

	/* prev is current here: its stacks are the ones it goes off CPU with */
	if (prev_pid && (!targ_tgid || prev_tgid == targ_tgid) &&
	    (!targ_cgroup || bpf_get_current_cgroup_id() == targ_cgroup) &&
	    bpfdepot_monitored(&st.key.label)) {
		st.ts = now;
		st.key.pid = prev_tgid;
		bpf_get_current_comm(st.key.comm, sizeof(st.key.comm));
		st.key.kern_stack_id = bpf_get_stackid(ctx, &stacks, 0);
		st.key.user_stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
		bpf_map_update_elem(&start, &prev_pid, &st, BPF_ANY);
	}

	s = bpf_map_lookup_elem(&start, &next_pid);
	if (!s)
		return 0;
	delta = now - s->ts;
	if (delta >= min_block_us * 1000 && delta / 1000 <= max_block_us)
		add(&s->key, delta);
	bpf_map_delete_elem(&start, &next_pid);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
