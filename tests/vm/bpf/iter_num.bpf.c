// SPDX-License-Identifier: GPL-2.0
/* Sums 0..9 with the open-coded numeric iterator, kfuncs added in 6.4 (commit 6018e1f407cc). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

extern int bpf_iter_num_new(struct bpf_iter_num *it, int start, int end) __ksym;
extern int *bpf_iter_num_next(struct bpf_iter_num *it) __ksym;
extern void bpf_iter_num_destroy(struct bpf_iter_num *it) __ksym;

u64 total = 0;

SEC("tracepoint/syscalls/sys_enter_getppid")
int sum_getppid(struct trace_event_raw_sys_enter *ctx)
{
	struct bpf_iter_num it;
	int *v;

	bpf_iter_num_new(&it, 0, 10);
	while ((v = bpf_iter_num_next(&it)))
		total += *v;
	bpf_iter_num_destroy(&it);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
