// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* runqlat: scheduler run-queue latency per wakeup, from sched_wakeup(_new) of a task to the
 * sched_switch that puts it on a CPU.
 *
 * BTF tracepoints (tp_btf), not tp/sched/...: the classic tracepoints carry only the woken
 * task's pid and comm, so neither the event's tgid nor the targ_tgid filter could be had
 * there. tp_btf hands over the task_struct pointers themselves; it needs kernel BTF (5.5+),
 * which every bpfdepot target has, and no kprobe or fentry. Requeues after preemption (a
 * task switched out while still TASK_RUNNING) are not wakeups and are not measured. */
#define BPFDEPOT_FILTER /* honours bpfdepot run --unit/--cgroup/--pid: the woken task's */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "bpfdepot.h"
#include "bpfdepot_core.h"
#include "runqlat.h"

/* Only tasks of this process (tgid) when non-zero; set in .rodata before load. */
const volatile __u32 targ_tgid = 0;

struct runqlat_start {
	__u64 ts;                 /* bpf_ktime_get_ns() at wakeup */
	__u32 label;              /* the filter's, decided at wakeup */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);       /* tid of the woken task */
	__type(value, struct runqlat_start);
} start SEC(".maps");

BPFDEPOT_CHANNEL(runqlat_events, struct runqlat_event, 1024 * 1024);

static __always_inline int trace_enqueue(struct task_struct *p)
{
	__u32 pid = BPF_CORE_READ(p, pid);
	struct runqlat_start st;

	if (!pid) /* idle is never woken, but be sure it is never keyed */
		return 0;
	if (targ_tgid && (__u32)BPF_CORE_READ(p, tgid) != targ_tgid)
		return 0;
	/* The woken task, not current (the waker): its cgroup and process decide. */
	if (!bpfdepot_monitored_task(p, &st.label))
		return 0;
	st.ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&start, &pid, &st, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(runqlat_wakeup, struct task_struct *p)
{
	return trace_enqueue(p);
}

/* A new task's first wakeup, after fork/clone; sched_wakeup does not fire for it. */
SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(runqlat_wakenew, struct task_struct *p)
{
	return trace_enqueue(p);
}

/* Arguments since v5.18 end with prev_state (commit fa2c3254d7cf); the first three, used here,
 * are the same on every target kernel. */
SEC("tp_btf/sched_switch")
int BPF_PROG(runqlat_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	struct runqlat_event *e;
	__u32 pid = BPF_CORE_READ(next, pid);
	struct runqlat_start *st;
	__u64 now;

	st = bpf_map_lookup_elem(&start, &pid);
	if (!st)
		return 0; /* not woken while we watched, or filtered out */

	now = bpf_ktime_get_ns();
	e = bpfdepot_reserve(runqlat_events);
	if (e) {
		e->delta_ns = now - st->ts;
		e->pid = pid;
		e->tgid = BPF_CORE_READ(next, tgid);
		e->prev_pid = BPF_CORE_READ(prev, pid);
		e->cpu = bpf_get_smp_processor_id();
		e->label = st->label;
		/* comm is always NUL-terminated in the kernel; _str reads stop there, so zero the
		 * ring memory (not zeroed by reserve) to keep the tail deterministic. */
		__builtin_memset(e->comm, 0, sizeof(e->comm));
		__builtin_memset(e->prev_comm, 0, sizeof(e->prev_comm));
		BPF_CORE_READ_STR_INTO(&e->comm, next, comm);
		BPF_CORE_READ_STR_INTO(&e->prev_comm, prev, comm);
		bpfdepot_submit(runqlat_events, e);
	}
	/* Delete even when the ring was full: the loss is counted, the stale start must not be. */
	bpf_map_delete_elem(&start, &pid);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
