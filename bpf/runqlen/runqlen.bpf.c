// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* runqlen: how many tasks wait on each CPU's run queue, sampled by a perf event (software
 * cpu-clock, 99 Hz per CPU by the manifest) and kept as a linear histogram per CPU that the
 * loader reads every interval. Written the usual libbpf way (as libbpf-tools' runqlen is):
 * a SEC("perf_event") program, plain maps, const volatile knobs.
 *
 * The length is the CPU's runnable tasks (rq->nr_running, every scheduling class and group)
 * less the running one. With `group_queue` it is instead the CFS queue of the sampled task's
 * group (task->se.cfs_rq), as libbpf-tools' runqlen measures: with cgroups or autogroups each
 * group has its own queue, so a sample landing on another group's task sees that one. The CFS
 * field was renamed in 6.18 (cfs_rq.nr_running -> nr_queued): two CO-RE flavours, the one this
 * kernel has is read. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "runqlen.h"

/* Count the running task too (libbpf-tools' default leaves it out). */
const volatile bool count_running = false;
/* The sampled task's CFS group queue instead of the whole CPU's. */
const volatile bool group_queue = false;

struct cfs_rq___pre_6_18 {
	unsigned int nr_running;
} __attribute__((preserve_access_index));

struct cfs_rq___6_18 {
	unsigned int nr_queued;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 0);	/* sized by the loader: manifest maps: one per possible CPU */
	__type(key, struct runqlen_key);
	__type(value, struct runqlen_hist);
} runqlen_hists SEC(".maps");

static struct runqlen_hist zero_hist; /* .bss: the value a CPU's histogram starts from */

static __always_inline __u64 queued(void *cfs_rq)
{
	struct cfs_rq___6_18 *now = cfs_rq;
	struct cfs_rq___pre_6_18 *old = cfs_rq;

	if (bpf_core_field_exists(now->nr_queued))
		return BPF_CORE_READ(now, nr_queued);
	return BPF_CORE_READ(old, nr_running);
}

SEC("perf_event")
int sample_runqlen(void *ctx)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct runqlen_key key = { .cpu = bpf_get_smp_processor_id() };
	struct runqlen_hist *h;
	__u64 len;

	if (group_queue)
		len = queued(BPF_CORE_READ(task, se.cfs_rq));
	else
		len = BPF_CORE_READ(task, se.cfs_rq, rq, nr_running);
	if (len > 0 && !count_running)
		len--;
	if (len >= MAX_SLOTS)
		len = MAX_SLOTS - 1;
	h = bpf_map_lookup_elem(&runqlen_hists, &key);
	if (!h) {
		bpf_map_update_elem(&runqlen_hists, &key, &zero_hist, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&runqlen_hists, &key);
		if (!h)
			return 0;
	}
	__sync_fetch_and_add(&h->slots[len], 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
