// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* oomkill: one event per OOM kill, from oom:mark_victim (no kprobe on oom_kill_process, which
 * libbpf-tools' oomkill needs). The tracepoint runs in the task whose allocation failed (the
 * trigger: current), naming the victim the OOM killer chose, so one event carries both: a
 * container's OOM caused by a neighbour in the same memcg shows as trigger != victim.
 *
 * tp_btf, not the tp/ record: its first argument is the victim's task_struct on 6.1, 6.12 and
 * 6.18 (checked in their BTF's btf_trace_mark_victim), so the victim's own cgroup can be read,
 * which the record does not carry. The record's other fields are read from the task the way
 * the tracepoint computes them (get_mm_counter, mm_pgtables_bytes), in kB.
 *
 * Under the process filter (bpfdepot run --unit/--cgroup/--pid) the victim decides, by its own
 * cgroup2 and process: an OOM in a monitored service is reported even when a task outside it
 * (sharing the memcg) triggered it, and one outside is not, whoever triggered it. */
#define BPFDEPOT_FILTER /* honours bpfdepot run --unit/--cgroup/--pid: the victim's */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "bpfdepot.h"
#include "bpfdepot_core.h"
#include "oomkill.h"

/* include/linux/mm_types_task.h: the counters' order, the same on every kernel here */
#define MM_FILEPAGES 0
#define MM_ANONPAGES 1
#define MM_SHMEMPAGES 3

/* mm->rss_stat before 6.2: one struct of atomic counters (an array of percpu_counter since,
 * commit f1a7941243c1), read as get_mm_counter() does in each. */
struct mm_rss_stat___pre_6_2 {
	atomic_long_t count[4];
};

struct mm_struct___pre_6_2 {
	struct mm_rss_stat___pre_6_2 rss_stat;
} __attribute__((preserve_access_index));

struct mm_struct___6_2 {
	struct percpu_counter rss_stat[4];
} __attribute__((preserve_access_index));

BPFDEPOT_CHANNEL(oomkill_events, struct oomkill_event, 64 * 1024);

/* Pages of one counter, as get_mm_counter() reads it (a percpu_counter's shared count, never
 * negative), in kB. */
static __always_inline __u64 counter_kb(struct mm_struct *mm, int member)
{
	long pages;

	if (bpf_core_type_exists(struct mm_rss_stat)) {
		struct mm_struct___pre_6_2 *old = (void *)mm;

		pages = BPF_CORE_READ(old, rss_stat.count[member].counter);
	} else {
		struct mm_struct___6_2 *now = (void *)mm;

		pages = BPF_CORE_READ(now, rss_stat[member].count);
	}
	return pages > 0 ? (__u64)pages * 4 : 0; /* 4 kB pages (x86_64, arm64 default) */
}

SEC("tp_btf/mark_victim")
int BPF_PROG(oomkill, struct task_struct *victim, uid_t uid)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct mm_struct *mm = BPF_CORE_READ(victim, mm);
	struct oomkill_event *e;
	__u32 label;

	if (!bpfdepot_monitored_task(victim, &label))
		return 0;
	e = bpfdepot_reserve(oomkill_events);
	if (!e)
		return 0;
	e->total_vm_kb = (__u64)BPF_CORE_READ(mm, total_vm) * 4;
	e->anon_rss_kb = counter_kb(mm, MM_ANONPAGES);
	e->file_rss_kb = counter_kb(mm, MM_FILEPAGES);
	e->shmem_rss_kb = counter_kb(mm, MM_SHMEMPAGES);
	e->pgtables_kb = (__u64)BPF_CORE_READ(mm, pgtables_bytes.counter) >> 10;
	e->victim_cgroup = BPF_CORE_READ(victim, cgroups, dfl_cgrp, kn, id);
	e->trigger_cgroup = bpf_get_current_cgroup_id();
	e->victim_pid = BPF_CORE_READ(victim, tgid);
	e->victim_uid = uid;
	e->trigger_pid = id >> 32;
	e->trigger_tid = (__u32)id;
	e->oom_score_adj = BPF_CORE_READ(victim, signal, oom_score_adj);
	e->__pad = 0;
	e->label = label;
	BPF_CORE_READ_STR_INTO(&e->victim_comm, victim, comm);
	bpf_get_current_comm(e->trigger_comm, sizeof(e->trigger_comm));
	bpfdepot_submit(oomkill_events, e);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
