// SPDX-License-Identifier: GPL-2.0
/* An open-coded numeric iterator: the bpf_iter_num_* kfuncs arrived in 6.4. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

extern int bpf_iter_num_new(struct bpf_iter_num *it, int start, int end) __ksym;
extern int *bpf_iter_num_next(struct bpf_iter_num *it) __ksym;
extern void bpf_iter_num_destroy(struct bpf_iter_num *it) __ksym;

int total;

SEC("tp/sched/sched_process_exec")
int sum_to_ten(void *ctx)
{
	struct bpf_iter_num it;
	int *v, sum = 0;

	bpf_iter_num_new(&it, 0, 10);
	while ((v = bpf_iter_num_next(&it)))
		sum += *v;
	bpf_iter_num_destroy(&it);
	total = sum;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
