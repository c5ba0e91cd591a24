// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* kmemleak: kernel memory allocated and not freed yet, by call site and by process, from the
 * kmem tracepoints (libbpf-tools memleak's kernel mode, tracepoints only). Every kmalloc and
 * kmem_cache_alloc is kept in `allocs` (address -> size, call site, owner) and added to two
 * totals; kfree and kmem_cache_free take it out of both, whoever frees it. The loader reads
 * the totals every interval without resetting: a snapshot of what is outstanding now.
 *
 * Only allocations made after load are seen; frees of older objects are ignored. `allocs` is
 * bounded (max_entries, sizeable in the manifest): an allocation that does not fit is not
 * tracked and counted in both channels' <map>_lost.
 *
 * Under the process filter (bpfdepot run --unit/--cgroup/--pid) the allocating task decides,
 * at the allocation: only its allocations are tracked, with the label that matched in their
 * owner. A free counts only for an address that was tracked, whoever frees it (an object made
 * in a monitored service and freed by an RCU callback or a kworker still leaves the totals). */
#define BPFDEPOT_FILTER /* honours bpfdepot run --unit/--cgroup/--pid: the allocating task's */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "bpfdepot.h"
#include "kmemleak.h"

/* The records, read with CO-RE: field offsets come from the node's BTF. kmem_cache_alloc
 * gained a __data_loc `name` before bytes_req in 6.18 (6.1 and 6.12 have none), which moves
 * bytes_alloc; kmalloc and the frees are the same on 6.1, 6.12 and 6.18 (kmalloc_node went
 * away in 6.0, bcc PR #4634, before any of our targets). The ___kmemleak suffix keeps these
 * apart from vmlinux.h's structs; libbpf matches them by the name before it. */
struct trace_event_raw_kmalloc___kmemleak {
	unsigned long call_site;
	const void *ptr;
	size_t bytes_alloc;
} __attribute__((preserve_access_index));

struct trace_event_raw_kmem_cache_alloc___kmemleak {
	unsigned long call_site;
	const void *ptr;
	size_t bytes_alloc;
} __attribute__((preserve_access_index));

struct trace_event_raw_kfree___kmemleak {
	const void *ptr;
} __attribute__((preserve_access_index));

struct trace_event_raw_kmem_cache_free___kmemleak {
	const void *ptr;
} __attribute__((preserve_access_index));

/* Only allocations of this process (tgid) when non-zero. */
const volatile __u32 targ_tgid = 0;
/* Only allocations of tasks in this cgroup (cgroup2 directory inode) when non-zero. */
const volatile __u64 targ_cgroup = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, __u64);			/* the object's address */
	__type(value, struct kmemleak_alloc);
} allocs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct kmemleak_site);
	__type(value, struct kmemleak_totals);
} outstanding_by_site SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct kmemleak_owner);
	__type(value, struct kmemleak_totals);
} outstanding_by_pid SEC(".maps");

/* Allocations missing from a channel's totals (allocs full, or that channel's map full). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} outstanding_by_site_lost SEC(".maps"), outstanding_by_pid_lost SEC(".maps");

#define EEXIST 17

static __always_inline void count_lost(void *lost)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(lost, &zero);

	if (n)
		*n += 1; /* per-CPU slot: no atomic needed */
}

/* Add (sign 1) or take away (sign -1) one allocation of `bytes` to the totals at `key`. */
static __always_inline void add(void *map, void *key, __u64 bytes, int sign, void *lost)
{
	struct kmemleak_totals *t = bpf_map_lookup_elem(map, key), first = {};
	long err;

	if (!t && sign > 0) {
		first.bytes = bytes;
		first.count = 1;
		err = bpf_map_update_elem(map, key, &first, BPF_NOEXIST);
		if (!err)
			return;
		t = err == -EEXIST ? bpf_map_lookup_elem(map, key) : NULL;
	}
	if (t) {
		__sync_fetch_and_add(&t->bytes, sign * (__s64)bytes);
		__sync_fetch_and_add(&t->count, sign);
	} else if (sign > 0) {
		count_lost(lost);
	}
	/* sign < 0 and no entry: its alloc was counted lost there, nothing to take away */
}

static __always_inline void account(struct kmemleak_alloc *a, int sign)
{
	struct kmemleak_site site = { .call_site = a->call_site };

	add(&outstanding_by_site, &site, a->bytes, sign, &outstanding_by_site_lost);
	add(&outstanding_by_pid, &a->owner, a->bytes, sign, &outstanding_by_pid_lost);
}

/* Whether this allocation is to be tracked: the knobs, then the run's filter (sets @label). */
static __always_inline bool wanted(__u64 id, __u64 cgroup, __u32 *label)
{
	if (targ_tgid && (id >> 32) != targ_tgid)
		return false;
	if (targ_cgroup && cgroup != targ_cgroup)
		return false;
	return bpfdepot_monitored(label);
}

static __always_inline void on_alloc(__u64 ptr, __u64 bytes, __u64 call_site)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct kmemleak_alloc a = {}, *stale, old;
	bool tracked;

	if (!ptr)
		return;
	a.owner.cgroup = bpf_get_current_cgroup_id();
	tracked = wanted(id, a.owner.cgroup, &a.owner.label);

	/* Still there: its free had no tracepoint (bulk frees), so it is gone; take it out,
	 * even when the new object at this address is not ours to track. */
	stale = bpf_map_lookup_elem(&allocs, &ptr);
	if (stale) {
		old = *stale;
		if (!bpf_map_delete_elem(&allocs, &ptr))
			account(&old, -1);
	}
	if (!tracked)
		return;
	a.bytes = bytes;
	a.call_site = call_site;
	a.owner.pid = id >> 32;
	bpf_get_current_comm(a.owner.comm, sizeof(a.owner.comm));
	if (bpf_map_update_elem(&allocs, &ptr, &a, BPF_ANY)) {
		count_lost(&outstanding_by_site_lost);
		count_lost(&outstanding_by_pid_lost);
		return;
	}
	account(&a, 1);
}

static __always_inline void on_free(__u64 ptr)
{
	struct kmemleak_alloc *a = bpf_map_lookup_elem(&allocs, &ptr);
	struct kmemleak_alloc copy;

	if (!a)
		return; /* allocated before load, filtered out, or not tracked */
	copy = *a;
	/* the delete decides, so a free racing a reuse of the address is taken out once */
	if (!bpf_map_delete_elem(&allocs, &ptr))
		account(&copy, -1);
}

SEC("tp/kmem/kmalloc")
int kmemleak_kmalloc(struct trace_event_raw_kmalloc___kmemleak *ctx)
{
	on_alloc((__u64)ctx->ptr, ctx->bytes_alloc, ctx->call_site);
	return 0;
}

SEC("tp/kmem/kmem_cache_alloc")
int kmemleak_cache_alloc(struct trace_event_raw_kmem_cache_alloc___kmemleak *ctx)
{
	on_alloc((__u64)ctx->ptr, ctx->bytes_alloc, ctx->call_site);
	return 0;
}

SEC("tp/kmem/kfree")
int kmemleak_kfree(struct trace_event_raw_kfree___kmemleak *ctx)
{
	on_free((__u64)ctx->ptr);
	return 0;
}

SEC("tp/kmem/kmem_cache_free")
int kmemleak_cache_free(struct trace_event_raw_kmem_cache_free___kmemleak *ctx)
{
	on_free((__u64)ctx->ptr);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
