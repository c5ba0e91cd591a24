// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* pagefault: page faults (x86 only: exceptions/page_fault_user and page_fault_kernel), from
 * tracepoints only (no kprobe needed):
 *   pagefault_events  every user-mode fault with its address, instruction pointer, error code;
 *   fault_counts      faults per process and cgroup: user, kernel, file-backed (6.12+:
 *                     filemap:mm_filemap_fault; 6.1, which lacks it: page-cache fills);
 *   fault_addrs       where user faults land: per process and 1 GiB window, 64 slots of 16 MiB;
 *   fault_stacks      user stacks of user faults (knob user_stacks=0 turns them off).
 *
 * Under the process filter (bpfdepot run --unit/--cgroup/--pid) only the faulting task's own
 * faults count (every hook runs in it); the event and the per-process keys of fault_counts and
 * fault_addrs carry the label that matched, fault_stacks is only gated. */
#define BPFDEPOT_FILTER /* honours bpfdepot run --unit/--cgroup/--pid: the faulting task's */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "bpfdepot.h"
#include "pagefault.h"

#define EEXIST 17

/* The tracepoints' record, as its tracefs format lays it out: the common header, then
 * address, ip, error_code (page_fault_user and page_fault_kernel share it). Declared here, not
 * taken from vmlinux.h, because struct trace_event_raw_x86_exceptions is missing from the BTF
 * of the 6.18 targets (renamed trace_event_raw_exceptions; format unchanged). No CO-RE on it:
 * a tp program reads its record at the offsets of the format file, and struct trace_entry
 * comes from the target's own vmlinux.h, so each per-kernel build gets that kernel's header. */
struct pagefault_tp_args {
	struct trace_entry ent;
	unsigned long address;
	unsigned long ip;
	unsigned long error_code;
};

/* Only faults of this process (tgid) when non-zero; set in .rodata before load. */
const volatile __u32 targ_tgid = 0;
/* Only faults of tasks in this cgroup (cgroup2 directory inode) when non-zero. */
const volatile __u64 targ_cgroup = 0;
/* 0: no user stacks (bpf_get_stackid walks the user stack on every fault: the costly part). */
const volatile __u32 user_stacks = 1;

BPFDEPOT_CHANNEL(pagefault_events, struct pagefault_event, 1024 * 1024);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct pagefault_key);
	__type(value, struct pagefault_counts);
} fault_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct pagefault_window);
	__type(value, struct pagefault_hist);
} fault_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, PAGEFAULT_MAX_STACK_DEPTH * sizeof(__u64));
	__uint(max_entries, 16384);
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct pagefault_stack_key);
	__type(value, __u64);
} fault_stacks SEC(".maps");

/* Faults not counted because a map was full: the loader reports <map>_lost with the channel. */
#define PAGEFAULT_LOST(_name)                                  \
	struct {                                               \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);       \
		__uint(max_entries, 1);                        \
		__type(key, __u32);                            \
		__type(value, __u64);                          \
	} _name SEC(".maps")
PAGEFAULT_LOST(fault_counts_lost);
PAGEFAULT_LOST(fault_addrs_lost);
PAGEFAULT_LOST(fault_stacks_lost);

static __always_inline void count_lost(void *lost)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(lost, &zero);

	if (n)
		*n += 1; /* per-CPU slot: no atomic needed */
}

/* The value of `key` in `map`, inserted as `init` (zeroes) when absent; NULL when full. */
static __always_inline void *lookup_or_init(void *map, void *key, void *init, void *lost)
{
	void *v = bpf_map_lookup_elem(map, key);
	long err;

	if (v)
		return v;
	err = bpf_map_update_elem(map, key, init, BPF_NOEXIST);
	if (!err || err == -EEXIST) /* -EEXIST: another CPU inserted it meanwhile */
		v = bpf_map_lookup_elem(map, key);
	if (!v)
		count_lost(lost);
	return v;
}

/* The knobs first (cheap), then the run's filter, which sets @label. */
static __always_inline bool wanted(__u64 id, __u32 *label)
{
	if (targ_tgid && (id >> 32) != targ_tgid)
		return false;
	if (targ_cgroup && bpf_get_current_cgroup_id() != targ_cgroup)
		return false;
	return bpfdepot_monitored(label);
}

enum pagefault_kind { PF_USER, PF_KERNEL, PF_FILE, PF_CACHE_FILL };

static __always_inline void count(__u64 id, __u32 label, enum pagefault_kind kind)
{
	static const struct pagefault_counts zero;
	struct pagefault_key key = {};
	struct pagefault_counts *c;

	key.cgroup = bpf_get_current_cgroup_id();
	key.pid = id >> 32;
	key.label = label;
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	c = lookup_or_init(&fault_counts, &key, (void *)&zero, &fault_counts_lost);
	if (!c)
		return;
	switch (kind) {
	case PF_USER: __sync_fetch_and_add(&c->user_faults, 1); break;
	case PF_KERNEL: __sync_fetch_and_add(&c->kernel_faults, 1); break;
	case PF_FILE: __sync_fetch_and_add(&c->file_faults, 1); break;
	case PF_CACHE_FILL: __sync_fetch_and_add(&c->cache_fills, 1); break;
	}
}

static __always_inline void place(__u64 id, __u32 label, unsigned long address)
{
	static const struct pagefault_hist zero;
	struct pagefault_window key = {};
	struct pagefault_hist *h;
	__u32 slot;

	key.window = address & ~((1UL << PAGEFAULT_WINDOW_SHIFT) - 1);
	key.pid = id >> 32;
	key.label = label;
	h = lookup_or_init(&fault_addrs, &key, (void *)&zero, &fault_addrs_lost);
	if (!h)
		return;
	slot = (address >> PAGEFAULT_SLOT_SHIFT) & (PAGEFAULT_SLOTS - 1);
	__sync_fetch_and_add(&h->slots[slot], 1);
}

static __always_inline void stack(void *ctx, __u64 id)
{
	struct pagefault_stack_key key = {};
	__u64 one = 1, *n;
	long err;

	key.pid = id >> 32;
	key.user_stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	n = bpf_map_lookup_elem(&fault_stacks, &key);
	if (!n) {
		err = bpf_map_update_elem(&fault_stacks, &key, &one, BPF_NOEXIST);
		if (!err)
			return; /* inserted with its first fault */
		n = err == -EEXIST ? bpf_map_lookup_elem(&fault_stacks, &key) : NULL;
	}
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		count_lost(&fault_stacks_lost);
}

SEC("tp/exceptions/page_fault_user")
int pagefault(struct pagefault_tp_args *ctx)
{
	__u64 id = bpf_get_current_pid_tgid(); /* the faulting task is current */
	struct pagefault_event *e;
	__u32 label;

	if (!wanted(id, &label))
		return 0;
	count(id, label, PF_USER);
	place(id, label, ctx->address);
	if (user_stacks)
		stack(ctx, id);

	e = bpfdepot_reserve(pagefault_events);
	if (!e)
		return 0;
	e->address = ctx->address;
	e->ip = ctx->ip;
	e->error_code = ctx->error_code;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->label = label;
	e->__pad = 0;
	bpf_get_current_comm(&e->comm, sizeof(e->comm)); /* fills all 16 bytes */
	bpfdepot_submit(pagefault_events, e);
	return 0;
}

SEC("tp/exceptions/page_fault_kernel")
int pagefault_kernel(struct pagefault_tp_args *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 label;

	if (wanted(id, &label))
		count(id, label, PF_KERNEL);
	return 0;
}

/* 6.12+ (commit "mm: add mm_filemap_fault tracepoint"); the manifest's forms load
 * pagefault_cache_fill instead where the kernel lacks it, so the build for 6.1 passes. */
SEC("tp/filemap/mm_filemap_fault")
int pagefault_file(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 label;

	if (wanted(id, &label))
		count(id, label, PF_FILE);
	return 0;
}

SEC("tp/filemap/mm_filemap_add_to_page_cache")
int pagefault_cache_fill(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 label;

	if (wanted(id, &label))
		count(id, label, PF_CACHE_FILL);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
