// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* cpustate: on-CPU and off-CPU time and voluntary vs involuntary context switches per process,
 * from sched_switch alone, kept in a hash map the loader reads every interval. Written the
 * usual libbpf way (plain SEC() programs and maps, const volatile knobs).
 *
 * A switch-out in TASK_RUNNING (or with preempt set) is involuntary: the task could have gone
 * on running. Any other state means it blocked or slept: voluntary. Time is charged at the
 * switch that ends it. A thread's clock starts at its first switch-out seen, so one that was
 * already on or off CPU when the program loaded starts counting there.
 *
 * Honours bpfdepot run --unit/--cgroup/--pid: the task switched out decides (current:
 * sched_switch runs before the switch), once per off-CPU stretch, and its clock carries the
 * label to its switch-in, as an entry/exit pair does. A task outside the filter has no clock,
 * so its switch-in costs one lookup, not a walk of its cgroups. */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "bpfdepot.h"
#include "cpustate.h"

/* Only the threads of this process (tgid) when non-zero; set in .rodata before load. */
const volatile __u32 targ_tgid = 0;

#define TASK_RUNNING 0
#define E2BIG 7

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);	/* tid */
	__type(value, struct cpustate_clock);
} last_switch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct cpustate_key);
	__type(value, struct cpustate);
} cpustate SEC(".maps");

/* Processes not counted because `cpustate` was full: the loader shows it as the channel's lost. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} cpustate_lost SEC(".maps");

static struct cpustate zero_state; /* .bss: a new process's counters */

static __always_inline struct cpustate *state_of(__u32 tgid)
{
	struct cpustate_key key = { .pid = tgid };
	struct cpustate *s = bpf_map_lookup_elem(&cpustate, &key);
	__u32 zero = 0;
	__u64 *full;

	if (s)
		return s;
	if (bpf_map_update_elem(&cpustate, &key, &zero_state, BPF_NOEXIST) == -E2BIG) {
		full = bpf_map_lookup_elem(&cpustate_lost, &zero);
		if (full)
			*full += 1;
		return NULL;
	}
	return bpf_map_lookup_elem(&cpustate, &key);
}

/* At a monitored thread's switch-out: the time since its switch-in (0 the first time), and its
 * clock restarted with the label it was judged with. */
static __always_inline __u64 switched_out(__u32 tid, __u64 now, __u32 label)
{
	struct cpustate_clock *c = bpf_map_lookup_elem(&last_switch, &tid), fresh = {};
	__u64 delta = 0;

	if (c) {
		delta = now - c->ts;
		c->ts = now;
		c->label = label;
	} else {
		fresh.ts = now;
		fresh.label = label;
		bpf_map_update_elem(&last_switch, &tid, &fresh, BPF_ANY);
	}
	return delta;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(cpustate_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u64 now = bpf_ktime_get_ns(), delta;
	__u32 tid = prev->pid, tgid = prev->tgid, label;
	struct cpustate_clock *c;
	struct cpustate *s;

	if (tid && (!targ_tgid || tgid == targ_tgid)) {
		if (bpfdepot_monitored(&label)) {
			delta = switched_out(tid, now, label);
			s = state_of(tgid);
			if (s) {
				s->label = label;
				__sync_fetch_and_add(&s->on_ns, delta);
				if (preempt || BPF_CORE_READ(prev, __state) == TASK_RUNNING)
					__sync_fetch_and_add(&s->involuntary, 1);
				else
					__sync_fetch_and_add(&s->voluntary, 1);
				bpf_probe_read_kernel_str(s->comm, sizeof(s->comm), prev->comm);
			}
		} else {
			/* outside the filter: no clock, so its switch-in counts nothing. It has one
			 * only if it just left the filter; the lookup is lock-free, a delete is not. */
			if (bpf_map_lookup_elem(&last_switch, &tid))
				bpf_map_delete_elem(&last_switch, &tid);
		}
	}
	/* next: only a thread whose switch-out was counted has a clock (targ_tgid and the filter
	 * were applied then) */
	tid = next->pid;
	c = bpf_map_lookup_elem(&last_switch, &tid);
	if (!c)
		return 0;
	delta = now - c->ts;
	c->ts = now;
	s = state_of(next->tgid);
	if (s) {
		s->label = c->label;
		__sync_fetch_and_add(&s->off_ns, delta);
	}
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(cpustate_exit, struct task_struct *p)
{
	__u32 tid = p->pid;

	bpf_map_delete_elem(&last_switch, &tid); /* a dead thread's clock is not needed */
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
