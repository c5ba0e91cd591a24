// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* filelock: every file lock and unlock call (POSIX fcntl locks, OFD locks, flock) as an event
 * {pid, inode, dev, type, kind, wait, result, the pid it waited behind}, plus a log2
 * histogram of the wait (us) of blocking lock requests per kind. Tracepoints only (no kprobe,
 * no fentry); plain libbpf style.
 *
 * The wait is the time inside the syscall (syscalls:sys_enter/exit_fcntl for F_SETLK,
 * F_SETLKW, F_OFD_SETLK, F_OFD_SETLKW; sys_enter/exit_flock): a blocked F_SETLKW sleeps in
 * the kernel until the holder lets go. The filelock tracepoints fire inside those calls and
 * give what the kernel made of the request: its inode, its type, and, when the request had to
 * wait (posix_lock_inode / flock_lock_inode returning FILE_LOCK_DEFERRED), the lock it was
 * queued behind, whose owner is `blocker_pid`. They are tp_btf programs reading struct
 * file_lock through CO-RE: its fields moved into `struct file_lock_core c` in 6.9 (commit
 * a69ce85ec9af: fl_type -> c.flc_type, fl_blocker -> c.flc_blocker, fl_pid -> c.flc_pid),
 * so 6.1 reads the ___old flavor and 6.12/6.18 the ___new one, one object for all three.
 * (The tracepoints' records were renamed the same way: fl_type -> type, ...)
 *
 * Under the process filter (bpfdepot run --unit/--cgroup/--pid) the syscall entry decides
 * (bpfdepot.h is included for that helper alone): a call it rejects is never tracked, so
 * neither its event nor its wait is recorded, and an event carries the label that matched. */
#define BPFDEPOT_FILTER /* honours bpfdepot run --unit/--cgroup/--pid: the caller's */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "bits.bpf.h"
#include "bpfdepot.h"
#include "filelock.h"

/* uapi fcntl/flock values (macros, so not in vmlinux.h); the same on every arch but alpha,
 * sparc and parisc for F_SETLK/F_SETLKW (x86_64 and arm64 are what we build) */
#define F_SETLK 6
#define F_SETLKW 7
#define F_OFD_SETLK 37
#define F_OFD_SETLKW 38
#define LOCK_NB 4
#define FLOCK_SH 1
#define FLOCK_EX 2
#define FLOCK_UN 8
#define FILE_LOCK_DEFERRED 1 /* include/linux/filelock.h: the request was queued to wait */
#define MINORBITS 20 /* the kernel's dev_t is major << 20 | minor */
#define WAKEUP_BYTES (64 * 1024) /* a quarter of filelock_events */

/* struct file_lock before 6.9 ... */
struct file_lock___old {
	struct file_lock___old *fl_blocker;
	unsigned char fl_type;
	unsigned int fl_pid;
} __attribute__((preserve_access_index));

/* ... and from 6.9, its common part in `c` */
struct file_lock_core___new {
	struct file_lock_core___new *flc_blocker;
	unsigned char flc_type;
	int flc_pid;
} __attribute__((preserve_access_index));

struct file_lock___new {
	struct file_lock_core___new c;
} __attribute__((preserve_access_index));

/* Only calls of this process (tgid) when non-zero; set in .rodata before load. */
const volatile __u32 targ_tgid = 0;
/* Events only for calls that took this long or longer (0: every lock and unlock call). */
const volatile __u64 min_wait_us = 0;

/* A lock call in progress, from sys_enter to sys_exit. */
struct inflight {
	__u64 ts;                 /* bpf_ktime_get_ns() at entry */
	__u64 ino;
	__u32 dev;                /* stat(2) encoding */
	__u32 blocker_pid;
	__u8 kind;                /* enum filelock_kind */
	__u8 type;                /* enum filelock_type */
	__u8 blocking;
	__u8 __pad;
	__u32 label;              /* the filter's verdict at entry */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);       /* tid */
	__type(value, struct inflight);
} inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} filelock_events SEC(".maps");

/* Calls not reported: ring buffer full, or no room in `inflight` (the loader shows it as lost). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} filelock_events_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);  /* one key per kind */
	__type(key, struct filelock_hist_key);
	__type(value, struct filelock_hist);
} filelock_hists SEC(".maps");

static struct filelock_hist zero_hist; /* .bss: the value a new kind's histogram starts from */

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&filelock_events_lost, &zero);

	if (n)
		*n += 1; /* per-CPU slot: no atomic needed */
}

/* The kernel's dev_t (major << 20 | minor) in stat(2)'s encoding, new_encode_dev(). */
static __always_inline __u32 stat_dev(dev_t dev)
{
	__u32 major = dev >> MINORBITS, minor = dev & ((1U << MINORBITS) - 1);

	return (minor & 0xff) | (major << 8) | ((minor & ~0xffU) << 12);
}

static __always_inline void set_inode(struct inflight *s, struct inode *inode)
{
	s->ino = BPF_CORE_READ(inode, i_ino);
	s->dev = stat_dev(BPF_CORE_READ(inode, i_sb, s_dev));
}

/* Remember a lock call of the current thread; the inode from its fd (so a call the kernel
 * refuses early, EAGAIN or EDEADLK, still names its file). */
static __always_inline void start(__u64 fd, __u8 kind, __u8 type, bool blocking)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct task_struct *task;
	struct fdtable *fdt;
	struct file **fds;
	struct file *file = NULL;
	struct inflight s = {};

	if (targ_tgid && (id >> 32) != targ_tgid)
		return;
	if (!bpfdepot_monitored(&s.label))
		return;
	task = bpf_get_current_task_btf();
	fdt = BPF_CORE_READ(task, files, fdt);
	fds = BPF_CORE_READ(fdt, fd);
	if (fd < BPF_CORE_READ(fdt, max_fds))
		bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (file)
		set_inode(&s, BPF_CORE_READ(file, f_inode));
	s.kind = kind;
	s.type = type;
	s.blocking = blocking;
	s.ts = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&inflight, &tid, &s, BPF_ANY))
		count_lost();
}

SEC("tp/syscalls/sys_enter_fcntl")
int filelock_enter_fcntl(struct trace_event_raw_sys_enter *ctx)
{
	__u64 cmd = ctx->args[1];
	__s16 l_type = TYPE_UNKNOWN;

	if (cmd != F_SETLK && cmd != F_SETLKW && cmd != F_OFD_SETLK && cmd != F_OFD_SETLKW)
		return 0;
	/* struct flock starts with short l_type; fcntl_setlk will confirm it */
	if (bpf_probe_read_user(&l_type, sizeof(l_type), (void *)ctx->args[2]) ||
	    l_type < F_RDLCK || l_type > F_UNLCK)
		l_type = TYPE_UNKNOWN;
	start(ctx->args[0], cmd >= F_OFD_SETLK ? OFD : POSIX, l_type,
	      cmd == F_SETLKW || cmd == F_OFD_SETLKW);
	return 0;
}

SEC("tp/syscalls/sys_enter_flock")
int filelock_enter_flock(struct trace_event_raw_sys_enter *ctx)
{
	__u32 cmd = ctx->args[1];
	__u8 type;

	switch (cmd & ~LOCK_NB) {
	case FLOCK_SH: type = LOCK_SH; break;
	case FLOCK_EX: type = LOCK_EX; break;
	case FLOCK_UN: type = LOCK_UN; break;
	default: type = TYPE_UNKNOWN; /* EINVAL */
	}
	start(ctx->args[0], FLOCK, type, !(cmd & LOCK_NB) && type != LOCK_UN);
	return 0;
}

/* What the kernel made of the request: inode, type, and whom it waits behind. Fires only
 * inside a call start() saw (locks released at close, lockd's and NFS's are not ours). */
static __always_inline void on_lock(struct inode *inode, void *fl, int ret, bool is_flock)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct inflight *s = bpf_map_lookup_elem(&inflight, &tid);
	__u32 blocker = 0;
	__u8 type;

	if (!s || !inode || !fl) /* tp_btf pointers may be NULL to the verifier: check first */
		return;
	set_inode(s, inode);
	if (bpf_core_field_exists(struct file_lock___new, c)) {
		struct file_lock___new *f = fl;

		type = BPF_CORE_READ(f, c.flc_type);
		if (ret == FILE_LOCK_DEFERRED)
			blocker = BPF_CORE_READ(f, c.flc_blocker, flc_pid);
	} else {
		struct file_lock___old *f = fl;

		type = BPF_CORE_READ(f, fl_type);
		if (ret == FILE_LOCK_DEFERRED)
			blocker = BPF_CORE_READ(f, fl_blocker, fl_pid);
	}
	if (type <= F_UNLCK)
		s->type = is_flock ? type + LOCK_SH : type;
	if (ret == FILE_LOCK_DEFERRED)
		s->blocker_pid = blocker; /* the last wait's: a woken request may queue again */
}

SEC("tp_btf/posix_lock_inode")
int BPF_PROG(filelock_posix, struct inode *inode, struct file_lock *fl, int ret)
{
	on_lock(inode, fl, ret, false);
	return 0;
}

SEC("tp_btf/fcntl_setlk")
int BPF_PROG(filelock_setlk, struct inode *inode, struct file_lock *fl, int ret)
{
	on_lock(inode, fl, ret, false);
	return 0;
}

SEC("tp_btf/flock_lock_inode")
int BPF_PROG(filelock_flock, struct inode *inode, struct file_lock *fl, int ret)
{
	on_lock(inode, fl, ret, true);
	return 0;
}

static __always_inline void add_wait(__u8 kind, __u64 wait_us)
{
	struct filelock_hist_key key = { .kind = kind };
	struct filelock_hist *h;
	__u32 slot = log2_u64(wait_us);

	if (slot >= FILELOCK_SLOTS)
		slot = FILELOCK_SLOTS - 1;
	h = bpf_map_lookup_elem(&filelock_hists, &key);
	if (!h) {
		bpf_map_update_elem(&filelock_hists, &key, &zero_hist, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&filelock_hists, &key);
	}
	if (h) {
		__sync_fetch_and_add(&h->slots[slot], 1);
		__sync_fetch_and_add(&h->sum, wait_us);
	}
}

static __always_inline void finish(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct inflight *s = bpf_map_lookup_elem(&inflight, &tid);
	struct filelock_event *e;
	__u64 wait_ns;

	if (!s)
		return;
	wait_ns = bpf_ktime_get_ns() - s->ts;
	if (s->blocking && ret == 0 && s->type != F_UNLCK && s->type != LOCK_UN)
		add_wait(s->kind, wait_ns / 1000);
	if (wait_ns < min_wait_us * 1000)
		goto out;
	e = bpf_ringbuf_reserve(&filelock_events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		goto out;
	}
	e->ino = s->ino;
	e->wait_ns = wait_ns;
	e->pid = id >> 32;
	e->tid = tid;
	e->dev = s->dev;
	e->blocker_pid = s->blocker_pid;
	e->ret = ret;
	e->kind = s->kind;
	e->type = s->type;
	e->blocking = s->blocking;
	__builtin_memset(e->__pad, 0, sizeof(e->__pad));
	e->label = s->label;
	e->__pad2 = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	/* Wake the reader only once a quarter of the ring is waiting: a lock/unlock loop makes
	 * hundreds of thousands of calls a second, and a wakeup per event costs the traced
	 * process more than the event. The loader reads every ring at least every 100 ms
	 * anyway, so a quiet stream is late by that much at most. */
	bpf_ringbuf_submit(e, bpf_ringbuf_query(&filelock_events, BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES ?
			   BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
out:
	bpf_map_delete_elem(&inflight, &tid);
}

SEC("tp/syscalls/sys_exit_fcntl")
int filelock_exit_fcntl(struct trace_event_raw_sys_exit *ctx)
{
	finish(ctx->ret);
	return 0;
}

SEC("tp/syscalls/sys_exit_flock")
int filelock_exit_flock(struct trace_event_raw_sys_exit *ctx)
{
	finish(ctx->ret);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
