// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* switch_count: one event per context switch away from a task whose comm is targ_comm, in two
 * forms of the same hook, written the usual libbpf way: tp_btf/sched_switch (BTF pointers, needs
 * kernel BTF) and raw_tp/sched_switch (CO-RE reads). Loaded together both fire and every switch
 * is seen twice; the manifest's forms: keeps only the first form this kernel offers.
 * Honours bpfdepot run --unit/--cgroup/--pid: the task switched out decides, which is current
 * (sched_switch runs in prev's context, before the switch), so the plain current-task filter. */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "bpfdepot.h"
#include "switch_count.h"

/* Only tasks with this comm (NUL-padded) when non-empty; set before load. */
const volatile char targ_comm[TASK_COMM_LEN] = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} switch_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} switch_events_lost SEC(".maps");

/* Keeps struct switch_event in BTF (the ring buffer itself has no value type). */
const struct switch_event *unused_switch_event __attribute__((unused));

static __always_inline int emit(struct task_struct *prev, unsigned int prev_state, __u32 form)
{
	char comm[TASK_COMM_LEN];
	struct switch_event *e;
	__u32 zero = 0, label;

	if (!bpfdepot_monitored(&label))
		return 0;
	bpf_core_read(comm, sizeof(comm), &prev->comm);
	if (targ_comm[0]) {
		for (int i = 0; i < TASK_COMM_LEN; i++) {
			if (comm[i] != targ_comm[i])
				return 0;
			if (!comm[i])
				break;
		}
	}
	e = bpf_ringbuf_reserve(&switch_events, sizeof(*e), 0);
	if (!e) {
		__u64 *lost = bpf_map_lookup_elem(&switch_events_lost, &zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
		return 0;
	}
	e->pid = BPF_CORE_READ(prev, pid);
	e->tgid = BPF_CORE_READ(prev, tgid);
	e->prev_state = prev_state;
	e->form = form;
	e->label = label;
	__builtin_memcpy(e->comm, comm, sizeof(comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(on_switch_btf, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	return emit(prev, prev_state, 1);
}

SEC("raw_tp/sched_switch")
int BPF_PROG(on_switch_raw, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	return emit(prev, prev_state, 2);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
