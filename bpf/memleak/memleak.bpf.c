// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* memleak: user-space memory allocated and not yet freed, per process and allocating user
 * stack, written the usual libbpf way (libbpf-tools memleak.bpf.c is the model): uprobes on the
 * libc allocators keep each call's size per thread; their uretprobes record the block by
 * {pid, address} with the caller's user stack and add it to `outstanding`; free() takes it off.
 * The loader reads `outstanding` every interval without deleting it (stack_counts, reset: false):
 * what is outstanding stays so until freed. Every insert that fails because a map is full is
 * counted in `outstanding_lost`.
 *
 * Under the process filter (bpfdepot run --unit/--cgroup/--pid) the allocator's entry decides
 * (bpfdepot.h is included for that helper alone) and its return records the block with the
 * label that matched in its key; free() needs no verdict: it takes off only blocks that were
 * recorded, so a block allocated in a monitored service is released even if its process moved
 * out meanwhile. */
#define BPFDEPOT_FILTER /* honours bpfdepot run --unit/--cgroup/--pid: the allocating process's */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "bpfdepot.h"
#include "memleak.h"

/* Only this process (tgid) when non-zero. */
const volatile __u32 targ_tgid = 0;
/* Only allocations of at least / at most this many bytes. */
const volatile __u64 min_size = 0;
const volatile __u64 max_size = (__u64)-1;

/* Which allocator a pending call is: a call made inside another (glibc's realloc(NULL, n) and
 * posix_memalign with a small alignment call malloc) keeps its own entry. */
enum memleak_fn { FN_MALLOC = 1, FN_CALLOC, FN_REALLOC, FN_MEMALIGN, FN_ALIGNED };

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));
	__uint(max_entries, 16384);
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);			/* fn << 32 | tid */
	__type(value, struct memleak_pending);
} pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, struct memleak_addr);
	__type(value, struct memleak_alloc);
} allocs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct memleak_key);
	__type(value, struct memleak_value);
} outstanding SEC(".maps");

/* Allocations not tracked because `pending`, `allocs` or `outstanding` was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} outstanding_lost SEC(".maps");

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&outstanding_lost, &zero);

	if (lost)
		__sync_fetch_and_add(lost, 1);
}

static __always_inline int enter(enum memleak_fn fn, __u64 size, __u64 ptr)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 key = (__u64)fn << 32 | (__u32)id;
	struct memleak_pending new = {.size = size, .ptr = ptr, .armed = 1}, *p;

	if (targ_tgid && (id >> 32) != targ_tgid)
		return 0;
	if (size < min_size || size > max_size)
		return 0;
	if (!bpfdepot_monitored(&new.label))
		return 0;
	/* a thread's entry is written in place after its first call: a lookup instead of an
	 * update (a new element) at entry and a delete at return */
	p = bpf_map_lookup_elem(&pending, &key);
	if (p)
		*p = new;
	else if (bpf_map_update_elem(&pending, &key, &new, BPF_ANY))
		count_lost();
	return 0;
}

/* The pending call of `fn` on this thread, disarmed; false when there is none (its entry
 * was filtered out by size, or came before we attached). */
static __always_inline bool leave(enum memleak_fn fn, struct memleak_pending *out)
{
	__u64 key = (__u64)fn << 32 | (__u32)bpf_get_current_pid_tgid();
	struct memleak_pending *p = bpf_map_lookup_elem(&pending, &key);

	if (!p || !p->armed)
		return false;
	*out = *p;
	p->armed = 0;
	return true;
}

/* Take a block off its key; an address never tracked (allocated before we attached, or by
 * an allocator not probed) is ignored. */
static __always_inline void release(__u32 pid, __u64 addr)
{
	struct memleak_addr a = {.addr = addr, .pid = pid};
	struct memleak_alloc *found, info;
	struct memleak_value *v;

	found = bpf_map_lookup_elem(&allocs, &a);
	if (!found)
		return;
	info = *found;
	/* only the caller whose delete succeeds subtracts: a block is freed once */
	if (bpf_map_delete_elem(&allocs, &a))
		return;
	v = bpf_map_lookup_elem(&outstanding, &info.key);
	if (!v)
		return;
	__sync_fetch_and_add(&v->count, -1);
	__sync_fetch_and_add(&v->bytes, -info.size);
	__sync_fetch_and_add(&v->ts_ms_sum, -info.ts_ms);
}

static __always_inline void track(void *ctx, __u64 addr, const struct memleak_pending *p)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct memleak_addr a = {.addr = addr, .pid = pid};
	struct memleak_alloc info = {};
	struct memleak_value zero = {}, *v;

	info.size = p->size;
	info.ts_ms = bpf_ktime_get_ns() / 1000000;
	info.key.pid = pid;
	info.key.label = p->label;
	info.key.user_stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
	bpf_get_current_comm(info.key.comm, sizeof(info.key.comm));

	v = bpf_map_lookup_elem(&outstanding, &info.key);
	if (!v) {
		bpf_map_update_elem(&outstanding, &info.key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&outstanding, &info.key);
		if (!v) {
			count_lost();
			return;
		}
	}
	if (bpf_map_update_elem(&allocs, &a, &info, BPF_NOEXIST)) {
		/* the address is tracked already: a nested allocator call (malloc inside realloc)
		 * or a free we did not see; the outer call's record replaces it */
		release(pid, addr);
		if (bpf_map_update_elem(&allocs, &a, &info, BPF_NOEXIST)) {
			count_lost();
			return;
		}
	}
	__sync_fetch_and_add(&v->count, 1);
	__sync_fetch_and_add(&v->bytes, p->size);
	__sync_fetch_and_add(&v->ts_ms_sum, info.ts_ms);
}

SEC("uprobe")
int BPF_KPROBE(malloc_enter, size_t size)
{
	return enter(FN_MALLOC, size, 0);
}

SEC("uretprobe")
int BPF_KRETPROBE(malloc_exit, void *ret)
{
	struct memleak_pending p;

	if (leave(FN_MALLOC, &p) && ret)
		track(ctx, (__u64)ret, &p);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(calloc_enter, size_t nmemb, size_t size)
{
	return enter(FN_CALLOC, (__u64)nmemb * size, 0);
}

SEC("uretprobe")
int BPF_KRETPROBE(calloc_exit, void *ret)
{
	struct memleak_pending p;

	if (leave(FN_CALLOC, &p) && ret)
		track(ctx, (__u64)ret, &p);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(realloc_enter, void *ptr, size_t size)
{
	return enter(FN_REALLOC, size, (__u64)ptr);
}

/* realloc = free(old) + malloc(new), both only once it returned: a failed realloc (NULL for a
 * non-zero size) leaves the old block allocated. */
SEC("uretprobe")
int BPF_KRETPROBE(realloc_exit, void *ret)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct memleak_pending p;

	if (!leave(FN_REALLOC, &p))
		return 0;
	if (p.ptr && (ret || !p.size))
		release(pid, p.ptr);
	if (ret)
		track(ctx, (__u64)ret, &p);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(posix_memalign_enter, void **memptr, size_t alignment, size_t size)
{
	return enter(FN_MEMALIGN, size, (__u64)memptr);
}

/* The block is in *memptr, known only at return, and only when it returned 0. */
SEC("uretprobe")
int BPF_KRETPROBE(posix_memalign_exit, int ret)
{
	struct memleak_pending p;
	__u64 addr = 0;

	if (!leave(FN_MEMALIGN, &p) || ret)
		return 0;
	if (bpf_probe_read_user(&addr, sizeof(addr), (void *)p.ptr) || !addr)
		return 0;
	track(ctx, addr, &p);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(aligned_alloc_enter, size_t alignment, size_t size)
{
	return enter(FN_ALIGNED, size, 0);
}

SEC("uretprobe")
int BPF_KRETPROBE(aligned_alloc_exit, void *ret)
{
	struct memleak_pending p;

	if (leave(FN_ALIGNED, &p) && ret)
		track(ctx, (__u64)ret, &p);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(free_enter, void *ptr)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!ptr || (targ_tgid && (id >> 32) != targ_tgid))
		return 0;
	release(id >> 32, (__u64)ptr);
	return 0;
}

/* A process that exits or execs gives all its memory back: its blocks and totals go, so they
 * are not reported as outstanding (and its pid, reused, starts clean). */
struct exit_ctx {
	__u32 pid;
	__u32 had_blocks;
};

static long drop_key(struct bpf_map *map, const struct memleak_key *key,
		     struct memleak_value *value, struct exit_ctx *c)
{
	if (key->pid == c->pid) {
		c->had_blocks |= value->count != 0;
		bpf_map_delete_elem(map, key);
	}
	return 0;
}

static long drop_block(struct bpf_map *map, const struct memleak_addr *key,
		       struct memleak_alloc *value, struct exit_ctx *c)
{
	if (key->pid == c->pid)
		bpf_map_delete_elem(map, key);
	return 0;
}

static __always_inline void drop_process(struct exit_ctx *c)
{
	bpf_for_each_map_elem(&outstanding, drop_key, c, 0);
	if (c->had_blocks)  /* the whole allocs map is walked only for a process that held some */
		bpf_for_each_map_elem(&allocs, drop_block, c, 0);
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(memleak_exit, struct task_struct *p)
{
	struct exit_ctx c = {.pid = BPF_CORE_READ(p, tgid)};
	__u32 tid = BPF_CORE_READ(p, pid);

	if (targ_tgid && c.pid != targ_tgid)
		return 0;
	/* the thread's pending entries (kept between calls; a thread killed inside an allocator
	 * leaves one armed) */
	for (__u64 fn = FN_MALLOC; fn <= FN_ALIGNED; fn++) {
		__u64 key = fn << 32 | tid;

		bpf_map_delete_elem(&pending, &key);
	}
	/* signal->live reached 0 before this tracepoint (do_exit): the last thread is leaving */
	if (BPF_CORE_READ(p, signal, live.counter))
		return 0;
	drop_process(&c);
	return 0;
}

/* exec replaced the address space (the other threads are gone by now, de_thread) */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(memleak_exec, struct task_struct *p)
{
	struct exit_ctx c = {.pid = BPF_CORE_READ(p, tgid)};

	if (targ_tgid && c.pid != targ_tgid)
		return 0;
	drop_process(&c);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
