// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* ufunc: a user-space function's first argument at entry and its result at return, written the
 * usual libbpf way: SEC("uprobe")/SEC("uretprobe") with no target in the section name, so the
 * binary and function come from the manifest's attach: (libbpf-tools' funclatency does the same
 * with bpf_program__attach_uprobe_opts).
 *
 * It honours the process filter (bpfdepot run --unit/--cgroup/--pid) through bpfdepot.h's
 * bpfdepot_monitored() alone; its maps stay plain. The entry and the return are separate
 * events, each judged by the task it happens in: no per-thread state is kept between them,
 * so a recursive function's calls and returns are all reported. */
#define BPFDEPOT_FILTER /* honours bpfdepot run --unit/--cgroup/--pid: the caller's */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "bpfdepot.h"
#include "ufunc.h"

/* Only this process when non-zero; set before load. */
const volatile __u32 targ_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} ufunc_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} ufunc_events_lost SEC(".maps");

/* Keeps struct ufunc_event in BTF (the ring buffer itself has no value type). */
const struct ufunc_event *unused_ufunc_event __attribute__((unused));

static __always_inline int emit(__u32 is_return, __s64 value)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 zero = 0;
	struct ufunc_event *e;
	__u32 label;

	if (targ_tgid && (id >> 32) != targ_tgid)
		return 0;
	if (!bpfdepot_monitored(&label))
		return 0;
	e = bpf_ringbuf_reserve(&ufunc_events, sizeof(*e), 0);
	if (!e) {
		__u64 *lost = bpf_map_lookup_elem(&ufunc_events_lost, &zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
		return 0;
	}
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->is_return = is_return;
	e->label = label;
	e->value = value;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(on_call, int x)
{
	return emit(0, x);
}

SEC("uretprobe")
int BPF_KRETPROBE(on_return, int ret)
{
	return emit(1, ret);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
