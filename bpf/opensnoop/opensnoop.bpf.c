// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* opensnoop: who opens which file, with which flags, and the result (fd or -errno).
 *
 * One source, three forms; the builder picks exactly one per target kernel by its defines:
 *   BPFDEPOT_HAVE_FENTRY   fexit/do_sys_openat2: arguments and result in one program;
 *   BPFDEPOT_HAVE_KPROBE   kprobe + kretprobe on do_sys_openat2, paired through a hash map;
 *   neither (the default)  syscall tracepoints, which every target kernel has (6.18: no
 *                          kprobes, fentry EPERM): enter stashes the arguments, exit emits.
 * do_sys_openat2(int dfd, const char __user *filename, struct open_how *how) has had this
 * signature since 5.6 (commit fddb5d430ad9, "open: introduce openat2(2) syscall"); it serves
 * open, openat, openat2 and creat. The tracepoint form traces openat, openat2 and, on x86,
 * open; glibc and Go implement open() and creat() with openat, so only raw syscalls differ.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#define BPFDEPOT_FILTER /* honours bpfdepot run --unit/--cgroup/--pid */
#include "bpfdepot.h"
#include "opensnoop.h"

const volatile __u32 targ_tgid = 0; /* trace only this process; 0: every process */

BPFDEPOT_CHANNEL(opensnoop_events, struct opensnoop_event, 256 * 1024);

/* This process is traced: the knob and the run's filter agree; `label` gets the filter's. */
static __always_inline bool traced(__u64 pid_tgid, __u32 *label)
{
	if (targ_tgid && (__u32)(pid_tgid >> 32) != targ_tgid)
		return false;
	return bpfdepot_monitored(label);
}

/* One event, sent when the open returns, in the context of the task that called it. */
static __always_inline void emit(const char *filename, __s32 flags, __u32 mode, long ret,
				 __u32 label)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct opensnoop_event *e;

	e = bpfdepot_reserve(opensnoop_events);
	if (!e)
		return;

	e->ts_ns = bpf_ktime_get_ns();
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->ret = (__s32)ret; /* fd or -errno: fits in an int even where the function returns long */
	e->flags = flags;
	e->mode = mode;
	e->label = label; /* decided at entry: the task may have moved since */
	e->__pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	/* Read on return: the kernel has just copied the name (getname()), so its page is resident
	 * and this cannot fault. On failure the helper zeroes the buffer; after the NUL it does
	 * not, and the decoder stops at the first NUL. */
	bpf_probe_read_user_str(e->filename, sizeof(e->filename), filename);
	bpfdepot_submit(opensnoop_events, e);
}

#if defined(BPFDEPOT_HAVE_FENTRY)

SEC("fexit/do_sys_openat2")
int BPF_PROG(openat2_fexit, int dfd, const char *filename, struct open_how *how, long ret)
{
	__u32 label;

	if (traced(bpf_get_current_pid_tgid(), &label))
		emit(filename, (__s32)how->flags, (__u32)how->mode, ret, label);
	return 0;
}

#else /* kprobe and tracepoint forms: the entry stashes the arguments for the return */

struct args {
	const char *filename;     /* user pointer, read when the call returns */
	__s32 flags;
	__u32 mode;
	__u32 label;              /* the filter's, at entry */
	__u32 __pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);       /* pid_tgid: a thread is in at most one open at a time */
	__type(value, struct args);
} start SEC(".maps");

static __always_inline void stash(const char *filename, __s32 flags, __u32 mode)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct args a = { .filename = filename, .flags = flags, .mode = mode };

	if (traced(pid_tgid, &a.label))
		bpf_map_update_elem(&start, &pid_tgid, &a, BPF_ANY);
}

/* A return without a stash (the call began before attach, or another pid) is skipped. */
static __always_inline void finish(long ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct args *a = bpf_map_lookup_elem(&start, &pid_tgid);

	if (!a)
		return;
	emit(a->filename, a->flags, a->mode, ret, a->label);
	bpf_map_delete_elem(&start, &pid_tgid);
}

#if defined(BPFDEPOT_HAVE_KPROBE)

SEC("kprobe/do_sys_openat2")
int BPF_KPROBE(openat2_entry, int dfd, const char *filename, struct open_how *how)
{
	stash(filename, (__s32)BPF_CORE_READ(how, flags), (__u32)BPF_CORE_READ(how, mode));
	return 0;
}

SEC("kretprobe/do_sys_openat2")
int BPF_KRETPROBE(openat2_return, long ret)
{
	finish(ret);
	return 0;
}

#else /* tracepoint form; program names stay under 16 bytes, the kernel's limit */

/* openat(int dfd, const char *filename, int flags, umode_t mode) */
SEC("tp/syscalls/sys_enter_openat")
int enter_openat(struct trace_event_raw_sys_enter *ctx)
{
	stash((const char *)ctx->args[1], (__s32)ctx->args[2], (__u32)ctx->args[3]);
	return 0;
}

SEC("tp/syscalls/sys_exit_openat")
int exit_openat(struct trace_event_raw_sys_exit *ctx)
{
	finish(ctx->ret);
	return 0;
}

/* openat2(int dfd, const char *filename, struct open_how *how, size_t usize): how is in user
 * memory; the helper zeroes it when the read fails, and the kernel then fails with EFAULT. */
SEC("tp/syscalls/sys_enter_openat2")
int enter_openat2(struct trace_event_raw_sys_enter *ctx)
{
	struct open_how how = {};

	bpf_probe_read_user(&how, sizeof(how), (const void *)ctx->args[2]);
	stash((const char *)ctx->args[1], (__s32)how.flags, (__u32)how.mode);
	return 0;
}

SEC("tp/syscalls/sys_exit_openat2")
int exit_openat2(struct trace_event_raw_sys_exit *ctx)
{
	finish(ctx->ret);
	return 0;
}

#if defined(__TARGET_ARCH_x86) /* arm64 and riscv have no open(2), only openat */

/* open(const char *filename, int flags, umode_t mode) */
SEC("tp/syscalls/sys_enter_open")
int enter_open(struct trace_event_raw_sys_enter *ctx)
{
	stash((const char *)ctx->args[0], (__s32)ctx->args[1], (__u32)ctx->args[2]);
	return 0;
}

SEC("tp/syscalls/sys_exit_open")
int exit_open(struct trace_event_raw_sys_exit *ctx)
{
	finish(ctx->ret);
	return 0;
}

#endif /* __TARGET_ARCH_x86 */
#endif /* BPFDEPOT_HAVE_KPROBE */
#endif /* BPFDEPOT_HAVE_FENTRY */

char LICENSE[] SEC("license") = "Dual BSD/GPL";
