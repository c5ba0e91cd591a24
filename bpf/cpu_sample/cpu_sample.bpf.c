// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* cpu_sample: who is on each CPU, sampled by a perf event (software cpu-clock, 99 Hz by the
 * manifest), written the usual libbpf way (as libbpf-tools' profile is): a SEC("perf_event")
 * program, plain maps, const volatile knobs. One event per sample, plus a count per process in
 * a hash map sized from user space (max_entries 0 here; the manifest sizes it per CPU).
 * Honours bpfdepot run --unit/--cgroup/--pid: the interrupted task (current) decides; the idle
 * task sits in the cgroup2 root, so a filtered run never samples idle. */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "bpfdepot.h"
#include "cpu_sample.h"

/* Only these processes (tgids) when targ_pids[0] is non-zero; set before load. */
const volatile __u32 targ_pids[MAX_PIDS] = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} cpu_samples SEC(".maps");

/* Samples the ring buffer had no room for (the loader reports <channel>_lost). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} cpu_samples_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 0);	/* sized by the loader: manifest maps: */
	__type(key, __u32);	/* tgid */
	__type(value, __u64);	/* samples */
} samples_by_pid SEC(".maps");

/* Keeps struct cpu_sample_event in BTF (the ring buffer itself has no value type). */
const struct cpu_sample_event *unused_cpu_sample_event __attribute__((unused));

static __always_inline bool wanted(__u32 tgid)
{
	if (!targ_pids[0])
		return true;
	for (int i = 0; i < MAX_PIDS; i++) {
		if (!targ_pids[i])	/* the list ends at the first 0 (0 is the idle task) */
			break;
		if (targ_pids[i] == tgid)
			return true;
	}
	return false;
}

SEC("perf_event")
int do_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, zero = 0, label;
	struct cpu_sample_event *e;
	__u64 one = 1, *count;

	if (!wanted(tgid) || !bpfdepot_monitored(&label))
		return 0;
	count = bpf_map_lookup_elem(&samples_by_pid, &tgid);
	if (count)
		__sync_fetch_and_add(count, 1);
	else
		bpf_map_update_elem(&samples_by_pid, &tgid, &one, BPF_NOEXIST);

	e = bpf_ringbuf_reserve(&cpu_samples, sizeof(*e), 0);
	if (!e) {
		__u64 *lost = bpf_map_lookup_elem(&cpu_samples_lost, &zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
		return 0;
	}
	e->pid = tgid;
	e->tid = (__u32)id;
	e->cpu = bpf_get_smp_processor_id();
	e->label = label;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
