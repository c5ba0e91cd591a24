// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* task_iter: one text line per thread, "tgid tid comm", from the task iterator; attached with
 * {iter: {pid: N}} it walks the threads of one process only (6.1+). Plain text on purpose: the
 * test reads it as text, and as `format: json` to see every line counted as short. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("iter/task")
int dump_task(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;

	if (!task)
		return 0;
	BPF_SEQ_PRINTF(seq, "%d %d %s\n", task->tgid, task->pid, task->comm);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
