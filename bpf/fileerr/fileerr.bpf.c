// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* fileerr: every failing file syscall, counted per {syscall, errno, comm} in a hash map the
 * loader reads every interval; with emit_events, also one event per failure with the fd and
 * the path the caller gave.
 *
 * Traced calls (syscall tracepoints, on every target kernel): open (x86), openat, openat2,
 * read, write, pread64, pwrite64, readv, writev, close, fsync, fdatasync, ftruncate,
 * fallocate, unlink (x86), unlinkat, rename (x86), renameat (x86), renameat2, mkdir (x86),
 * mkdirat, newfstatat, statx. Counting needs only the exit (ret < 0). For events the entry
 * keeps the fd and the user pointers of the paths per thread; the exit reads the strings,
 * when the kernel has just copied them itself (getname()), so their pages are resident.
 *
 * Under the process filter (bpfdepot run --unit/--cgroup/--pid) only the caller's failures
 * are counted, keyed with the label of what matched; with events the entry decides and the
 * exit uses that verdict, so a task moved between cgroups mid-call is judged once.
 */
#define BPFDEPOT_FILTER /* honours bpfdepot run --unit/--cgroup/--pid: the caller's */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "bpfdepot.h"
#include "fileerr.h"

#define AT_FDCWD -100 /* a macro in the kernel, so vmlinux.h lacks it */

const volatile __u32 targ_pid = 0;        /* only this process (tgid); 0: every process */
const volatile bool emit_events = false;  /* true: an event per failure, with the path */

/* Syscall tracepoint records, as their tracefs format files lay them out (the same on every
 * target). Not in vmlinux.h: syscall events are not BTF-described. Each argument takes 8
 * bytes whatever its C type. */
struct fileerr_sys_enter {
	__u64 common;           /* common_type, flags, preempt_count, pid */
	__s32 syscall_nr;
	__u32 __pad;
	__u64 args[4];          /* the most any traced call's entry reads (renameat2: 4th) */
};

struct fileerr_sys_exit {
	__u64 common;
	__s32 syscall_nr;
	__u32 __pad;
	__s64 ret;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct fileerr_key);
	__type(value, struct fileerr_value);
} fileerr_counts SEC(".maps");

/* Failures not counted because fileerr_counts was full (or, with events, not stashed because
 * `args` was): the loader shows them as the counter channel's lost. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} fileerr_counts_lost SEC(".maps");

/* What the entry leaves for the exit of the same thread (emit_events only). */
struct args {
	const char *path;       /* user pointers, read at exit */
	const char *path2;
	__s32 fd;
	__u32 label;            /* the filter's verdict at entry */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);     /* tid: a thread is in one syscall at a time */
	__type(value, struct args);
} args SEC(".maps");

BPFDEPOT_CHANNEL(fileerr_events, struct fileerr_event, 1024 * 1024); /* ~1870 events */

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&fileerr_counts_lost, &zero);

	if (lost)
		*lost += 1; /* per-CPU slot: no atomic needed */
}

static __always_inline bool traced(__u64 id)
{
	return !targ_pid || (id >> 32) == targ_pid;
}

static __always_inline int stash(__s64 fd, __u64 path, __u64 path2)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct args a = { .path = (const char *)path, .path2 = (const char *)path2, .fd = fd };

	if (!emit_events || !traced(id))
		return 0;
	if (!bpfdepot_monitored(&a.label))
		return 0; /* no stash: the exit then ignores the call */
	if (bpf_map_update_elem(&args, &tid, &a, BPF_ANY))
		count_lost();
	return 0;
}

static __always_inline void emit(const struct fileerr_key *key, __u64 id, const struct args *a)
{
	struct fileerr_event *e;

	e = bpfdepot_reserve(fileerr_events);
	if (!e)
		return;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->error = key->error;
	e->fd = a->fd;
	e->label = key->label;
	e->__pad = 0;
	__builtin_memcpy(e->comm, key->comm, sizeof(e->comm));
	__builtin_memcpy(e->syscall, key->syscall, sizeof(e->syscall));
	/* ring memory is not zeroed; the helper fills only up to the NUL (or zeroes on failure) */
	e->path[0] = 0;
	e->path2[0] = 0;
	if (a->path)
		bpf_probe_read_user_str(e->path, sizeof(e->path), a->path);
	if (a->path2)
		bpf_probe_read_user_str(e->path2, sizeof(e->path2), a->path2);
	bpfdepot_submit(fileerr_events, e);
}

static __always_inline int on_exit(struct fileerr_sys_exit *ctx, struct fileerr_key *key)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct fileerr_value one = { .count = 1 }, *v;
	struct args *a = NULL;
	__s64 ret = ctx->ret;

	if (emit_events) {
		a = bpf_map_lookup_elem(&args, &tid);
		if (!a)
			return 0; /* entered before attach, or another process */
	}
	if (ret >= 0 || !traced(id))
		goto out;
	if (a)
		key->label = a->label;
	else if (!bpfdepot_monitored(&key->label))
		goto out;
	key->error = (__s32)ret;
	bpf_get_current_comm(key->comm, sizeof(key->comm));
	v = bpf_map_lookup_elem(&fileerr_counts, key);
	if (v)
		__sync_fetch_and_add(&v->count, 1);
	/* first failure of this key: insert; another CPU may have inserted it meanwhile */
	else if (bpf_map_update_elem(&fileerr_counts, key, &one, BPF_NOEXIST)) {
		v = bpf_map_lookup_elem(&fileerr_counts, key);
		if (v)
			__sync_fetch_and_add(&v->count, 1);
		else
			count_lost();
	}
	if (a)
		emit(key, id, a);
out:
	if (a)
		bpf_map_delete_elem(&args, &tid);
	return 0;
}

/* One exit program per call; the name is a string literal copied into the key as constant
 * bytes. Program names stay under 16 bytes, the kernel's limit: fe_e_ entry, fe_x_ exit. */
#define EXIT(name)                                                                      \
	SEC("tp/syscalls/sys_exit_" #name)                                              \
	int fe_x_##name(struct fileerr_sys_exit *ctx)                                  \
	{                                                                               \
		struct fileerr_key key = {};                                            \
		__builtin_memcpy(key.syscall, #name, sizeof(#name));                   \
		return on_exit(ctx, &key);                                              \
	}

/* A call whose first argument is the fd. */
#define FD_CALL(name)                                                                   \
	SEC("tp/syscalls/sys_enter_" #name)                                             \
	int fe_e_##name(struct fileerr_sys_enter *ctx)                                 \
	{                                                                               \
		return stash((__s32)ctx->args[0], 0, 0);                                \
	}                                                                               \
	EXIT(name)

/* A call taking (dirfd, path, ...). */
#define AT_CALL(name)                                                                   \
	SEC("tp/syscalls/sys_enter_" #name)                                             \
	int fe_e_##name(struct fileerr_sys_enter *ctx)                                 \
	{                                                                               \
		return stash((__s32)ctx->args[0], ctx->args[1], 0);                     \
	}                                                                               \
	EXIT(name)

/* A call taking (path, ...), relative to the working directory. */
#define PATH_CALL(name)                                                                 \
	SEC("tp/syscalls/sys_enter_" #name)                                             \
	int fe_e_##name(struct fileerr_sys_enter *ctx)                                 \
	{                                                                               \
		return stash(AT_FDCWD, ctx->args[0], 0);                                \
	}                                                                               \
	EXIT(name)

FD_CALL(read)
FD_CALL(write)
FD_CALL(pread64)
FD_CALL(pwrite64)
FD_CALL(readv)
FD_CALL(writev)
FD_CALL(close)
FD_CALL(fsync)
FD_CALL(fdatasync)
FD_CALL(ftruncate)
FD_CALL(fallocate)
AT_CALL(openat)
AT_CALL(openat2)
AT_CALL(unlinkat)
AT_CALL(mkdirat)
AT_CALL(newfstatat)
AT_CALL(statx)

/* renameat2(olddfd, oldname, newdfd, newname, flags) */
SEC("tp/syscalls/sys_enter_renameat2")
int fe_e_renameat2(struct fileerr_sys_enter *ctx)
{
	return stash((__s32)ctx->args[0], ctx->args[1], ctx->args[3]);
}
EXIT(renameat2)

#if defined(__TARGET_ARCH_x86) /* arm64 and riscv have only the *at forms */
PATH_CALL(open)
PATH_CALL(unlink)
PATH_CALL(mkdir)

/* rename(oldname, newname) */
SEC("tp/syscalls/sys_enter_rename")
int fe_e_rename(struct fileerr_sys_enter *ctx)
{
	return stash(AT_FDCWD, ctx->args[0], ctx->args[1]);
}
EXIT(rename)

/* renameat(olddfd, oldname, newdfd, newname) */
SEC("tp/syscalls/sys_enter_renameat")
int fe_e_renameat(struct fileerr_sys_enter *ctx)
{
	return stash((__s32)ctx->args[0], ctx->args[1], ctx->args[3]);
}
EXIT(renameat)
#endif /* __TARGET_ARCH_x86 */

char LICENSE[] SEC("license") = "Dual BSD/GPL";
