// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* oomkill: one event per OOM kill, from oom:mark_victim (no kprobe on oom_kill_process, which
 * libbpf-tools' oomkill needs). The tracepoint runs in the task whose allocation failed (the
 * trigger: current), naming the victim the OOM killer chose, so one event carries both: a
 * container's OOM caused by a neighbour in the same memcg shows as trigger != victim. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "bpfdepot.h"
#include "oomkill.h"

/* The record as tracefs lays it out; the same on 6.1, 6.12 and 6.18 (checked in their BTF's
 * trace_event_raw_mark_victim). Our own struct, as Coroot's proc.c does, so the program does
 * not depend on vmlinux.h naming the record; trace_entry comes from the target's vmlinux.h. */
struct oomkill_mark_victim_args {
	struct trace_entry ent;
	int pid;
	__u32 __data_loc_comm;      /* low 16 bits: offset of the string from the record start */
	unsigned long total_vm;
	unsigned long anon_rss;
	unsigned long file_rss;
	unsigned long shmem_rss;
	__u32 uid;
	unsigned long pgtables;
	short oom_score_adj;
};

BPFDEPOT_CHANNEL(oomkill_events, struct oomkill_event, 64 * 1024);

SEC("tp/oom/mark_victim")
int oomkill(struct oomkill_mark_victim_args *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct oomkill_event *e;
	__u32 loc = ctx->__data_loc_comm;

	e = bpfdepot_reserve(oomkill_events);
	if (!e)
		return 0;
	e->total_vm_kb = ctx->total_vm;
	e->anon_rss_kb = ctx->anon_rss;
	e->file_rss_kb = ctx->file_rss;
	e->shmem_rss_kb = ctx->shmem_rss;
	e->pgtables_kb = ctx->pgtables;
	e->trigger_cgroup = bpf_get_current_cgroup_id();
	e->victim_pid = ctx->pid;
	e->victim_uid = ctx->uid;
	e->trigger_pid = id >> 32;
	e->trigger_tid = (__u32)id;
	e->oom_score_adj = ctx->oom_score_adj;
	e->__pad[0] = e->__pad[1] = e->__pad[2] = 0;
	/* __data_loc: the string lives inside the record, (loc & 0xffff) bytes from its start */
	bpf_probe_read_kernel_str(e->victim_comm, sizeof(e->victim_comm),
				  (void *)ctx + (loc & 0xffff));
	bpf_get_current_comm(e->trigger_comm, sizeof(e->trigger_comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
