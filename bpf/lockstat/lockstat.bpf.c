// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* lockstat: lock contention, user and kernel. Tracepoints only (no kprobe, no fentry);
 * plain libbpf style.
 *
 * User locks: the time a thread sleeps in futex(2) waiting for a lock, condition or semaphore
 * (syscalls:sys_enter/exit_futex, FUTEX_WAIT, _WAIT_BITSET, _LOCK_PI, _LOCK_PI2,
 * _WAIT_REQUEUE_PI), as a log2 histogram (us) per {process, futex address} and an event per
 * wait of `futex_min_us` or more. Only waits that ended because they were woken (or, for the
 * PI ops, got the lock) count: EAGAIN means the value had already changed (no sleep), and a
 * timed-out or interrupted wait was not handed a lock. As libbpf-tools futexctn, without
 * its stacks.
 *
 * Kernel locks: lock:contention_begin/end (the tracepoints klockstat's fentry hooks predate)
 * as a log2 histogram (ns) per {lock address, caller, kind}. The caller is the first frame
 * of the kernel stack outside the locking code (the .sched.text and .spinlock.text sections,
 * where every slow path that fires these tracepoints lives), so a lock inside an object
 * (an mm's mmap_lock, an inode's i_rwsem) still says which function waited for it.
 * The begin/end pairs nest (a mutex waiter contends on the mutex's wait_lock, an interrupt
 * on the same CPU contends while a task spins), so each thread keeps a small stack of
 * pending waits; a mutex fires begin twice (spinning, then sleeping) before its one end.
 *
 * Honours bpfdepot run --unit/--cgroup/--pid: the waiting thread decides (current in both
 * pairs), once, at futex entry / contention_begin, and the end of a wait it passed is counted
 * under the label it had then. Futex events and the per-process futex histograms carry the
 * label; the kernel-lock histograms, keyed by lock and caller, are only gated. */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "bpfdepot.h"
#include "bits.bpf.h"
#include "lockstat.h"

#define FUTEX_CMD_MASK ~(128 | 256) /* ~(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME) */
#define LOCK_DEPTH 4                /* nested contentions kept per thread */
#define STACK_FRAMES 16             /* kernel frames searched for the caller */

/* Only this process (tgid) when non-zero, for futexes and kernel locks alike. */
const volatile __u32 targ_tgid = 0;
/* An event for every futex wait this long or longer (the histogram has them all). */
const volatile __u64 futex_min_us = 10000;

/* Where the locking code is: its frames are skipped to find the caller (kallsyms names,
 * resolved by libbpf at load). */
extern const void __sched_text_start __ksym;
extern const void __sched_text_end __ksym;
extern const void __lock_text_start __ksym;
extern const void __lock_text_end __ksym;

struct futex_start {
	__u64 ts;                 /* bpf_ktime_get_ns() at entry */
	__u64 uaddr;
	__u32 op;                 /* enum futex_wait_op */
	__u32 label;              /* the filter's, decided at entry */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768); /* one per thread asleep in futex: idle pools have many */
	__type(key, __u32);       /* tid */
	__type(value, struct futex_start);
} futex_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} futex_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct futex_hist_key);
	__type(value, struct futex_hist);
} futex_hists SEC(".maps");

/* A thread's pending kernel-lock waits, innermost last. */
struct lock_stack {
	__u64 ts[LOCK_DEPTH];
	__u64 lock[LOCK_DEPTH];
	__u64 caller[LOCK_DEPTH];
	__u32 flags[LOCK_DEPTH];
	__u32 depth;
	__u32 __pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);       /* tid */
	__type(value, struct lock_stack);
} lock_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct lock_hist_key);
	__type(value, struct lock_hist);
} kernel_lock_hists SEC(".maps");

/* What each channel could not count (map full, ring full, nesting deeper than LOCK_DEPTH):
 * the loader reports <channel>_lost. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} futex_events_lost SEC(".maps"), futex_hists_lost SEC(".maps"),
  kernel_lock_hists_lost SEC(".maps");

static struct futex_hist zero_futex; /* .bss: the values new keys start from */
static struct lock_hist zero_lock;
static struct lock_stack zero_stack;

static __always_inline void count_lost(void *lost)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(lost, &zero);

	if (n)
		*n += 1; /* per-CPU slot: no atomic needed */
}

/* map[key], made from zero when missing; NULL (and counted) when the map is full. */
static __always_inline void *entry(void *map, const void *key, const void *zero, void *lost)
{
	void *v = bpf_map_lookup_elem(map, key);

	if (v)
		return v;
	bpf_map_update_elem(map, key, zero, BPF_NOEXIST); /* -EEXIST: another CPU made it */
	v = bpf_map_lookup_elem(map, key);
	if (!v)
		count_lost(lost);
	return v;
}

static __always_inline bool traced(__u64 id)
{
	return !targ_tgid || (id >> 32) == targ_tgid;
}

SEC("tp/syscalls/sys_enter_futex")
int lockstat_futex_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id, op = (__u32)ctx->args[1] & FUTEX_CMD_MASK;
	struct futex_start s = {};

	if (op != FUTEX_WAIT && op != FUTEX_WAIT_BITSET && op != FUTEX_LOCK_PI &&
	    op != FUTEX_LOCK_PI2 && op != FUTEX_WAIT_REQUEUE_PI)
		return 0;
	if (!traced(id) || !bpfdepot_monitored(&s.label))
		return 0;
	s.ts = bpf_ktime_get_ns();
	s.uaddr = ctx->args[0];
	s.op = op;
	if (bpf_map_update_elem(&futex_start, &tid, &s, BPF_ANY))
		count_lost(&futex_hists_lost);
	return 0;
}

SEC("tp/syscalls/sys_exit_futex")
int lockstat_futex_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id, slot;
	struct futex_start *s = bpf_map_lookup_elem(&futex_start, &tid);
	struct futex_hist_key key = {};
	struct futex_event *e;
	struct futex_hist *h;
	__u64 wait_ns, wait_us;

	if (!s)
		return 0;
	if (ctx->ret != 0)
		goto out;
	wait_ns = bpf_ktime_get_ns() - s->ts;
	wait_us = wait_ns / 1000;
	key.pid = id >> 32;
	key.label = s->label;
	key.uaddr = s->uaddr;
	h = entry(&futex_hists, &key, &zero_futex, &futex_hists_lost);
	if (h) {
		slot = log2_u64(wait_us);
		if (slot >= FUTEX_SLOTS)
			slot = FUTEX_SLOTS - 1;
		__sync_fetch_and_add(&h->slots[slot], 1);
		__sync_fetch_and_add(&h->sum, wait_us);
	}
	if (wait_us < futex_min_us)
		goto out;
	e = bpf_ringbuf_reserve(&futex_events, sizeof(*e), 0);
	if (!e) {
		count_lost(&futex_events_lost);
		goto out;
	}
	e->uaddr = s->uaddr;
	e->wait_ns = wait_ns;
	e->pid = id >> 32;
	e->tid = tid;
	e->op = s->op;
	e->label = s->label;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
out:
	bpf_map_delete_elem(&futex_start, &tid);
	return 0;
}

static __always_inline bool locking_code(__u64 ip)
{
	return (ip >= (__u64)&__sched_text_start && ip < (__u64)&__sched_text_end) ||
	       (ip >= (__u64)&__lock_text_start && ip < (__u64)&__lock_text_end);
}

/* The first frame after the locking code's; 0 when the stack never entered it. The frames
 * before it are the tracing machinery's own. */
static __always_inline __u64 caller_of(void *ctx)
{
	__u64 ips[STACK_FRAMES] = {};
	bool inside = false;
	long n = bpf_get_stack(ctx, ips, sizeof(ips), 0);

	if (n <= 0)
		return 0;
	for (int i = 0; i < STACK_FRAMES; i++) {
		if (i * (long)sizeof(__u64) >= n)
			break;
		if (locking_code(ips[i]))
			inside = true;
		else if (inside)
			return ips[i];
	}
	return 0;
}

SEC("tp_btf/contention_begin")
int BPF_PROG(lockstat_contention_begin, void *lock, unsigned int flags)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id, d;
	struct lock_stack *st;
	__u32 label;

	/* gated only: the histograms are per lock, not per process */
	if (!traced(id) || !bpfdepot_monitored(&label))
		return 0;
	st = entry(&lock_start, &tid, &zero_stack, &kernel_lock_hists_lost);
	if (!st)
		return 0;
	d = st->depth;
	if (d > 0 && d <= LOCK_DEPTH && st->lock[d - 1] == (__u64)lock) {
		st->flags[d - 1] = flags; /* a mutex going from spinning to sleeping: same wait */
		return 0;
	}
	if (d >= LOCK_DEPTH) {
		count_lost(&kernel_lock_hists_lost);
		return 0;
	}
	st->ts[d] = bpf_ktime_get_ns();
	st->lock[d] = (__u64)lock;
	st->flags[d] = flags;
	st->caller[d] = caller_of(ctx);
	st->depth = d + 1;
	return 0;
}

SEC("tp_btf/contention_end")
int BPF_PROG(lockstat_contention_end, void *lock, int ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), slot;
	struct lock_stack *st = bpf_map_lookup_elem(&lock_start, &tid);
	struct lock_hist_key key = {};
	struct lock_hist *h;
	__u64 wait_ns;
	int i;

	if (!st)
		return 0;
	/* innermost first; a begin with no end above the match (a path that returned without
	 * one) is dropped with it */
	for (i = LOCK_DEPTH - 1; i >= 0; i--)
		if (i < st->depth && st->lock[i] == (__u64)lock)
			break;
	if (i < 0)
		return 0; /* its begin came before we attached, or was too deep */
	wait_ns = bpf_ktime_get_ns() - st->ts[i];
	key.lock = (__u64)lock;
	key.caller = st->caller[i];
	key.flags = st->flags[i];
	st->depth = i;
	if (i == 0) /* nothing pending: the map holds only threads waiting now, never fills up */
		bpf_map_delete_elem(&lock_start, &tid);
	h = entry(&kernel_lock_hists, &key, &zero_lock, &kernel_lock_hists_lost);
	if (!h)
		return 0;
	slot = log2_u64(wait_ns);
	if (slot >= LOCK_SLOTS)
		slot = LOCK_SLOTS - 1;
	__sync_fetch_and_add(&h->slots[slot], 1);
	__sync_fetch_and_add(&h->sum, wait_ns);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
