// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* cpu_profile: on-CPU stacks sampled by a perf event (software cpu-clock, 99 Hz on every CPU by
 * the manifest), counted per {pid, comm, kernel stack, user stack}: the input of a CPU flame
 * graph. The usual libbpf way (libbpf-tools profile.bpf.c): a SEC("perf_event") program, plain
 * maps, const volatile knobs. The loader reads `counts` every interval with lookup-and-delete,
 * resolves the ids in `stacks` and deletes them there, so neither map fills.
 * Honours bpfdepot run --unit/--cgroup/--pid: the interrupted task (current) decides, and its
 * label is part of the key. The idle task sits in the cgroup2 root: never under a filter. */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "bpfdepot.h"
#include "cpu_profile.h"

#define EEXIST 17

/* Only this process (tgid) when non-zero. */
const volatile __u32 targ_tgid = 0;
/* Only tasks in this cgroup (cgroup2 directory inode) when non-zero. */
const volatile __u64 targ_cgroup = 0;
/* Count the idle task (pid 0) too. */
const volatile __u8 include_idle = 0;

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));
	__uint(max_entries, 16384);	/* the manifest's maps: can resize it */
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct cpu_profile_key);
	__type(value, __u64);		/* samples */
} counts SEC(".maps");

/* Samples not counted because `counts` was full (the loader adds <channel>_lost to lost). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} counts_lost SEC(".maps");

SEC("perf_event")
int do_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id, zero = 0;
	struct cpu_profile_key key = {};
	__u64 one = 1, *count;

	if (!tid && !include_idle)
		return 0;
	if (targ_tgid && tgid != targ_tgid)
		return 0;
	if (targ_cgroup && bpf_get_current_cgroup_id() != targ_cgroup)
		return 0;
	if (!bpfdepot_monitored(&key.label))
		return 0;

	key.pid = tgid;
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	key.kern_stack_id = bpf_get_stackid(ctx, &stacks, 0);
	key.user_stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);

	count = bpf_map_lookup_elem(&counts, &key);
	if (!count) {
		long err = bpf_map_update_elem(&counts, &key, &one, BPF_NOEXIST);

		if (!err)
			return 0;
		/* -EEXIST: another CPU made the entry in between; add to it */
		count = err == -EEXIST ? bpf_map_lookup_elem(&counts, &key) : NULL;
	}
	if (count) {
		__sync_fetch_and_add(count, 1);
	} else {
		__u64 *lost = bpf_map_lookup_elem(&counts_lost, &zero);

		if (lost)
			__sync_fetch_and_add(lost, 1);
	}
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
