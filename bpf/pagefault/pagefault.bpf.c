// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* pagefault: every user-mode page fault (x86 only: exceptions/page_fault_user), with its
 * address, instruction pointer and error code. Tracepoint only; no kprobe needed. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "bpfdepot.h"
#include "pagefault.h"

/* The tracepoint's record, as its tracefs format lays it out: the common header, then
 * address, ip, error_code. Declared here, not taken from vmlinux.h, because
 * struct trace_event_raw_x86_exceptions is missing from the BTF of the 6.18 targets (the
 * tracepoint itself is there, format unchanged). No CO-RE on it: a tp program reads its
 * record at the offsets of the format file, and struct trace_entry comes from the target's
 * own vmlinux.h, so each per-kernel build gets that kernel's header size. */
struct pagefault_tp_args {
	struct trace_entry ent;
	unsigned long address;
	unsigned long ip;
	unsigned long error_code;
};

/* Only faults of this process (tgid) when non-zero; set in .rodata before load. */
const volatile __u32 targ_tgid = 0;

BPFDEPOT_CHANNEL(pagefault_events, struct pagefault_event, 1024 * 1024);

SEC("tp/exceptions/page_fault_user")
int pagefault(struct pagefault_tp_args *ctx)
{
	__u64 id = bpf_get_current_pid_tgid(); /* the faulting task is current */
	struct pagefault_event *e;

	if (targ_tgid && (id >> 32) != targ_tgid)
		return 0;

	e = bpfdepot_reserve(pagefault_events);
	if (!e)
		return 0;

	e->address = ctx->address;
	e->ip = ctx->ip;
	e->error_code = ctx->error_code;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	bpf_get_current_comm(&e->comm, sizeof(e->comm)); /* fills all 16 bytes */
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
