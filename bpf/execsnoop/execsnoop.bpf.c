// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* execsnoop: every execve with its pid, parent, uid, comm and argv, sent through a perf
 * buffer with only the argv bytes used (variable length), the way libbpf-tools' execsnoop is
 * written: plain SEC() programs and maps, a const volatile knob; from bpfdepot.h only the
 * process filter (bpfdepot_monitored: `bpfdepot run --unit/--cgroup/--pid`). The event struct
 * is only ever reached through a pointer, so the manifest names it (`event:`).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#define BPFDEPOT_FILTER
#include "bpfdepot.h"
#include "execsnoop.h"

const volatile __s32 targ_ppid = 0; /* only children of this process; 0: every process */

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} events SEC(".maps");

/* Room to build one event: at 7.7 KiB it does not fit the 512-byte BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct event));
} heap SEC(".maps");

/* The record of syscalls/sys_enter_execve (its format file): declared here because syscall
 * tracepoints have no BTF of their own. */
struct execve_args {
	__u64 common;        /* common_type, _flags, _preempt_count, _pid */
	__s32 syscall_nr;
	__u32 pad;
	const char *filename;
	const char *const *argv;
	const char *const *envp;
};

SEC("tracepoint/syscalls/sys_enter_execve")
int tracepoint__syscalls__sys_enter_execve(struct execve_args *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 id = bpf_get_current_pid_tgid();
	const char *argp;
	struct event *e;
	__u32 zero = 0, args_size;
	__u64 size;
	__s32 ppid;
	__u32 label;
	int i, ret;

	ppid = BPF_CORE_READ(task, real_parent, tgid);
	if (targ_ppid && ppid != targ_ppid)
		return 0;
	if (!bpfdepot_monitored(&label))
		return 0;
	e = bpf_map_lookup_elem(&heap, &zero);
	if (!e)
		return 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = id >> 32;
	e->ppid = ppid;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->args_count = 0;
	e->args_size = 0;
	e->label = label;
	bpf_get_current_comm(e->comm, sizeof(e->comm));

	for (i = 0; i < TOTAL_MAX_ARGS; i++) {
		if (bpf_probe_read_user(&argp, sizeof(argp), &ctx->argv[i]) || !argp)
			break;
		if (e->args_size > LAST_ARG)
			break;
		ret = bpf_probe_read_user_str(&e->args[e->args_size], ARGSIZE, argp);
		if (ret < 0)
			break;
		e->args_count++;
		e->args_size += ret;
	}

	/* perf ends every sample on 8 bytes (its u32 size included) and does not write the bytes
	 * it pads with: send those bytes ourselves, zeroed, so no stale ones follow the argv. */
	args_size = e->args_size;
	for (i = 0; i < 7; i++) {
		__u32 at = args_size + i;

		if (at < FULL_MAX_ARGS_ARR)
			e->args[at] = 0;
	}
	size = ((EVENT_FIXED_SIZE + args_size + 4 + 7) & ~7ul) - 4;
	if (size <= sizeof(*e))
		bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, e, size);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
