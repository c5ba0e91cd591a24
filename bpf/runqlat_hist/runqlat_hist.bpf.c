// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* runqlat_hist: scheduler run-queue latency (wakeup to switch-in) as a log2 histogram of
 * microseconds per task and per cgroup, kept in hash maps the loader reads every interval
 * (channel type histogram). Plain libbpf style (libbpf-tools runqlat.bpf.c with --pids); the
 * bpfdepot header only for the process filter.
 *
 * tp_btf rather than tp/sched/...: the classic tracepoints carry only the woken task's pid,
 * not its tgid, so the targ_tgid filter could not be applied. Requeues after preemption are
 * not wakeups and are not measured (as bpf/runqlat).
 *
 * Honours bpfdepot run --unit/--cgroup/--pid: the woken task decides (as bpf/runqlat), judged
 * once at its wakeup, which runs in the waker's context. The maps are only gated: their keys
 * (a tid, a cgroup) already say whose waits they are, and a label in the key would add a
 * Prometheus label to every series. */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "bpfdepot.h"
#include "bpfdepot_core.h"
#include "bits.bpf.h"
#include "runqlat_hist.h"

/* Only tasks of this process (tgid) when non-zero; set in .rodata before load. */
const volatile __u32 targ_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);       /* tid of the woken task */
	__type(value, __u64);     /* bpf_ktime_get_ns() at wakeup */
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct hist_key);
	__type(value, struct hist);
} hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct cgroup_key);
	__type(value, struct hist);
} cgroup_hists SEC(".maps");

static struct hist zero_hist; /* .bss: the value a new task's histogram starts from */

static __always_inline int trace_enqueue(struct task_struct *p)
{
	__u32 pid = BPF_CORE_READ(p, pid), label;
	__u64 ts;

	if (!pid)
		return 0;
	if (targ_tgid && (__u32)BPF_CORE_READ(p, tgid) != targ_tgid)
		return 0;
	/* the woken task, not current (the waker): its cgroup and process decide */
	if (!bpfdepot_monitored_task(p, &label))
		return 0;
	ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&start, &pid, &ts, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(runqlat_hist_wakeup, struct task_struct *p)
{
	return trace_enqueue(p);
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(runqlat_hist_wakenew, struct task_struct *p)
{
	return trace_enqueue(p);
}

/* The first three arguments are the same on every target (prev_state was added at the end
 * in v5.18, commit fa2c3254d7cf). */
/* Count one wait of `slot` in the histogram of `key` in `map`, making it on first use. */
static __always_inline void count_slot(void *map, const void *key, __u64 slot)
{
	struct hist *h = bpf_map_lookup_elem(map, key);

	if (!h) {
		bpf_map_update_elem(map, key, &zero_hist, BPF_NOEXIST);
		h = bpf_map_lookup_elem(map, key);
	}
	if (h)
		__sync_fetch_and_add(&h->slots[slot], 1);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(runqlat_hist_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	struct hist_key key = {};
	struct cgroup_key cg = {};
	__u64 *tsp, slot;

	key.pid = BPF_CORE_READ(next, pid);
	tsp = bpf_map_lookup_elem(&start, &key.pid);
	if (!tsp)
		return 0; /* not woken while we watched, or filtered out */
	slot = log2_u64((bpf_ktime_get_ns() - *tsp) / 1000);
	if (slot >= MAX_SLOTS)
		slot = MAX_SLOTS - 1;
	count_slot(&hists, &key, slot);
	/* the task's cgroup2 (kernfs node id = the directory's inode), read from the task
	 * itself: the same on a hybrid host, where cgroup2 is mounted beside v1 */
	cg.cgroup = BPF_CORE_READ(next, cgroups, dfl_cgrp, kn, id);
	count_slot(&cgroup_hists, &cg, slot);
	bpf_map_delete_elem(&start, &key.pid);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
